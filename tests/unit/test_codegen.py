"""Codegen pieces: every elementwise op of the enum (Triton and Pallas), layout ops as views, the kernel cache
(SHARDC_CACHE_DIR, atomic files, corrupt entries regenerated), errors for what cannot be
generated, debug output and dumps, and ahead-of-time compiles for Hopper (sm_90) without a GPU."""
import numpy as np
import pytest

import shardc
from shardc import DType, Mesh, Op, partition
from shardc.codegen import cache
from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
from shardc.ir import EVAL, GraphBuilder
from shardc.ir.dtypes import from_numpy
from shardc.ir.ops import BINARY, COMPARE, ELEMENTWISE, FLOAT_ONLY, INT_OR_BOOL_ONLY, UNARY
from shardc.testing import rel_err


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _compile(g):
    return shardc.compile(partition(g, Mesh(dp=1)))


def _check(g, *args, tol=1e-5):
    exe = _compile(g)
    got = exe.run_interpreted(*args)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= tol, (rel_err(a, b), exe.kernels[0].source)
    return exe


def every_elementwise_op(rng):
    """One graph computing every elementwise op of the enum (ir/ops.py's categories) on fresh
    inputs: floats for all but the integer-or-bool ops, integers for all but the float-only
    ones, bools for those that take them. An op undefined on part of x (log, sqrt, pow's base)
    gets |x| + 0.5 instead. Returns the graph and its arguments."""
    xs = rng.standard_normal((8, 40)).astype(np.float32) * 3
    xs[0, :4] = [0.5, 1.5, -2.5, 2.5]  # round half to even
    ys = rng.standard_normal((8, 40)).astype(np.float32)
    js = rng.integers(-9, 9, (8, 40)).astype(np.int32)
    js[js == 0] = 3
    args = [xs, ys, rng.integers(-50, 50, (8, 40)).astype(np.int32), js,
            rng.integers(0, 8, (8, 40)).astype(np.int32)]
    b = GraphBuilder()
    x, y, i, j, k = (b.parameter(n, a.shape, from_numpy(a.dtype)) for n, a in zip("xyijk", args))
    pos = b.add(Op.ADD, [b.add(Op.ABS, [x]), b.constant(0.5, DType.f32, (8, 40))])
    bools = b.add(Op.GT, [x, y])

    def defined_on_x(op, *rest):
        with np.errstate(all="ignore"):
            return not np.isnan(EVAL[op](None, xs, *rest)).any()
    outs = []
    for op in sorted(UNARY, key=lambda o: o.value):
        if op in INT_OR_BOOL_ONLY:
            outs += [b.add(op, [i]), b.add(op, [bools])]
        else:
            outs.append(b.add(op, [x if defined_on_x(op) else pos]))
            if op not in FLOAT_ONLY:
                outs.append(b.add(op, [i]))
    for op in sorted(BINARY, key=lambda o: o.value):
        if op not in INT_OR_BOOL_ONLY:
            outs.append(b.add(op, [x if defined_on_x(op, ys) else pos, y]))
        if op not in FLOAT_ONLY:  # shifts by 0..7 (a negative or too wide shift is undefined)
            outs.append(b.add(op, [i, k if op in (Op.SHL, Op.SHR) else j]))
    outs += [b.add(op, [x, y]) for op in sorted(COMPARE, key=lambda o: o.value)]
    outs += [b.add(Op.SELECT, [bools, x, y]), b.add(Op.CAST, [x], to=DType.i32),
             b.add(Op.CAST, [i], to=DType.f32), b.add(Op.CAST, [x], to=DType.bf16)]
    g = b.build(outs)
    assert {n.op for n in g.nodes} >= ELEMENTWISE
    return g, args


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_every_elementwise_op(target, rng):
    g, args = every_elementwise_op(rng)
    if target == "pallas":
        from test_codegen_pallas import _check as check_pallas
        check_pallas(g, *args)
    else:
        exe = _check(g, *args)
        assert len(exe.kernels) <= 2  # ~55 outputs of 5 inputs: merged into few kernels


def test_layout_ops_are_index_math_and_reshape_outputs_are_views(rng):
    b = GraphBuilder()
    x = b.parameter("x", (4, 6, 8), DType.f32)
    t = b.add(Op.TRANSPOSE, [x], perm=(2, 0, 1))
    s = b.add(Op.SLICE, [t], start=(1, 0, 2), limit=(7, 4, 6), stride=(2, 1, 1))
    r = b.add(Op.RESHAPE, [s], shape=(3, 16))
    p = b.add(Op.PAD, [r], low=(1, 0), high=(0, 2), value=-1.0)
    c = b.add(Op.CONCATENATE, [p, p], axis=1)
    e = b.add(Op.EXP, [x])
    g = b.build([c, e, b.add(Op.RESHAPE, [e], shape=(24, 8))])  # a reshape of a stored value: a view
    exe = _check(g, rng.standard_normal((4, 6, 8)).astype(np.float32))
    assert sum(len(k.members) for k in exe.kernels) == 2   # (both in one multi-tensor launch)
    assert any(type(s).__name__ == "ViewStep" for s in exe.plan)


def test_reductions_with_prologue_and_epilogue_are_one_kernel(rng):
    b = GraphBuilder()
    x = b.parameter("x", (6, 50), DType.f32)
    m = b.add(Op.REDUCE_MAX, [x], axes=(1,))
    e = b.add(Op.EXP, [b.add(Op.SUB, [x, b.add(Op.BROADCAST, [m], dims=(0,), shape=(6, 50))])])
    s = b.add(Op.REDUCE_SUM, [e], axes=(1,))
    sm = b.add(Op.DIV, [e, b.add(Op.BROADCAST, [s], dims=(0,), shape=(6, 50))])
    g = b.build([sm, b.add(Op.REDUCE_MIN, [x], axes=(0, 1))])
    exe = _check(g, rng.standard_normal((6, 50)).astype(np.float32))
    assert [m.kind for k in exe.kernels for m in k.members].count("reduction") == 2


def test_int_dot_and_scatter_gather(rng):
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


def test_what_cannot_be_generated_raises_unsupported_op_error():
    b = GraphBuilder()
    x = b.parameter("x", (4,), DType.bool)
    i = b.parameter("i", (2,), DType.i32)
    u = b.parameter("u", (2,), DType.bool)
    g = b.build([b.add(Op.SCATTER, [x, i, u], axis=0)])
    with pytest.raises(shardc.UnsupportedOpError, match="scatter"):
        _compile(g)
    with pytest.raises(shardc.UnsupportedOpError, match="pallas"):
        shardc.compile(partition(g, Mesh(dp=1)), target="pallas")


def _small_graph():
    b = GraphBuilder()
    x = b.parameter("x", (4, 8), DType.f32)
    return b.build([b.add(Op.TANH, [b.add(Op.MUL, [x, x])])])


def test_kernel_cache_files_keys_and_corrupt_entries(_cache_dir, rng):
    exe = _compile(_small_graph())
    (k,) = exe.kernels
    assert k.path.parent.parent == _cache_dir and k.path.read_text().endswith(k.source)
    assert not list(_cache_dir.rglob("*.tmp"))
    mtime = k.path.stat().st_mtime_ns
    assert _compile(_small_graph()).kernels[0].path.stat().st_mtime_ns == mtime  # a hit: not rewritten
    k.path.write_text(k.path.read_text()[:40])  # truncated entry: regenerated, runs
    exe2 = _compile(_small_graph())
    assert exe2.kernels[0].path.read_text().endswith(k.source)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    assert rel_err(exe2.run_interpreted(x)[0], np.tanh(x * x)) <= 1e-5
    text = cache.group_ir_text(k.group)
    assert cache.cache_key(text, "triton") != cache.cache_key(text, "pallas")
    assert cache.cache_key(text, "triton") == k.key


def test_debug_prints_sources_and_dump_dir_writes_them(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHARDC_DEBUG", "4")
    monkeypatch.setenv("SHARDC_DUMP_DIR", str(tmp_path / "dump"))
    exe = _compile(_small_graph())
    assert "@triton.jit" in capsys.readouterr().err
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert "30-launch-plan.txt" in files and any(exe.kernels[0].name in f for f in files)


def _zoo_exe(name, bf16, train=False):
    import jax.numpy as jnp
    from shardc import models
    m = models.get(name + ":tiny")
    dt = jnp.bfloat16 if bf16 else None
    params = m.jax_params(0, dtype=dt)
    if train:
        fn, build = m.jax_train_step("sgd", lr=0.1)
        g = shardc.from_jax(fn, *build(params, 2, 1, dtype=dt))
    else:
        g = shardc.from_jax(m.jax_forward, params, *m.jax_inputs(2, 1, dtype=dt))
    return shardc.compile(partition(g, Mesh(tp=2), m.tp_specs()))


def _unique(kernels):
    return list({k.name: k for k in kernels}.values())


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "f32"])
def test_kernels_compile_ahead_of_time_for_hopper(bf16):
    kernels = _unique(_zoo_exe("gpt2", bf16).kernels + _zoo_exe("moe", bf16).kernels)
    results = compile_for_gpu(kernels)
    for k, r in zip(kernels, results):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])
        if bf16 and k.kind in ("matmul", "attention") and k.group.anchor.dtype.is_float:
            assert r["wgmma"], f"{k.name}: tl.dot did not become wgmma"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "moe", "mlp"])
def test_training_step_kernels_compile_ahead_of_time(name):
    kernels = _unique(_zoo_exe(name, True, train=True).kernels)
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["shared"] <= SHARED_MEMORY_LIMIT, k.name


# ------------------------------------------------------------- norm prologues, looped rows
def _bcast(b, v, shape, dims):
    return b.add(Op.BROADCAST, [v], dims=dims, shape=shape)


def _layer_norm(b, x, gamma, beta):
    rows, cols = x.shape
    n = b.constant(float(cols), DType.f32, (rows,))
    mean = b.add(Op.DIV, [b.add(Op.REDUCE_SUM, [x], axes=(1,)), n])
    xc = b.add(Op.SUB, [x, _bcast(b, mean, x.shape, (0,))])
    var = b.add(Op.DIV, [b.add(Op.REDUCE_SUM, [b.add(Op.MUL, [xc, xc])], axes=(1,)), n])
    rstd = b.add(Op.RSQRT, [b.add(Op.ADD, [var, b.constant(1e-5, DType.f32, (rows,))])])
    y = b.add(Op.MUL, [xc, _bcast(b, rstd, x.shape, (0,))])
    return b.add(Op.ADD, [b.add(Op.MUL, [y, _bcast(b, gamma, x.shape, (1,))]), _bcast(b, beta, x.shape, (1,))])


def _ln_ref(x, g, be):
    m = x.mean(1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(1, keepdims=True) + 1e-5) * g + be


def test_layer_norm_is_the_matmuls_prologue_and_its_statistics_loop(monkeypatch, rng):
    """LN(a + b) · W: the sum a + b is computed in the matmul's operand loads and stored once (it
    is an output too), the row statistics before the K loop (RB forced small: 3 trips), and the
    normalized rows are never written."""
    from shardc.kernels import matmul as matmul_t
    monkeypatch.setattr(matmul_t, "row_block", lambda k, bm, interpret: 16)
    b = GraphBuilder()
    a = b.parameter("a", (6, 40), DType.f32)
    r_in = b.parameter("r", (6, 40), DType.f32)
    g_ = b.parameter("g", (40,), DType.f32)
    be = b.parameter("be", (40,), DType.f32)
    w = b.parameter("w", (40, 24), DType.f32)
    res = b.add(Op.ADD, [a, r_in])
    d = b.add(Op.DOT_GENERAL, [_layer_norm(b, res, g_, be), w], lhs_contract=(1,), rhs_contract=(0,))
    g = b.build([d, res])
    args = [rng.standard_normal(s).astype(np.float32) for s in [(6, 40), (6, 40), (40,), (40,), (40, 24)]]
    exe = _check(g, *args)
    (k,) = exe.kernels
    assert k.kind == "matmul" and k.config(True)["RB"] == 16
    assert "for rr0 in range(0, 40, RB)" in k.source and "(pid_n + " in k.source
    assert [o.shape for o in k.outputs] == [(6, 24), (6, 40)] and {x.name for x in k.inputs} == {"a", "r", "g", "be", "w"}
    want = _ln_ref(args[0] + args[1], args[2], args[3]) @ args[4]
    assert rel_err(exe.run_interpreted(*args)[0], want) <= 1e-5


def test_rms_norm_prologue_in_bf16_with_several_column_blocks(rng):
    """RMSNorm in bf16 (upcast, normalize, round) as a prologue, N split over several programs:
    only the first column of programs stores the residual."""
    b = GraphBuilder()
    x = b.parameter("x", (8, 32), DType.bf16)
    y = b.parameter("y", (8, 32), DType.bf16)
    g_ = b.parameter("g", (32,), DType.bf16)
    w = b.parameter("w", (32, 300), DType.bf16)
    res = b.add(Op.ADD, [x, y])
    r32 = b.add(Op.CAST, [res], to=DType.f32)
    ms = b.add(Op.DIV, [b.add(Op.REDUCE_SUM, [b.add(Op.MUL, [r32, r32])], axes=(1,)), b.constant(32.0, DType.f32, (8,))])
    inv = b.add(Op.RSQRT, [b.add(Op.ADD, [ms, b.constant(1e-6, DType.f32, (8,))])])
    nrm = b.add(Op.CAST, [b.add(Op.MUL, [r32, _bcast(b, inv, (8, 32), (0,))])], to=DType.bf16)
    h = b.add(Op.MUL, [nrm, _bcast(b, g_, (8, 32), (1,))])
    d = b.add(Op.DOT_GENERAL, [h, w], lhs_contract=(1,), rhs_contract=(0,))
    g = b.build([d, b.add(Op.MUL, [res, res])])
    args = [rng.standard_normal(s).astype(DType.bf16.np) for s in [(8, 32), (8, 32), (32,), (32, 300)]]
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    mm = [k for k in exe.kernels if k.kind == "matmul"]
    assert len(mm) == 1 and any(n.op is Op.RSQRT for n in mm[0].ops)
    # stored [8, 32] values: the residual (by the matmul) and the graph's output res², nothing normalized
    assert [o.op for k in exe.kernels for o in k.outputs if o.shape == (8, 32)] == [Op.ADD, Op.MUL]
    assert mm[0].config(True)["BN"] < 300  # several column blocks: one stores the residual
    for got, want in zip(exe.run_interpreted(*args), g.evaluate(*args)):
        assert rel_err(got, want) <= 1e-2


@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
def test_rows_longer_than_one_tile_loop(monkeypatch, rng, bf16):
    """Softmax, log-sum-exp and layer norm over 100-element rows with the row tile forced to 16:
    each reduction loops over its row (the variance after the mean), then the outputs loop."""
    from shardc.kernels import rows as rows_t
    monkeypatch.setattr(rows_t, "MAX_ROW_TILE", 16)
    dt = DType.bf16 if bf16 else DType.f32
    b = GraphBuilder()
    x = b.parameter("x", (5, 100), dt)
    g_ = b.parameter("g", (100,), DType.f32)
    be = b.parameter("be", (100,), DType.f32)
    xf = b.add(Op.CAST, [x], to=DType.f32)
    m = b.add(Op.REDUCE_MAX, [xf], axes=(1,))
    e = b.add(Op.EXP, [b.add(Op.SUB, [xf, _bcast(b, m, (5, 100), (0,))])])
    s = b.add(Op.REDUCE_SUM, [e], axes=(1,))
    sm = b.add(Op.CAST, [b.add(Op.DIV, [e, _bcast(b, s, (5, 100), (0,))])], to=dt)
    lse = b.add(Op.ADD, [b.add(Op.LOG, [s]), m])
    g = b.build([sm, lse, _layer_norm(b, xf, g_, be), b.add(Op.REDUCE_MIN, [xf], axes=(1,))])
    xs = rng.standard_normal((5, 100)).astype(np.float32) * 3
    args = [xs.astype(DType.bf16.np) if bf16 else xs, rng.standard_normal(100).astype(np.float32),
            rng.standard_normal(100).astype(np.float32)]
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    red = [k for k in exe.kernels if k.kind == "reduction"]
    assert red and all("for rn0 in range(0, 100, BN)" in k.source and "for rr0 in range(0, 100, BN)" in k.source
                       for k in red)
    assert all(k.config(True)["BN"] == 16 for k in red)
    for got, want in zip(exe.run_interpreted(*args), g.evaluate(*args)):
        assert rel_err(got, want) <= (1e-2 if bf16 else 1e-5)
