"""Codegen on the zoo: every fused kernel, run on the Triton interpreter, equals the numpy
evaluation of the IR nodes it covers (f32 1e-5, bf16 1e-2 relative to max), for forward and
training steps, f32 and bf16, under several shardings; whole programs equal Graph.evaluate; and
GPT-2's fusion budget: ≤ 8 kernels per layer, flash attention, scores never in memory."""
import functools
import os

import numpy as np
import pytest

import shardc
import zoo_cases
from shardc import Mesh, models, partition
from shardc.codegen.stats import summary
from shardc.testing import rel_err

BATCH = 2
# name: (mesh axes, Megatron TP specs?, plan), rows of tests/zoo_cases.py's table
LAYOUTS = {name: (axes, tp, plan) for name, (axes, tp, _, plan)
           in zoo_cases.layouts(single="dp1", dp="dp2", tp="tp2", fsdp="fsdp2", **{"2d": "2x2"}).items()}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


@functools.lru_cache(maxsize=None)
def captured(name: str, train: bool, bf16: bool):
    import jax.numpy as jnp
    dt = jnp.bfloat16 if bf16 else None
    m = models.get(name + ":tiny")
    params = m.jax_params(0, dtype=dt)
    if train:
        fn, build = m.jax_train_step("sgd", lr=0.1)
        args = build(params, BATCH, 1, dtype=dt)
    else:
        fn, args = m.jax_forward, (params, *m.jax_inputs(BATCH, 1, dtype=dt))
    g = shardc.from_jax(fn, *args)
    return m, g, args, g.evaluate(*args)


def run_and_check_kernels(prog, args, tol):
    """Run every device's plan; check each launch against the numpy evaluation of its nodes."""
    bad, launches = [], [0]

    def check(k, d, ins, outs):
        launches[0] += 1
        ref = k.reference(dict(zip(k.inputs, ins)), prog.mesh.coords(d))
        for o, r, n in zip(outs, ref, k.outputs):
            err = rel_err(o, r)
            if not err <= tol:
                bad.append(f"{k.name} [{k.kind}] device {d} {n.describe()}: {err:.3g}")

    exe = shardc.compile(prog)
    got = exe.run_interpreted(*args, on_kernel=check)
    assert not bad, "\n".join(bad[:10])
    assert launches[0] == len(exe.kernels) * prog.mesh.size
    return exe, got


FAST = {("mlp", True, False, "dp"), ("gpt2", False, False, "tp"), ("gpt2", True, True, "dp"),
        ("llama", False, True, "tp"), ("llama", True, False, "tp"), ("moe", False, False, "dp"),
        ("moe", True, True, "dp")}


@pytest.mark.parametrize("name,train,bf16,layout", zoo_cases.kernel_cases(FAST))
def test_every_kernel_equals_numpy_of_its_nodes(name, train, bf16, layout):
    m, g, args, want = captured(name, train, bf16)
    axes, tp, plan = LAYOUTS[layout]
    prog = partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan)
    _, got = run_and_check_kernels(prog, args, 1e-2 if bf16 else 1e-5)
    for i, (a, b) in enumerate(zip(got, want)):
        err = rel_err(a, b)
        assert err <= (3e-2 if bf16 else 1e-5), f"{g.output_names[i]}: {err:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fsdp", "2d"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_more_shardings(name, layout):
    m, g, args, want = captured(name, True, False)
    axes, tp, plan = LAYOUTS[layout]
    prog = partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan)
    _, got = run_and_check_kernels(prog, args, 1e-5)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-5


def _gpt2_forward(n_layer: int, layout: str):
    m = models.get("gpt2:tiny", n_layer=n_layer)
    params = m.jax_params(0)
    g = shardc.from_jax(m.jax_forward, params, *m.jax_inputs(4, 1))
    axes, tp, plan = LAYOUTS[layout]
    return m, shardc.compile(partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan))


@pytest.mark.parametrize("layout", ["single", "tp"])
def test_gpt2_layer_is_at_most_8_kernels_and_scores_never_reach_memory(layout):
    m1, one = _gpt2_forward(1, layout)
    m2, two = _gpt2_forward(2, layout)
    assert len(two.kernels) - len(one.kernels) <= 8, two.plan_text()
    for m, exe in ((m1, one), (m2, two)):
        c = m.config
        assert sum(k.kind == "attention" for k in exe.kernels) == c.n_layer
        s = c.seq_len
        for k in exe.kernels:  # no buffer of scores [.., s, s] is read or written by any kernel
            for x in k.inputs + k.outputs:
                assert x.shape[-2:] != (s, s), f"{k.name} moves {x.describe()}"


@pytest.mark.parametrize("layout", ["single", "tp"])
def test_gpt2_layer_bytes_against_matmul_bound_and_unfused(layout):
    """Per device: under Megatron TP the matmul bound shrinks while the residual stream stays
    full size, so the norms must be matmul prologues (normalized rows never stored) and the
    residual sums computed in the next matmul's operand loads."""
    _, one = _gpt2_forward(1, layout)
    _, two = _gpt2_forward(2, layout)
    a, b = summary(one), summary(two)
    layer = {k: b[k] - a[k] for k in a}
    assert layer["bytes"] <= 1.2 * layer["matmul_bound_bytes"], layer
    assert layer["bytes"] < 0.4 * layer["unfused_bytes"], layer
    assert layer["kernels"] <= 8, layer
    for k in two.kernels:  # every layer norm is a matmul's prologue: no norm kernel, nothing normalized stored
        if any(n.op.value == "rsqrt" for n in k.ops):
            assert k.kind == "matmul", f"{k.name}: {k.reason}"
