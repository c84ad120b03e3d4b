"""Collective passes: each keeps simulate == evaluate, moves the same bytes, and says what it did."""
import copy
import functools

import numpy as np
import pytest

import shardc
import zoo_cases
from shardc import Mesh, ShardingError
from shardc.ir import DType, GraphBuilder, Op
from shardc.ir.graph import ancestors
from shardc.partition.passes import combine_all_reduces
from shardc.partition.passes_cse import eliminate_common_collectives
from shardc.partition.passes_scatter import create_reduce_scatters
from shardc.testing import assert_close

LAYOUTS = zoo_cases.layouts(dp="dp4", fsdp="fsdp4", **{"2d": "2x2"})


def captured(name, train=True):
    """A zoo model's training step (or forward) and its evaluation (tests/zoo_cases.py)."""
    return (*zoo_cases.captured(name, train), zoo_cases.reference(name, train))


@functools.lru_cache(maxsize=None)
def unpassed(name, layout):
    """A zoo training step partitioned over LAYOUTS[layout] without passes (shared: a pass under
    test runs on a copy.copy of it, which gets its own program and ledger)."""
    m, g, args, ref = captured(name)
    axes, tp, _, plan = LAYOUTS[layout]
    return shardc.partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan, passes=())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", zoo_cases.ZOO)
def test_combined_program_is_exact_and_moves_the_same_bytes(name, layout):
    m, g, args, ref = captured(name)
    axes, tp, _, plan = LAYOUTS[layout]
    specs = m.tp_specs() if tp else {}
    plain = unpassed(name, layout)
    prog = shardc.partition(g, Mesh(axes), specs, plan)
    assert sum(c.bytes for c in prog.collectives) == sum(c.bytes for c in plain.collectives)
    assert [r.name for r in prog.passes] == ["cse", "reduce_scatter", "local_scatter", "sink", "combine",
                                             "collective_matmul", "chunk", "schedule"]
    report = prog.passes[4]
    assert report.before == len(plain.collectives)  # the zoo has no duplicate or block-read all-reduce
    assert report.after == len(prog.collectives) <= report.before
    if plan == "dp":  # the data-parallel gradients become one bucket
        assert sum(c.kind == "all_reduce" and c.axes == ("dp",) for c in prog.collectives) == 1
    # every collective in the program has its record, and no record lost its node
    assert sorted(id(c.node) for c in prog.collectives) == sorted(
        id(n) for n in prog.local.nodes if n.op in (Op.ALL_REDUCE, Op.ALL_GATHER, Op.REDUCE_SCATTER,
                                                     Op.ALL_TO_ALL, Op.COLLECTIVE_PERMUTE))
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


@pytest.mark.parametrize("name", zoo_cases.ZOO)
def test_chunked_collectives_are_exact_and_move_the_same_bytes(name):
    """Every collective with a dim to split along is cut in two: the ledger holds one record per
    piece, the bytes add up to the whole, the program still computes the same values."""
    from shardc.partition.passes_chunk import chunk_collectives, free_dim
    m, g, args, ref = captured(name)
    prog = copy.copy(unpassed(name, "2d"))
    whole = [n for n in prog.local.nodes if n.op in (Op.ALL_GATHER, Op.REDUCE_SCATTER, Op.ALL_REDUCE, Op.ALL_TO_ALL)
             and free_dim(n) is not None]
    nbytes = sum(c.bytes for c in prog.collectives)
    report = chunk_collectives(prog, 1e-12, max_pieces=2)
    assert report.after - report.before == len(whole) > 0
    assert sum(c.bytes for c in prog.collectives) == nbytes
    assert sorted(id(c.node) for c in prog.collectives) == sorted(
        id(n) for n in prog.local.nodes if n.op in (Op.ALL_REDUCE, Op.ALL_GATHER, Op.REDUCE_SCATTER,
                                                     Op.ALL_TO_ALL, Op.COLLECTIVE_PERMUTE))
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


def test_passes_inside_pipeline_stages_bucket_each_stage_alone():
    """A pipeline runs the collective passes on its per-microbatch program: the gradient
    accumulations of each stage go out as one bucket, no bucket spans two stages, and the
    pipeline still computes the step exactly. The scheduler is refused by name."""
    m, g, args, _ = captured("gpt2")  # (2 layers, batch 4: 2 microbatches x dp 2)
    specs = {"args[0]": shardc.P("dp"), "args[1]": shardc.P("dp")}
    pipe = shardc.Pipeline("pp", 2, "1f1b")
    prog = shardc.partition(g, Mesh(pp=2, dp=2), specs, pipeline=pipe)
    assert [r.name for r in prog.passes] == ["cse", "reduce_scatter", "local_scatter", "sink", "collective_matmul",
                                             "chunk", "combine"]
    buckets = [n for n in prog.inner.local.nodes if n.op is Op.ALL_REDUCE and n.inputs[0].op is Op.CONCATENATE]
    assert sorted(prog.stage_of[b] for b in buckets) == [0, 1]
    for b in buckets:  # every member gradient comes from the bucket's own stage
        assert {prog.stage_of[x.inputs[0]] for x in b.inputs[0].inputs} == {prog.stage_of[b]}
    assert prog.passes[-1].after < prog.passes[-1].before
    from shardc.ir.evaluate import evaluate_graph
    from shardc.partition.pipeline_sim import simulate_pipeline
    rng, vals = np.random.default_rng(5), g.input_values(*args)
    fresh = {x.name: vals[x.name] if vals[x.name].dtype.kind in "iu" else
             (0.1 * rng.standard_normal(x.shape)).astype(vals[x.name].dtype) for x in g.inputs}
    for got, want in zip(simulate_pipeline(prog, fresh)[0], evaluate_graph(g, fresh)):
        assert_close(got, want, 1e-5)
    with pytest.raises(ShardingError, match="schedule"):
        shardc.partition(g, Mesh(pp=2, dp=2), specs, pipeline=pipe, passes=["combine", "schedule"])


def _chain_graph():
    """a = all_reduce(x); b = all_reduce(a * y); c = all_reduce(y): b cannot join a (it needs a's
    result); c joins b."""
    b = GraphBuilder("chain", {"dp": 2})
    x = b.parameter("x", (4, 3), DType.f32)
    y = b.parameter("y", (4, 3), DType.f32)
    a = b.add(Op.ALL_REDUCE, [x], axes=("dp",))
    bb = b.add(Op.ALL_REDUCE, [b.add(Op.MUL, [a, y])], axes=("dp",))
    c = b.add(Op.ALL_REDUCE, [y], axes=("dp",))
    return b, [a, bb, c]


def test_an_all_reduce_that_needs_another_is_not_combined_with_it():
    from shardc.ir.graph import Graph
    from shardc.partition.program import CollectiveRecord, SpmdProgram
    b, outs = _chain_graph()
    local = Graph(b.nodes, b.inputs, outs, ["a", "b", "c"], "chain", {"dp": 2})
    mesh = Mesh(dp=2)
    recs = [CollectiveRecord("all_reduce", ("dp",), n.nbytes, n.nbytes, f"t{i}", None, "test", n)
            for i, n in enumerate(outs)]
    prog = SpmdProgram(local, mesh, local, {}, {}, [], [], recs)
    report = combine_all_reduces(prog)
    reduces = [n for n in prog.local.nodes if n.op is Op.ALL_REDUCE]
    assert len(reduces) == 2 and report.after == 2
    assert reduces[0].shape == (4, 3) and reduces[1].shape == (24,)  # a alone; b and c flattened together
    assert reduces[0] in ancestors(reduces[1].inputs)
    order = {n: i for i, n in enumerate(prog.local.nodes)}
    assert all(order[i] < order[n] for n in prog.local.nodes for i in n.inputs)  # still topological


def test_threshold_splits_buckets():
    m, g, args, ref = captured("gpt2")
    prog = shardc.partition(g, Mesh(dp=2), plan="dp", passes=())
    n_grads = sum(c.axes == ("dp",) for c in prog.collectives)
    biggest = max(c.bytes for c in prog.collectives)
    report = combine_all_reduces(prog, threshold=biggest)
    assert 1 < report.after < n_grads
    assert all(c.bytes <= biggest for c in prog.collectives)
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


def test_unknown_pass_is_a_clear_error():
    m, g, args, ref = captured("mlp")
    with pytest.raises(ShardingError, match="unknown pass"):
        shardc.partition(g, Mesh(dp=2), plan="dp", passes=["fuse-everything"])
    prog = shardc.partition(g, Mesh(dp=2), plan="dp", passes=["combine"])
    assert str(prog.passes[0]).startswith("combine: ")


# ---- reduce-scatter creation and CSE -------------------------------------------------------------

def _program(b, outs, mesh, names=None):
    """An SpmdProgram of hand-built per-device nodes with a record for each collective."""
    from shardc.ir.graph import Graph
    from shardc.ir.ops import COLLECTIVES
    from shardc.partition.program import CollectiveRecord, SpmdProgram
    local = Graph(b.nodes, b.inputs, outs, names or [f"o{i}" for i in range(len(outs))], "hand", dict(mesh.axes))
    recs = [CollectiveRecord(n.op.value, tuple(n.attrs["axes"]), n.nbytes, n.nbytes, f"t{i}", None, "test", n)
            for i, n in enumerate(local.nodes) if n.op in COLLECTIVES]
    return SpmdProgram(local, mesh, local, {}, {}, [], [], recs)


def _per_device(local, mesh, seed=0):
    """Every device's outputs of a per-device program, each device with its own random inputs
    (as a pending partial sum has), collectives exact."""
    from shardc.ir.evaluate import eval_node
    from shardc.ir.ops import COLLECTIVES
    from shardc.partition.simulate import run_collective
    rng = np.random.default_rng(seed)
    env = [{p: rng.standard_normal(p.shape).astype(np.float32) for p in local.inputs} for _ in range(mesh.size)]
    for n in local.nodes:
        if n.op is Op.PARAMETER:
            continue
        if n.op in COLLECTIVES:
            for d, v in enumerate(run_collective(n, mesh, [e[n.inputs[0]] for e in env])):
                env[d][n] = v
        for d, e in enumerate(env):
            if n.op is Op.AXIS_INDEX:
                e[n] = np.asarray(mesh.coords(d)[n.attrs["axis"]], np.int32)
            elif n.op not in COLLECTIVES:
                e[n] = eval_node(n, [e[i] for i in n.inputs])
    return [[e[o] for o in local.outputs] for e in env]


def _block_program(mesh, axes, outer, reversed_blocks=False, users=1):
    """y = all_reduce(x) over `axes`; each reader gathers this device's block of dim 0 (viewed as
    [outer, inner]), built with the resharder's own index arithmetic."""
    from shardc.ir.emitter import Emitter
    from shardc.partition.mesh import DimSharding
    from shardc.partition.reshard import Resharder
    b = Emitter("blocks", dict(mesh.axes))
    x = b.parameter("x", (12, 5), DType.f32)
    r = b.add(Op.ALL_REDUCE, [x], axes=axes, reduce="sum")
    rs = Resharder(b, mesh)
    idx = rs.global_index(12, DimSharding(axes, outer))
    if reversed_blocks:
        idx = b.binary(Op.SUB, b.const(11, DType.i32), idx)
    outs = [b.binary(Op.MUL, b.add(Op.GATHER, [r, idx], axis=0), float(i + 2)) for i in range(users)]
    return b, outs


@pytest.mark.parametrize("axes,outer,users", [(("x",), 1, 1), (("y", "x"), 1, 2), (("x",), 3, 1), (("y",), 2, 2)])
def test_all_reduce_whose_readers_keep_one_block_becomes_a_reduce_scatter(axes, outer, users):
    mesh = Mesh(x=2, y=2)
    b, outs = _block_program(mesh, axes, outer, users=users)
    prog = _program(b, outs, mesh)
    want = _per_device(prog.local, mesh)
    report = create_reduce_scatters(prog)
    kinds = [n.op for n in prog.local.nodes if n.op in (Op.ALL_REDUCE, Op.REDUCE_SCATTER, Op.GATHER)]
    assert kinds == [Op.REDUCE_SCATTER], kinds  # the gathers went with the all-reduce
    assert [c.kind for c in prog.collectives] == ["reduce_scatter"] and report.after == 1
    rec = prog.collectives[0]
    assert rec.wire_bytes == (mesh.group_size(axes) - 1) * 12 * 5 * 4 // mesh.group_size(axes)
    got = _per_device(prog.local, mesh)
    for g_dev, w_dev in zip(got, want):
        for a, w in zip(g_dev, w_dev):
            assert_close(a, w, 1e-6)


@pytest.mark.parametrize("case", ["reversed", "other_reader", "max"])
def test_all_reduce_is_kept_where_a_reader_needs_more_than_its_block(case):
    mesh = Mesh(x=2, y=2)
    b, outs = _block_program(mesh, ("x",), 1, reversed_blocks=case == "reversed")
    if case == "other_reader":
        r = next(n for n in b.nodes if n.op is Op.ALL_REDUCE)
        outs.append(b.add(Op.NEG, [r]))  # needs the whole sum
    if case == "max":
        next(n for n in b.nodes if n.op is Op.ALL_REDUCE).attrs["reduce"] = "max"
    prog = _program(b, outs, mesh)
    report = create_reduce_scatters(prog)
    assert report.after == report.before == 1 and prog.collectives[0].kind == "all_reduce"


def _gathered_update(mesh, reader: str):
    """m' = block(all_gather(m) * 0.9 + g) with g replicated (FSDP's optimizer step on a gathered
    state, cut back to the device's block): the block reader is the resharder's own index
    arithmetic, or ("reversed") another device's block, or ("whole") the whole gathered value."""
    from shardc.ir.emitter import Emitter
    from shardc.partition.mesh import DimSharding
    from shardc.partition.reshard import Resharder
    b = Emitter("update", dict(mesh.axes))
    m = b.parameter("m", (3, 5), DType.f32)
    g = b.parameter("g", (12, 5), DType.f32)
    ag = b.add(Op.ALL_GATHER, [m], axes=("y", "x"), dim=0)
    upd = b.binary(Op.ADD, b.binary(Op.MUL, ag, 0.9), b.unary(Op.TANH, g))
    if reader == "whole":
        return b, [upd]
    idx = Resharder(b, mesh).global_index(12, DimSharding(("y", "x")))
    if reader == "reversed":
        idx = b.binary(Op.SUB, b.const(11, DType.i32), idx)
    return b, [b.add(Op.GATHER, [upd, idx], axis=0)]


@pytest.mark.parametrize("reader", ["block", "reversed", "whole"])
def test_elementwise_ops_cut_back_to_the_block_run_on_the_block(reader):
    from shardc.partition.passes_sink import sink_all_gathers
    mesh = Mesh(x=2, y=2)
    b, outs = _gathered_update(mesh, reader)
    prog = _program(b, outs, mesh)
    want = _per_device(prog.local, mesh)
    report = sink_all_gathers(prog)
    ops = [n.op for n in prog.local.nodes]
    if reader == "block":   # no all-gather; the update runs on [3, 5], g cut to the block locally
        assert Op.ALL_GATHER not in ops and prog.collectives == [] and report.after == 0
        assert {tuple(n.shape) for n in prog.local.nodes if n.op in (Op.MUL, Op.ADD) and n.dtype == DType.f32} == {(3, 5)}
        assert "1 all-gathers' elementwise readers run on the block" in report.summary
    else:                   # a reader needs more than the device's own block: unchanged
        assert ops.count(Op.ALL_GATHER) == 1 and report.after == report.before == 1
    for g_dev, w_dev in zip(_per_device(prog.local, mesh), want):
        for a, w in zip(g_dev, w_dev):
            np.testing.assert_array_equal(a, w)


@pytest.mark.parametrize("name", [n if n in ("mlp", "moe") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in zoo_cases.ZOO])
def test_sink_on_the_zoo_fsdp_tp_step_is_exact(name):
    """FSDP × tp SGD steps: the update of each gathered parameter runs on its block (the
    all-gather stays for the forward's matmul), same bytes, simulate == evaluate."""
    m, g, args, ref = captured(name)
    axes, tp, _, plan = zoo_cases.LAYOUTS["2x2-fsdp"]
    prog = shardc.partition(g, Mesh(axes), m.tp_specs(), plan, passes=("sink",))
    (report,) = prog.passes
    assert "elementwise readers run on the block" in report.summary and not report.summary.startswith("0 ")
    assert report.after == report.before
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


def test_a_narrowing_cast_runs_before_its_all_gather():
    from shardc.ir.emitter import Emitter
    from shardc.partition.passes_sink import sink_all_gathers
    mesh = Mesh(x=4)
    b = Emitter("cast", dict(mesh.axes))
    x = b.parameter("x", (3, 5), DType.f32)
    out = b.add(Op.CAST, [b.add(Op.ALL_GATHER, [x], axes=("x",), dim=1)], to=DType.bf16)
    prog = _program(b, [out], mesh)
    want = _per_device(prog.local, mesh)
    sink_all_gathers(prog)
    assert [n.op for n in prog.local.nodes if n.op is not Op.PARAMETER] == [Op.CAST, Op.ALL_GATHER]
    (rec,) = prog.collectives
    assert (rec.bytes, rec.wire_bytes) == (3 * 20 * 2, 3 * 15 * 2) and "runs first" in rec.reason
    for g_dev, w_dev in zip(_per_device(prog.local, mesh), want):
        np.testing.assert_array_equal(g_dev[0], w_dev[0])


def test_fsdp_adam_state_is_updated_on_its_shard():
    """Adam over fsdp×tp: m and v are no longer gathered to be scaled and cut back; the step's
    result is the unpassed program's, bit for bit."""
    m = shardc.models.get("mlp:tiny")
    g, args = m.capture(True, "jax", 4, optimizer="adam")
    raw = shardc.partition(g, Mesh(fsdp=2, tp=2), m.tp_specs(), "fsdp", passes=())
    prog = copy.copy(raw)
    prog.passes = []
    from shardc.partition.passes import run_passes
    run_passes(prog, ("sink",))
    state = lambda p: sum(c.bytes for c in p.collectives if "opt_state" in c.tensor and c.kind == "all_gather")  # noqa: E731
    assert state(raw) > 0 and state(prog) == 0, prog.ledger()
    assert sum(c.bytes for c in prog.collectives) < sum(c.bytes for c in raw.collectives)
    for a, b in zip(prog.simulate(*args), raw.simulate(*args)):
        np.testing.assert_array_equal(a, b)


def test_identical_all_gathers_through_separate_reshapes_merge():
    mesh = Mesh(x=4)
    b = GraphBuilder("twice", {"x": 4})
    x = b.parameter("x", (2, 6), DType.f32)
    g1 = b.add(Op.ALL_GATHER, [b.add(Op.RESHAPE, [x], shape=(12,))], axes=("x",), dim=0)
    g2 = b.add(Op.ALL_GATHER, [b.add(Op.RESHAPE, [x], shape=(12,))], axes=("x",), dim=0)
    g3 = b.add(Op.ALL_GATHER, [b.add(Op.NEG, [x])], axes=("x",), dim=0)  # another value: kept
    outs = [b.add(Op.MUL, [g1, g2]), g3]
    prog = _program(b, outs, mesh)
    want = _per_device(prog.local, mesh)
    report = eliminate_common_collectives(prog)
    assert report.before == 3 and report.after == 2 and "all_gather 1" in report.summary
    assert sum(n.op is Op.ALL_GATHER for n in prog.local.nodes) == 2
    assert sum(c.bytes for c in prog.collectives) == 2 * 48 * 4
    for g_dev, w_dev in zip(_per_device(prog.local, mesh), want):
        for a, w in zip(g_dev, w_dev):
            assert_close(a, w, 0)


def test_fused_qkv_bias_gradients_reduce_scatter_into_their_strided_layout():
    """FSDP over a fused QKV weight keeps whole heads ('dp'/3): its gradient, a pending sum,
    goes straight to that layout by reduce-scatter; no all-reduce is left but the loss's."""
    m, g, args, ref = captured("gpt2")
    prog = shardc.partition(g, Mesh(dp=4), {}, "fsdp", passes=())
    assert [c.bytes for c in prog.collectives if c.kind == "all_reduce"] == [4]  # the scalar loss
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


# ---- the latency-hiding scheduler ----------------------------------------------------------------

def _fsdp_program(passes=("cse", "reduce_scatter", "combine")):
    m, g, args, ref = captured("gpt2")
    return shardc.partition(g, Mesh(dp=2, tp=2), m.tp_specs(), "fsdp", passes=passes), args, ref


def test_scheduler_model_is_the_timeline_and_the_memory_model_of_its_order():
    """The scheduler's modeled step is analyze's timeline of the order it returns, its peak is
    analyze's liveness peak of that order, and the order only moves collectives earlier in
    modeled time: the step does not grow."""
    from shardc.analysis.analyze import op_pricer
    from shardc.analysis.cost import timeline
    from shardc.analysis.memory import donations, liveness
    from shardc.ir.graph import Graph
    from shardc.partition.passes_schedule import list_schedule
    prog, args, ref = _fsdp_program()
    local, price = prog.local, op_pricer("h200", prog.mesh)
    donated = {local.inputs[i] for i in donations(prog.graph).values()}
    before = max(e.start + e.duration for e in timeline(local, seconds=price))
    for limit in (1e12, 0.0):
        order, step, peak = list_schedule(local, price, limit, donated)
        assert sorted(map(id, order)) == sorted(map(id, local.nodes))
        pos = {n: i for i, n in enumerate(order)}
        assert all(pos[i] < pos[n] for n in order for i in n.inputs)
        new = Graph(order, local.inputs, local.outputs, local.output_names, "s", local.mesh_axes)
        new.scheduled = True
        assert step == pytest.approx(max(e.start + e.duration for e in timeline(new, seconds=price)), rel=1e-12)
        assert peak == liveness(prog.graph, new)[0]
        if limit:  # (with no memory to spare, starts wait for their place: a later step is the price)
            assert step <= before * (1 + 1e-9)
    ops = lambda nodes: [n for n in nodes if n.op is not Op.PARAMETER]
    assert ops(order) == ops(local.nodes)  # no memory to spare: the program order itself


def test_scheduler_keeps_the_peak_under_the_memory_limit():
    from shardc.analysis.memory import liveness
    from shardc.partition.passes_schedule import schedule
    prog, args, ref = _fsdp_program()
    in_order = liveness(prog.graph, prog.local)[0]
    free = _fsdp_program()[0]
    schedule(free, limit=1e12)
    unbounded = liveness(free.graph, free.local)[0]
    assert unbounded > in_order  # with memory to spare, the gathers start early and stay live
    limit = (in_order + unbounded) / 2
    report = schedule(prog, limit=limit)
    assert liveness(prog.graph, prog.local)[0] <= limit and "over the limit" not in report.summary
    assert prog.local.scheduled
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


def test_bottom_up_schedule_starts_a_big_collective_late_enough_to_leave_the_stream_free():
    """A big all-gather whose reader comes last, and a chain of small critical all-gathers. The
    top-down scheduler starts the big one at once and the chain waits behind it; the bottom-up
    one starts it just before the long matmul that covers it: it is hidden. Both orders
    are topological, priced by the same timeline, and `schedule` keeps the shorter."""
    from shardc.analysis.analyze import op_pricer
    from shardc.analysis.cost import timeline
    from shardc.ir.graph import Graph
    from shardc.partition.passes_schedule import list_schedule, reverse_schedule
    b = GraphBuilder("tail", {"x": 2})
    big = b.parameter("big", (1024, 1024), DType.f32)
    x = b.parameter("x", (1024, 1024), DType.f32)
    w = b.parameter("w", (2048, 2048), DType.f32)
    v = b.add(Op.NEG, [x])
    for _ in range(2):  # the critical chain: op, all-gather, slice back
        ag = b.add(Op.ALL_GATHER, [b.add(Op.EXP, [v])], axes=("x",), dim=0)
        v = b.add(Op.SLICE, [ag], start=(0, 0), limit=(1024, 1024), stride=(1, 1))
    wide = b.add(Op.CONCATENATE, [v, v], axis=0)  # [2048, 1024]
    long = b.add(Op.DOT_GENERAL, [w, wide], lhs_contract=(1,), rhs_contract=(0,))  # covers the big gather
    out = b.add(Op.ADD, [long, b.add(Op.ALL_GATHER, [big], axes=("x",), dim=0)])
    g = b.build([out])
    price = op_pricer("h200", Mesh(x=2))
    compute = sum(price(n) for n in g.nodes if n.op not in (Op.ALL_GATHER, Op.PARAMETER))

    def timed(order):
        pos = {n: i for i, n in enumerate(order)}
        assert sorted(map(id, order)) == sorted(map(id, g.nodes))
        assert all(pos[i] < pos[n] for n in order for i in n.inputs)
        new = Graph(order, g.inputs, g.outputs, g.output_names, "s", g.mesh_axes)
        new.scheduled = True
        return max(e.start + e.duration for e in timeline(new, seconds=price))
    top_down = timed(list_schedule(g, price, 1e12)[0])
    bottom_up = timed(reverse_schedule(g, price))
    chain = sum(price(n) for n in g.nodes if n.op is Op.ALL_GATHER and n is not out.inputs[1])
    # nothing can overlap the chain's gathers; top-down, the big one is exposed as well
    assert bottom_up - compute == pytest.approx(chain, rel=1e-6)
    assert top_down - compute > chain + 0.9 * price(out.inputs[1])  # (less what ran before the chain's first)


def test_engines_start_a_scheduled_collective_at_its_place():
    """Unscheduled: a collective starts as soon as its operand exists. Scheduled: where the
    scheduler put it (here after the two negations); its wait stays just before its reader."""
    from shardc.ir.graph import Graph
    from shardc.runtime.schedule import schedule as steps_of
    b = GraphBuilder("place", {"x": 2})
    x = b.parameter("x", (4,), DType.f32)
    n1 = b.add(Op.NEG, [x])
    n2 = b.add(Op.NEG, [n1])
    ag = b.add(Op.ALL_GATHER, [x], axes=("x",), dim=0)
    out = b.add(Op.MUL, [ag, b.add(Op.CONCATENATE, [n2, n2], axis=0)])
    g = b.build([out])
    plain = [(s.kind, s.node.op.value) for s in steps_of(g)]
    assert plain[:2] == [("start", "all_gather"), ("op", "neg")]
    g.scheduled = True
    placed = [(s.kind, s.node.op.value) for s in steps_of(g)]
    assert placed[:4] == [("op", "neg"), ("op", "neg"), ("start", "all_gather"), ("op", "concatenate")]
    assert placed[4:] == [("wait", "all_gather"), ("op", "mul")]


# ---- collective matmul ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,train", [("gpt2", False), ("llama", True)])
def test_collective_matmul_rings_are_exact(name, train):
    """TP + SP: every all-gather → matmul and matmul → reduce-scatter becomes a ring of
    permutes (both directions, and one) and the program still computes the same values; on the
    tiny zoo the cost model keeps them as they are (latency-bound: the loop does not pay)."""
    from shardc.partition.passes_collective_matmul import collective_matmul
    from shardc.partition.plans import sequence_parallel_specs
    m, g, args, ref = captured(name, train)
    specs = dict(m.tp_specs())
    specs.update(sequence_parallel_specs(g))
    auto = shardc.partition(g, Mesh(tp=4), specs)
    assert not any(c.kind == "collective_permute" for c in auto.collectives)
    for bidirectional in (False, True):
        prog = shardc.partition(g, Mesh(tp=4), specs, passes=())
        kinds = prog.bytes_by_kind()
        report = collective_matmul(prog, "always", bidirectional)
        permuted = prog.bytes_by_kind()["collective_permute"]
        if not train:  # every gather and scatter became k-1 = 3 permutes of one block (a quarter)
            assert permuted == 3 * (kinds["all_gather"] + kinds["reduce_scatter"]) // 4
        assert permuted > 0 and report.after > report.before
        assert all(n.attrs["ring"] for n in prog.local.nodes if n.op is Op.COLLECTIVE_PERMUTE)  # priced as rings
        for got, want in zip(prog.simulate(*args), ref):
            assert_close(got, want, 1e-5)
    with pytest.raises(ShardingError, match="mode"):
        collective_matmul(prog, "sometimes")

