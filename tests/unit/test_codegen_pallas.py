"""The Pallas (TPU) emitter: every kernel, run in Pallas interpret mode on CPU, equals the numpy
evaluation of the IR nodes it covers (f32 1e-5, bf16 1e-2 relative to max) for the zoo's forward
and training steps, f32 and bf16, under several shardings; whole programs equal Graph.evaluate;
and every generated kernel lowers for a real TPU through jax.export (Mosaic lowering, which
rejects blocks whose last two dims are not multiples of (8, 128) or whole). Small graphs cover the
op table, layout ops, gather/scatter, and grids of many blocks (a small VMEM budget forces tiling:
K accumulation in VMEM scratch, online softmax across key blocks)."""

import numpy as np
import pytest

import shardc
import zoo_cases
from shardc import DType, Mesh, Op, partition
from shardc.codegen import pallas
from shardc.ir import GraphBuilder
from shardc.ir.evaluate import eval_node
from shardc.kernels import pallas_templates
from shardc.testing import rel_err
from test_codegen_zoo import LAYOUTS, captured

_EXPORTED: set = set()  # kernel names already lowered for TPU in this session


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def export_all(kernels):
    for k in kernels:
        if k.name in _EXPORTED:
            continue
        try:
            pallas.export_for_tpu(k)
        except Exception as e:  # noqa: BLE001 - name the kernel, keep the lowering's message
            raise AssertionError(f"{k.name} [{k.kind}] does not lower for TPU: {e}\n{k.source}") from e
        _EXPORTED.add(k.name)


def _summand_scale(k, ins) -> float:
    """Largest |summand| of the kernel's sums (reduce_sum, dot_general operands), from the numpy
    evaluation: a sum that cancels to ~0 (a layer-norm gradient's Σ(x - mean)) is judged on
    10% of that scale, i.e. to ~1e-6 (f32) of its terms — a few ulps of the terms, which any
    other summation order than numpy's pairwise one may differ by — not relative to its own
    rounding noise."""
    env = dict(zip(k.inputs, ins))
    scale = 0.0
    for n in k.ops:
        if n not in env:
            if n.op is Op.AXIS_INDEX:
                env[n] = np.int32(0)
                continue
            env[n] = eval_node(n, [env[i] for i in n.inputs])
        if n.op in (Op.REDUCE_SUM, Op.DOT_GENERAL, Op.SCATTER):
            for x in n.inputs:
                v = np.asarray(env[x], dtype=np.float64)
                if v.size and n.dtype.is_float:
                    scale = max(scale, float(np.max(np.abs(v[np.isfinite(v)]), initial=0.0)))
    return scale * 1e-1


def run_and_check(prog, args, tol):
    """Run every device's plan in interpret mode; check each launch against numpy of its nodes."""
    bad, launches, sources = [], [0], []

    def check(k, d, ins, outs):
        launches[0] += 1
        ref = k.reference(dict(zip(k.inputs, ins)), prog.mesh.coords(d))
        floor = None
        for o, r, n in zip(outs, ref, k.outputs):
            assert o.shape == r.shape and o.dtype == r.dtype, (k.name, n.describe(), o.shape, o.dtype)
            err = rel_err(o, r)
            if not err <= tol and n.dtype.is_float:
                floor = _summand_scale(k, ins) if floor is None else floor
                err = rel_err(o, r, floor=floor)
            if not err <= tol:
                bad.append(f"{k.name} [{k.kind}] device {d} {n.describe()}: {err:.3g}")
                sources.append(k.source)

    exe = shardc.compile(prog, target="pallas")
    got = exe.run_interpreted(*args, on_kernel=check)
    assert not bad, "\n".join(bad[:10]) + "\n" + sources[0]
    assert launches[0] == len(exe.kernels) * prog.mesh.size
    return exe, got


def _check(g, *args, tol=1e-5):
    exe, got = run_and_check(partition(g, Mesh(dp=1)), args, tol)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= tol, (rel_err(a, b), [k.source for k in exe.kernels])
    export_all(exe.kernels)
    return exe


# ---------------------------------------------------------------------------------- small graphs
# (every elementwise op: test_codegen.py test_every_elementwise_op[pallas])
def test_layout_ops_and_reshape_views(rng):
    b = GraphBuilder()
    x = b.parameter("x", (4, 6, 8), DType.f32)
    t = b.add(Op.TRANSPOSE, [x], perm=(2, 0, 1))
    s = b.add(Op.SLICE, [t], start=(1, 0, 2), limit=(7, 4, 6), stride=(2, 1, 1))
    r = b.add(Op.RESHAPE, [s], shape=(3, 16))
    p = b.add(Op.PAD, [r], low=(1, 0), high=(0, 2), value=-1.0)
    c = b.add(Op.CONCATENATE, [p, p], axis=1)
    e = b.add(Op.EXP, [x])
    g = b.build([c, e, b.add(Op.RESHAPE, [e], shape=(24, 8))])
    exe = _check(g, rng.standard_normal((4, 6, 8)).astype(np.float32))
    assert any(type(s).__name__ == "ViewStep" for s in exe.plan)


def test_int_dot_gather_scatter_and_unsupported(rng):
    b = GraphBuilder()
    a = b.parameter("a", (5, 7), DType.i32)
    w = b.parameter("w", (7, 3), DType.i32)
    table = b.parameter("t", (10, 4), DType.f32)
    idx = b.parameter("idx", (6,), DType.i32)
    d = b.add(Op.DOT_GENERAL, [a, w], lhs_contract=(1,), rhs_contract=(0,))
    gathered = b.add(Op.GATHER, [table, idx], axis=0)
    upd = b.add(Op.MUL, [gathered, b.constant(2.0, DType.f32, (6, 4))])
    sc = b.add(Op.SCATTER, [table, idx, upd], axis=0)
    g = b.build([d, sc])
    _check(g, rng.integers(-5, 5, (5, 7)).astype(np.int32), rng.integers(-5, 5, (7, 3)).astype(np.int32),
           rng.standard_normal((10, 4)).astype(np.float32), np.array([0, 3, 3, 9, 12, -1], np.int32))
    b = GraphBuilder()
    x = b.parameter("x", (4,), DType.bool)
    i = b.parameter("i", (2,), DType.i32)
    u = b.parameter("u", (2,), DType.bool)
    g = b.build([b.add(Op.SCATTER, [x, i, u], axis=0)])
    with pytest.raises(shardc.UnsupportedOpError, match="scatter"):
        shardc.compile(partition(g, Mesh(dp=1)), target="pallas")


def _grid(k) -> tuple:
    return pallas._module(k).GRID


def _attention_graph(bq=2, s=32, d=16, causal=True):
    b = GraphBuilder()
    q = b.parameter("q", (bq, s, d), DType.f32)
    k = b.parameter("k", (bq, s, d), DType.f32)
    v = b.parameter("v", (bq, s, d), DType.f32)
    sc = b.add(Op.DOT_GENERAL, [q, k], lhs_batch=(0,), rhs_batch=(0,), lhs_contract=(2,), rhs_contract=(2,))
    t = b.add(Op.MUL, [sc, b.constant(0.25, DType.f32, (bq, s, s))])
    if causal:
        rows = b.add(Op.IOTA, [], out_shape=(bq, s, s), out_dtype=DType.i32, dimension=1)
        cols = b.add(Op.IOTA, [], out_shape=(bq, s, s), out_dtype=DType.i32, dimension=2)
        t = b.add(Op.SELECT, [b.add(Op.GE, [rows, cols]), t, b.constant(-1e30, DType.f32, (bq, s, s))])
    m = b.add(Op.REDUCE_MAX, [t], axes=(2,))
    e = b.add(Op.EXP, [b.add(Op.SUB, [t, b.add(Op.BROADCAST, [m], dims=(0, 1), shape=(bq, s, s))])])
    den = b.add(Op.BROADCAST, [b.add(Op.REDUCE_SUM, [e], axes=(2,))], dims=(0, 1), shape=(bq, s, s))
    p = b.add(Op.DIV, [e, den])
    o = b.add(Op.DOT_GENERAL, [p, v], lhs_batch=(0,), rhs_batch=(0,), lhs_contract=(2,), rhs_contract=(1,))
    return b.build([o])


def _mlp_graph(m=64, k=512, n=256):
    b = GraphBuilder()
    x = b.parameter("x", (m, k), DType.f32)
    w = b.parameter("w", (k, n), DType.f32)
    bias = b.parameter("bias", (n,), DType.f32)
    h = b.add(Op.DOT_GENERAL, [x, w], lhs_contract=(1,), rhs_contract=(0,))
    y = b.add(Op.ADD, [h, b.add(Op.BROADCAST, [bias], dims=(1,), shape=(m, n))])
    mx = b.add(Op.REDUCE_MAX, [y], axes=(1,))
    return b.build([b.add(Op.TANH, [y]), mx])


def test_small_vmem_budget_tiles_grids_accumulates_k_and_flash_loops(rng, monkeypatch):
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 96 * 1024)
    exe = _check(_mlp_graph(), rng.standard_normal((64, 512)).astype(np.float32) * 0.05,
                 rng.standard_normal((512, 256)).astype(np.float32) * 0.05, rng.standard_normal(256).astype(np.float32))
    mm = next(k for k in exe.kernels if k.kind == "matmul")
    assert len(_grid(mm)) >= 2 and "arbitrary" in mm.source and "pltpu.VMEM" in mm.source, mm.source
    assert any(max(_grid(k)) > 1 for k in exe.kernels if k.kind == "reduction")
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 8 * 1024)
    exe = _check(_attention_graph(s=256), *(rng.standard_normal((2, 256, 16)).astype(np.float32) for _ in range(3)))
    (att,) = [k for k in exe.kernels if k.kind == "attention"]
    assert max(_grid(att)) > 1 and "'arbitrary'" in att.source, att.source


def test_flash_attention_one_kernel(rng):
    exe = _check(_attention_graph(), *(rng.standard_normal((2, 32, 16)).astype(np.float32) for _ in range(3)))
    assert [k.kind for k in exe.kernels] == ["attention"]


def test_source_lives_in_the_cache_and_is_a_pallas_call(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path))
    b = GraphBuilder()
    x = b.parameter("x", (4, 8), DType.f32)
    exe = shardc.compile(partition(b.build([b.add(Op.TANH, [x])]), Mesh(dp=1)), target="pallas")
    (k,) = exe.kernels
    assert k.path.parent == tmp_path / "pallas" and k.path.read_text().endswith(k.source)
    assert "pl.pallas_call" in k.source and "interpret=interpret" in k.source


# ---------------------------------------------------------------------------------------- zoo
FAST = {("mlp", True, False, "dp"), ("gpt2", False, False, "tp"), ("gpt2", True, True, "dp"),
        ("llama", False, True, "tp"), ("moe", False, False, "dp"), ("moe", True, True, "tp")}


@pytest.mark.parametrize("name,train,bf16,layout", zoo_cases.kernel_cases(FAST))
def test_zoo_kernels_equal_numpy_and_lower_for_tpu(name, train, bf16, layout):
    m, g, args, want = captured(name, train, bf16)
    axes, tp, plan = LAYOUTS[layout]
    prog = partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan)
    exe, got = run_and_check(prog, args, 1e-2 if bf16 else 1e-5)
    for i, (a, b) in enumerate(zip(got, want)):
        err = rel_err(a, b)
        assert err <= (3e-2 if bf16 else 1e-5), f"{g.output_names[i]}: {err:.3g}"
    export_all(exe.kernels)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fsdp", "2d"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_zoo_more_shardings(name, layout):
    m, g, args, want = captured(name, True, False)
    axes, tp, plan = LAYOUTS[layout]
    prog = partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan)
    exe, got = run_and_check(prog, args, 1e-5)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-5
    export_all(exe.kernels)
