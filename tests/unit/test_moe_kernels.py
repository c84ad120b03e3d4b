"""Grouped-matmul kernels (ragged_dot: rows and contraction forms, with and without an expert
offset) against numpy of their IR nodes on the Triton interpreter and in Pallas interpret mode;
the Triton kernels compile for sm_90 and the Pallas kernels lower for TPU (slow: the compiles);
a whole expert-parallel program compiles and runs on the interpreters."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.codegen import pallas
from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
from shardc.ir import DType, GraphBuilder, Op
from shardc.testing import rel_err

R = np.random.default_rng(3)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def _graph(dt: DType, sizes=(6, 0, 9, 3), m: int = 20, grad: bool = True):
    """The forward (rows in groups) and the weight gradient (contraction in groups) of one expert
    layer: 4 experts, 20 rows, an empty group and rows past the last group."""
    b = GraphBuilder("grouped", {})
    x = b.parameter("x", (m, 24), dt)
    w = b.parameter("w", (len(sizes), 24, 40), dt)
    s = b.parameter("sizes", (len(sizes),), DType.i32)
    dy = b.parameter("dy", (m, 40), dt)
    y = b.add(Op.RAGGED_DOT, [x, w, s])
    if grad:
        dw = b.add(Op.RAGGED_DOT, [b.add(Op.TRANSPOSE, [x], perm=(1, 0)), dy, s], mode="contract")
    g = b.build([y, dw] if grad else [y, b.add(Op.REDUCE_SUM, [dy], axes=(0,))])
    args = [R.standard_normal((m, 24)).astype(dt.np), R.standard_normal((len(sizes), 24, 40)).astype(dt.np),
            np.array(sizes, np.int32), R.standard_normal((m, 40)).astype(dt.np)]
    return g, args


def _run(target: str, dt: DType, mesh: Mesh, specs: dict, graph=None):
    g, args = graph or _graph(dt)
    prog = shardc.partition(g, mesh, specs)
    exe = shardc.compile(prog, target=target)
    grouped = [k for k in exe.kernels if k.kind == "grouped_matmul"]
    assert len(grouped) == 2 or graph is not None, [k.kind for k in exe.kernels]
    tol = 1e-5 if dt is DType.f32 else 1e-2
    bad = []

    def check(k, d, ins, outs):
        for o, r, n in zip(outs, k.reference(dict(zip(k.inputs, ins)), prog.mesh.coords(d)), k.outputs):
            if not rel_err(o, r) <= tol:
                bad.append(f"{k.name} [{k.kind}] device {d}: {rel_err(o, r):.3g}")

    got = exe.run_interpreted(*args, on_kernel=check)
    assert not bad, bad
    for a, r in zip(got, g.evaluate(*args)):
        assert rel_err(np.asarray(a, np.float32), np.asarray(r, np.float32)) <= tol
    return grouped


# f32 with one expert half per device (the group offset), bf16 whole
CASES = [(DType.f32, Mesh(ep=2), {"w": P("ep", None, None), "out[1]": P("ep", None, None)}),
         (DType.bf16, Mesh(dp=1), {})]


@pytest.mark.slow
def test_grouped_matmul_triton_kernels_equal_numpy_and_compile_for_hopper():
    kernels = [k for dt, mesh, specs in CASES for k in _run("triton", dt, mesh, specs)]
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])
        if k.inputs[0].dtype is DType.bf16:
            assert r["wgmma"], f"{k.name}: tl.dot did not become wgmma"


@pytest.mark.slow
def test_grouped_matmul_pallas_kernels_equal_numpy_and_lower_for_tpu():
    for dt, mesh, specs in CASES:
        for k in _run("pallas", dt, mesh, specs):
            pallas.export_for_tpu(k)
    for k in _run("pallas", DType.f32, Mesh(dp=1), {}, graph=_graph(DType.f32, (400, 112, 0, 480), m=1100)):
        pallas.export_for_tpu(k)  # row tiles of 128, K tiles of 512 (the last ones partial)


def test_pallas_kernels_visit_tiles_group_by_group():
    """1100 routed rows: row tiles of 128 (forward) and K tiles of 512 (weight gradient), groups
    straddling tiles, an empty group on a tile edge, tiles two groups share, rows past the groups
    (zeros), and a device's expert half (the offset), under the interpreter."""
    sizes = (400, 112, 0, 480, 27, 0)            # ends 400, 512 (a tile edge), 512, 992, 1019; 81 in none
    ks = _run("pallas", DType.f32, Mesh(ep=2), {"w": P("ep", None, None), "out[1]": P("ep", None, None)},
              graph=_graph(DType.f32, sizes, m=1100))
    rows, contract = sorted(ks, key=lambda k: "PALLAS_CONTRACT" in k.source or "acc_ref" in k.source)
    assert "VISITS = 12\n" in rows.source and "BlockSpec((128, 24)" in rows.source   # 9 row tiles + 3 groups
    assert "VISITS = 9\n" in contract.source and "BlockSpec((512, 40)" in contract.source  # 3 K tiles + 6 groups


@pytest.mark.parametrize("target", ["triton", pytest.param("pallas", marks=pytest.mark.slow)])
def test_expert_parallel_program_compiles_and_runs_on_the_interpreters(target):
    """The whole routed program (local sorts, ragged all-to-alls, grouped matmuls) as kernels."""
    jax = pytest.importorskip("jax")
    from jax import lax
    import jax.numpy as jnp

    def moe(params, x):
        xt = x.reshape(-1, x.shape[-1])
        w, ids = lax.top_k(jax.nn.softmax(xt @ params["router"].T, axis=-1), 2)
        ids, w = ids.reshape(-1), (w / w.sum(-1, keepdims=True)).reshape(-1)
        order = jnp.argsort(ids)
        y = lax.ragged_dot(jnp.repeat(xt, 2, axis=0)[order], params["w"], jnp.bincount(ids, length=4))
        return (y[jnp.argsort(order)] * w[:, None]).reshape(-1, 2, x.shape[-1]).sum(1)
    params = {"router": R.standard_normal((4, 16)).astype(np.float32),
              "w": (R.standard_normal((4, 16, 16)) / 4).astype(np.float32)}
    x = R.standard_normal((8, 16)).astype(np.float32)
    g = shardc.from_jax(moe, params, x)
    prog = shardc.partition(g, Mesh(ep=4), {"x": P("ep", None), "out": P("ep", None), "params['w']": P("ep", None, None)})
    assert "ragged_all_to_all" in prog.bytes_by_kind()
    exe = shardc.compile(prog, target=target)
    assert any(k.kind == "grouped_matmul" for k in exe.kernels)
    got = exe.run_interpreted(params, x)[0]
    assert rel_err(np.asarray(got), g.evaluate(params, x)[0]) <= 1e-5


def test_matmul_bound_counts_grouped_matmuls():
    """bench/fusion.py's matmul-bound bytes read each ragged_dot's operands and write its result,
    as for a dot_general (the two grouped matmuls are the whole bound of this graph)."""
    from shardc.codegen.stats import matmul_bound_bytes
    g, _ = _graph(DType.f32)
    want = sum(sum(i.nbytes for i in n.inputs) + n.nbytes for n in g.nodes if n.op is Op.RAGGED_DOT)
    assert want == 4 * (20 * 24 + 4 * 24 * 40 + 4 + 20 * 40) + 4 * (24 * 20 + 20 * 40 + 4 + 4 * 24 * 40)
    assert matmul_bound_bytes(g) == want


def test_matmul_bound_leaves_out_operands_built_from_iotas():
    """A cumsum written as a dot with a triangular matrix of iotas (as the frontends write it)
    reads only its other operand: a kernel builds the matrix in its operand loads."""
    from shardc.codegen.stats import matmul_bound_bytes
    b = GraphBuilder("cumsum")
    x = b.parameter("x", (6, 5), DType.f32)
    i, j = (b.add(Op.IOTA, [], out_shape=(6, 6), out_dtype=DType.i32, dimension=d) for d in (0, 1))
    tri = b.add(Op.CAST, [b.add(Op.GE, [i, j])], to=DType.f32)
    g = b.build([b.add(Op.DOT_GENERAL, [tri, x], lhs_contract=(1,), rhs_contract=(0,))])
    assert matmul_bound_bytes(g) == 4 * (6 * 5 + 6 * 5)
    x0 = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    np.testing.assert_allclose(g.evaluate(x0)[0], np.cumsum(x0, 0), rtol=1e-5, atol=1e-6)
