"""Multi-tensor launches (codegen/fused_multi.py): independent row kernels, the optimizer updates
no matmul epilogue computes first of all, run as one kernel over their programs laid end to end.
The grouped kernel equals numpy of its IR nodes on the Triton interpreter (also with small blocks:
several programs per member, sizes no multiple of them) and in Pallas interpret mode (members
tiled over several grid steps), compiles for sm_90 and lowers for TPU; a training step's
standalone updates (Adam's m, v and parameter in one body each) become one launch and the step
equals Graph.evaluate."""
import numpy as np
import pytest
import torch

import shardc
from shardc import Mesh, models, partition
from shardc.codegen import pallas
from shardc.codegen.aot import compile_for_gpu
from shardc.codegen.executable import torch_dtype
from shardc.models.optim import update
from shardc.testing import rel_err
from test_codegen_pallas import export_all, run_and_check
from test_codegen_zoo import run_and_check_kernels

CHECK = {"triton": run_and_check_kernels, "pallas": run_and_check}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def _updates():
    """Five independent updates of different sizes and dtypes: SGD on f32 [37] and bf16 [5, 23],
    Adam's m, v, p on f32 [24, 384], a row sum [6, 45] and a scalar count."""
    import jax.numpy as jnp
    rng = np.random.default_rng(5)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    args = (f32(37), f32(37), f32(5, 23).astype(jnp.bfloat16), f32(5, 23).astype(jnp.bfloat16),
            f32(24, 384), f32(24, 384), f32(24, 384), jnp.asarray(rng.uniform(0.1, 1, (24, 384)), jnp.float32),
            f32(6, 45), jnp.float32(3))

    def f(p1, g1, p2, g2, p3, g3, m3, v3, x, step):
        m = 0.9 * m3 + 0.1 * g3
        v = 0.999 * v3 + 0.001 * g3 * g3
        return (p1 - 0.1 * g1, p2 - jnp.bfloat16(0.1) * g2, m, v, p3 - 0.1 * m / (jnp.sqrt(v) + 1e-8),
                x.sum(-1), step + 1)
    return shardc.from_jax(f, *args), args


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_grouped_kernel_equals_numpy(target, monkeypatch):
    from shardc.kernels import rows as rows_t
    monkeypatch.setattr(rows_t, "MAX_ROW_TILE", 16)  # Triton: the row sum loops over its 45 columns
    g, args = _updates()
    prog = partition(g, Mesh(dp=1))
    with pallas.vmem_budget(256 << 10):  # Pallas: Adam's [24, 384] member tiled over 3 grid steps
        exe, got = CHECK[target](prog, args, 1e-2)   # (bf16 outputs; f32 ones checked below)
    for a, b, n in zip(got, g.evaluate(*args), g.outputs):
        assert rel_err(a, b) <= (1e-2 if n.dtype.value == "bf16" else 1e-5)
    assert [k.kind for k in exe.kernels] == ["multi"], exe.plan_text()
    (k,) = exe.kernels
    assert len(k.members) == 5
    if target == "pallas":
        assert k.config(True) == {} and pallas._module(k).GRID[0] > 5   # a member over several steps
        export_all(exe.kernels)
        return
    assert "for rn0 in range(0, 45, BN" in k.source   # (a looped member)
    # several programs per member, blocks no multiple of the sizes: every member's pid range
    cfg = dict(k.config(True))
    for i, m in enumerate(k.members):
        cfg[f"BM{i}"] = 4 if m.kind == "pointwise" else 4
        if m.kind == "pointwise":
            cfg[f"BN{i}"] = 256 if m.roots[0].size > 1000 else 16
    rng = np.random.default_rng(9)
    ins = [rng.uniform(0.1, 1, x.shape).astype(x.dtype.np) for x in k.inputs]  # (v > 0)
    outs = [torch.empty(o.shape, dtype=torch_dtype(o.dtype)) for o in k.outputs]
    k.launch([torch.from_numpy(np.asarray(x, np.float32)).to(torch_dtype(n.dtype)) for x, n in zip(ins, k.inputs)]
             + outs, cfg)
    for o, r, n in zip(outs, k.reference(dict(zip(k.inputs, ins)), {}), k.outputs):
        assert rel_err(o.float().numpy(), np.asarray(r, np.float32)) <= (1e-2 if n.dtype.value == "bf16" else 1e-5), n


def test_pallas_row_kernel_too_large_for_whole_rows_runs_alone():
    """A Pallas row kernel whose rows only fit VMEM added up over its grid (an "arbitrary" axis)
    is no member: a member's blocks hold whole rows, all of them resident for the launch."""
    import jax.numpy as jnp
    rng = np.random.default_rng(13)
    args = tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((8, 4096), (37,), (5, 23)))
    g = shardc.from_jax(lambda x, a, b: (x.sum(-1), 2 * a, b - 1), *args)
    with pallas.vmem_budget(64 << 10):
        exe, got = run_and_check(partition(g, Mesh(dp=1)), args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    assert sorted(k.kind for k in exe.kernels) == ["multi", "reduction"], exe.plan_text()


def _train_step(optimizer: str):
    """A small model's training step through the zoo's optimizer code: an embedding (scatter
    gradient), a linear layer (its update in the weight gradient's epilogue, its bias gradient
    summed in the K loop), a layer norm's γ and β (column sums); Adam's state random, as after
    a few steps (at step 1 from zeros the update is lr·sign(g), discontinuous at g = 0)."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(21)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    params = {"emb": f32(37, 24), "w": 0.2 * f32(24, 40), "b": f32(40), "gamma": f32(40), "beta": f32(40)}
    ids, y = jnp.asarray(rng.integers(0, 37, (3, 5)), jnp.int32), f32(3, 5, 40)

    def loss_fn(p, ids, y):
        h = p["emb"][ids] @ p["w"] + p["b"]
        mu = h.mean(-1, keepdims=True)
        n = (h - mu) * jax.lax.rsqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["gamma"] + p["beta"]
        return ((n - y) ** 2).mean()

    def step(params, state, ids, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, y)
        return (loss,) + update(optimizer, params, grads, state, 0.1, jnp.sqrt)
    state = {} if optimizer == "sgd" else {
        "step": jnp.float32(4), "m": {k: 0.1 * f32(*v.shape) for k, v in params.items()},
        "v": {k: jnp.asarray(rng.uniform(0.01, 0.1, v.shape), jnp.float32) for k, v in params.items()}}
    args = (params, state, ids, y)
    return shardc.from_jax(step, *args), args


@pytest.mark.parametrize("target,optimizer", [("triton", "sgd"), ("triton", "adamw"), ("pallas", "adamw")])
def test_training_step_standalone_updates_are_one_launch(target, optimizer, monkeypatch):
    from shardc.codegen import fused_weights
    # (15 tokens: the weight kernel would take w's and b's updates, test_codegen_weights.py)
    monkeypatch.setattr(fused_weights, "MAX_TOKENS", 0)
    g, args = _train_step(optimizer)
    prog = partition(g, Mesh(dp=1))
    exe, got = CHECK[target](prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    writer = {o: k for k in exe.kernels for o in k.outputs}
    updates = [(n, o) for n, o in zip(g.output_names, prog.local.outputs)
               if n.startswith(("out[1]", "out[2]['m']", "out[2]['v']"))]
    assert [k.kind for k in _standalone(exe, [o for _, o in updates])] == ["multi"], exe.plan_text()
    assert writer[dict(updates)["out[1]['w']"]].kind == "matmul"   # (in its weight gradient's epilogue)
    if optimizer != "sgd":  # Adam: each parameter's m, v and update written by one kernel (one body)
        for name in ("emb", "w", "b", "gamma", "beta"):
            ks = {writer[o] for n, o in updates if n.endswith(f"['{name}']")}
            assert len(ks) == 1, (name, [k.name for k in ks])
    if target == "pallas":
        export_all([k for k in exe.kernels if k.kind == "multi"])


def _standalone(exe, updates) -> list:
    """The kernels writing `updates` and nothing else the step reads or returns besides (not
    fused into the kernel computing the gradient: a weight gradient's epilogue, a scatter, the
    Pallas norm backward's one block)."""
    writer = {o: k for k in exe.kernels for o in k.outputs}
    outputs = set(exe.prog.local.outputs)
    return list({writer[o]: None for o in updates
                 if writer[o].kind in ("pointwise", "reduction", "multi") and set(writer[o].outputs) <= outputs})


def test_zoo_adamw_step_updates_one_launch():
    """GPT-2's AdamW step: every parameter update no matmul or scatter computes is in one
    multi-tensor launch (the step count, which they read, is not)."""
    m = models.get("gpt2:tiny", n_layer=1)
    g, _ = m.capture(True, "jax", 4, lr=0.1, optimizer="adamw")  # (bench/fusion.py's batch)
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    params = [o for n, o in zip(g.output_names, exe.prog.local.outputs) if n.startswith("out[1]")]
    outs = params + [o for n, o in zip(g.output_names, exe.prog.local.outputs) if n.startswith("out[2]['m']")]
    (k,) = _standalone(exe, outs)
    assert k.kind == "multi" and len(set(params) & set(k.outputs)) >= 8, exe.plan_text()  # γ, β, biases, wpe


@pytest.mark.slow
def test_grouped_kernels_compile_for_hopper():
    g, args = _updates()
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    g2, _ = _train_step("adamw")
    exe2 = shardc.compile(partition(g2, Mesh(dp=1)))
    ks = [k for e in (exe, exe2) for k in e.kernels if k.kind == "multi"]
    for r in compile_for_gpu(ks):
        assert r["cubin_bytes"] > 0 and r["shared"] <= 227 * 1024, r
