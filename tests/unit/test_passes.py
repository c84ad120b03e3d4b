"""Collective passes: each keeps simulate == evaluate, moves the same bytes, and says what it did."""
import functools

import numpy as np
import pytest

import shardc
from shardc import Mesh, ShardingError, models
from shardc.ir import DType, GraphBuilder, Op
from shardc.partition.passes import combine_all_reduces
from shardc.testing import assert_close

LAYOUTS = {"dp": (dict(dp=4), False, "dp"), "fsdp": (dict(dp=4), False, "fsdp"),
           "2d": (dict(dp=2, tp=2), True, "dp")}


@functools.lru_cache(maxsize=None)
def captured(name):
    m = models.get(name + ":tiny")
    g, args = m.capture(True, "jax", 4, lr=0.1)
    return m, g, args, g.evaluate(*args)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["mlp", "gpt2", "llama", "moe"])
def test_combined_program_is_exact_and_moves_the_same_bytes(name, layout):
    m, g, args, ref = captured(name)
    axes, tp, plan = LAYOUTS[layout]
    specs = m.tp_specs() if tp else {}
    plain = shardc.partition(g, Mesh(axes), specs, plan, passes=())
    prog = shardc.partition(g, Mesh(axes), specs, plan)
    assert sum(c.bytes for c in prog.collectives) == sum(c.bytes for c in plain.collectives)
    report = prog.passes[0]
    assert report.name == "combine" and report.before == len(plain.collectives) == len(plain.collectives)
    assert report.after == len(prog.collectives) <= report.before
    if plan == "dp":  # the data-parallel gradients become one bucket
        assert sum(c.kind == "all_reduce" and c.axes == ("dp",) for c in prog.collectives) == 1
    # every collective in the program has its record, and no record lost its node
    assert sorted(id(c.node) for c in prog.collectives) == sorted(
        id(n) for n in prog.local.nodes if n.op in (Op.ALL_REDUCE, Op.ALL_GATHER, Op.REDUCE_SCATTER,
                                                     Op.ALL_TO_ALL, Op.COLLECTIVE_PERMUTE))
    for got, want in zip(prog.simulate(*args), ref):
        assert_close(got, want, 1e-5)


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
    assert reduces[0] in _ancestors(reduces[1])
    order = {n: i for i, n in enumerate(prog.local.nodes)}
    assert all(order[i] < order[n] for n in prog.local.nodes for i in n.inputs)  # still topological


def _ancestors(n):
    seen, todo = set(), list(n.inputs)
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo.extend(x.inputs)
    return seen


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
