"""Weight kernels (codegen/fused_weights.py, codegen/weight_grad.py): where few tokens meet each
weight, a weight's input gradient dX = dY·Wᵀ, its gradient dW = Xᵀ·dY and the optimizer update
fused into dW's epilogue run as one kernel that reads W once. Each such kernel equals numpy of
its IR nodes on the Triton interpreter and in Pallas interpret mode (whole blocks and a tiled
grid), the step equals Graph.evaluate, the backward reads each weight once (the plan's reads),
Pallas lowers for TPU and Triton compiles for sm_90; with more tokens than one tile the plan is
unchanged."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, partition
from shardc.codegen import pallas
from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
from shardc.models import optim
from shardc.testing import rel_err
from test_codegen_pallas import export_all, run_and_check
from test_codegen_zoo import run_and_check_kernels


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def _step(tokens=20, experts=0, optimizer="sgd", bf16=False, d=136, h=144, gated=False, bias=False):
    """One training step of x → tanh(x·W0) → tanh(·W1) → ·W2 against t (x not trained): W1 and W2
    have an input gradient, W0 none. Widths over one 128 tile (no chained or rebuilt dot takes
    the backward), none a multiple of a block. experts > 0: batched weights [E, ...], one per
    expert (an MoE's expert MLP), tokens per expert. W2 is stored [out, in] (torch's layout:
    the forward reads W2ᵀ). gated: the middle layer is tanh(·W1) * (·W1b), SwiGLU's shape: its
    input gradient sums two dots (summed siblings) and its weight gradients are siblings too.
    bias: the middle and last layers add biases (their gradients: dY summed over the tokens)."""
    import jax
    import jax.numpy as jnp
    dt = jnp.bfloat16 if bf16 else jnp.float32
    rng = np.random.default_rng(11)
    lead = (experts,) if experts else ()
    x, t = (jnp.asarray(rng.standard_normal(lead + (tokens, d)), dt) for _ in range(2))
    params = {"w0": jnp.asarray(rng.standard_normal(lead + (d, d)) * 0.1, dt),
              "w1": jnp.asarray(rng.standard_normal(lead + (d, h)) * 0.1, dt),
              "w2": jnp.asarray(rng.standard_normal(lead + (d, h)) * 0.1, dt)}
    if bias:
        params["b1"] = jnp.asarray(rng.standard_normal(lead + (1, h)) * 0.1, dt)
        params["b2"] = jnp.asarray(rng.standard_normal(lead + (1, d)) * 0.1, dt)
    if gated:
        params["w1b"] = jnp.asarray(rng.standard_normal(lead + (d, h)) * 0.1, dt)
    mm = (lambda a, b: jnp.einsum("etd,edh->eth", a, b)) if experts else (lambda a, b: a @ b)
    tr = (lambda w: jnp.swapaxes(w, 1, 2)) if experts else (lambda w: w.T)

    def loss(p):
        x0 = jnp.tanh(mm(x, p["w0"]))
        x1 = jnp.tanh(mm(x0, p["w1"]) + (p["b1"] if bias else 0.0)) * (mm(x0, p["w1b"]) if gated else 1.0)
        y = mm(x1, tr(p["w2"])) + (p["b2"] if bias else 0.0)
        return ((y - t) ** 2).sum()
    state = optim.init_state(optimizer, params, jnp.zeros_like, jnp.zeros((), jnp.float32))
    if state:  # moments that are not zero: every term of the update matters
        state["m"] = {k: jnp.asarray(rng.standard_normal(v.shape) * 0.1, jnp.float32) for k, v in params.items()}
        state["v"] = {k: jnp.asarray(rng.random(v.shape) * 0.1, jnp.float32) for k, v in params.items()}

    def step(params, state):
        grads = jax.grad(loss)(params)
        return optim.update(optimizer, params, grads, state, 0.1, jnp.sqrt, tree_map=jax.tree_util.tree_map)
    return shardc.from_jax(step, params, state), (params, state)


def _readers(exe, w) -> list:
    return [k for k in exe.kernels if w in k.inputs]


def _check_step(target, tol, **kw):
    g, args = _step(**kw)
    prog = partition(g, Mesh(dp=1))
    check = run_and_check_kernels if target == "triton" else run_and_check
    exe, got = check(prog, args, tol)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(np.asarray(a, np.float32), np.asarray(b, np.float32)) <= tol
    return g, prog, exe


def _weights(g):
    """The parameters W1 and W2 (inputs 'params[...]'), by name."""
    return {n.split("'")[1]: x for n, x in zip(g.input_names, g.inputs) if n.startswith("params[")}


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_weight_kernels_equal_numpy_and_read_each_weight_once(target):
    """Biases too: their gradients Σ_t dY summed from the dY tiles the weight kernel loads, their
    updates stored by it (no kernel of their own reads dY again)."""
    g, prog, exe = _check_step(target, 1e-5, bias=True)
    kernels = [k for k in exe.kernels if k.kind == "weight_grad"]
    assert len(kernels) == 2 and all(len(k.group.pattern["bias"]) == 1 for k in kernels), exe.plan_text()
    w = _weights(prog.local)
    for name in ("w1", "w2"):  # read by the forward's matmul and by its weight kernel: nothing else
        readers = _readers(exe, w[name])
        assert len(readers) == 2 and any(k.kind == "weight_grad" for k in readers), (name, exe.plan_text())
    for name in ("b1", "b2"):  # read by the forward and updated in the weight kernel
        assert [k.kind for k in _readers(exe, w[name])][-1] == "weight_grad", exe.plan_text()
    assert len(_readers(exe, w["w0"])) == 2  # no input gradient: the plain dW matmul with its update
    if target == "pallas":
        export_all(kernels)
        return
    for k in kernels:  # one load of the weight per step of the loop over its columns
        arg = f"in{k.inputs.index(next(x for x in k.inputs if x in w.values()))}"
        assert k.source.count(f"tl.load({arg} ") == 1, k.source


def test_weight_kernels_bf16_and_experts_equal_numpy():
    """bf16 weights (the dots' results rounded as the oracle rounds them); MoE experts' batched
    weights (one grid row of programs per expert)."""
    _, _, exe = _check_step("triton", 1e-2, bf16=True, tokens=24)
    assert sum(k.kind == "weight_grad" for k in exe.kernels) == 2
    _, _, exe = _check_step("triton", 1e-5, experts=2, tokens=20)
    assert sum(k.kind == "weight_grad" for k in exe.kernels) == 2, exe.plan_text()


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_one_weight_kernel_passes_over_summed_projections(target):
    """x1 = tanh(x0·W1) * (x0·W1b): dx0 = dh·W1ᵀ + dhb·W1bᵀ (one sum: summed siblings) and the
    two weight gradients (siblings reading x0): one kernel passes over W1 and then W1b, both
    feeding one dx0, each weight read once in the backward."""
    g, prog, exe = _check_step(target, 1e-5, gated=True)
    w = _weights(prog.local)
    both = [k for k in exe.kernels if k.kind == "weight_grad" and w["w1"] in k.inputs and w["w1b"] in k.inputs]
    assert len(both) == 1 and len(both[0].group.pattern["weight"]) == 2, exe.plan_text()
    assert all(len(_readers(exe, w[n])) == 2 for n in ("w1", "w1b", "w2")), exe.plan_text()
    if target == "pallas":
        export_all(both)


def test_pallas_weight_kernel_on_a_tiled_grid_equals_numpy_and_lowers():
    """A small VMEM budget: W's kept rows over a parallel grid axis and its columns over the
    arbitrary one (dX accumulated across them in VMEM, every W block updated on its step)."""
    with pallas.vmem_budget(96 << 10):
        g, prog, exe = _check_step("pallas", 1e-5, d=256, h=384)
        kernels = [k for k in exe.kernels if k.kind == "weight_grad"]
        grids = [eval(next(l for l in k.source.splitlines() if l.startswith("GRID = "))[7:]) for k in kernels]
        assert len(kernels) == 2 and all(len(gr) == 2 and min(gr) > 1 for gr in grids), grids  # F, C
        export_all(kernels)


def test_plan_unchanged_with_more_tokens_than_a_tile():
    from shardc.codegen.fused_weights import MAX_TOKENS
    g, _ = _step(tokens=MAX_TOKENS + 8)
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    assert not any(k.kind == "weight_grad" for k in exe.kernels)
    w = _weights(exe.prog.local)
    assert all(len(_readers(exe, w[n])) == 3 for n in ("w1", "w2"))  # forward, dX, dW + update


@pytest.mark.slow
def test_weight_kernels_compile_for_hopper():
    """f32 and bf16, dense (with biases) and experts, two weights in one kernel, and 320 tokens
    (an expert's capacity at MoE small, batch 1: a 512-token tile within the shared memory a
    block may have, no spills)."""
    kernels = []
    for kw in (dict(bias=True), dict(bf16=True, bias=True), dict(experts=2), dict(gated=True, bf16=True),
               dict(tokens=320, experts=2), dict(tokens=320, experts=2, bf16=True)):
        g, _ = _step(**kw)
        kernels += [k for k in shardc.compile(partition(g, Mesh(dp=1))).kernels if k.kind == "weight_grad"]
    kernels = list({k.key: k for k in kernels}.values())
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])
        assert not r.get("spill_bytes"), (k.name, r)
