"""`check`: per-output errors against the unsharded reference; a wrong result raises a
shardc.Error whose message is the table of errors."""
import numpy as np
import pytest

from shardc import Error, Mesh, P, partition
from shardc.ir import DType, Op
from shardc.ir.graph import GraphBuilder
from shardc.partition import SpmdProgram
from shardc.runtime import CheckError, OutputError, check


def _graph():
    b = GraphBuilder("g")
    x = b.parameter("x", (8, 4), DType.f32)
    w = b.parameter("w", (4, 6), DType.f32)
    y = b.add(Op.DOT_GENERAL, [x, w], lhs_contract=(1,), rhs_contract=(0,))
    return b.build([y, b.add(Op.REDUCE_MAX, [y], axes=(1,))], ["y", "ymax"])


def _args():
    r = np.random.default_rng(3)
    return r.standard_normal((8, 4)).astype(np.float32), r.standard_normal((4, 6)).astype(np.float32)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_report_per_output(engine, request):
    if engine == "torch":
        request.getfixturevalue("torch_pool")
    prog = partition(_graph(), Mesh(dp=2, tp=2), {"x": P("dp", None), "w": P(None, "tp")})
    report = check(prog, *_args(), engine=engine)
    assert [r.name for r in report] == ["y", "ymax"]
    assert all(isinstance(r, OutputError) and r.ok and r.max_rel <= r.tol == 1e-5 for r in report)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_mismatch_raises_with_a_table(engine, request):
    if engine == "torch":
        request.getfixturevalue("torch_pool")
    good = partition(_graph(), Mesh(dp=2, tp=2), {"x": P("dp", None), "w": P(None, "tp")})
    # the same program with the first output's local value doubled: a wrong runtime result
    loc = good.local
    b = GraphBuilder("bad", loc.mesh_axes)
    b.nodes, b.inputs = list(loc.nodes), list(loc.inputs)
    y = loc.outputs[0]
    two = b.add(Op.BROADCAST, [b.constant(2.0, DType.f32)], shape=y.shape, dims=())
    bad_local = b.build([b.add(Op.MUL, [y, two]), loc.outputs[1]], loc.output_names)
    bad = SpmdProgram(good.graph, good.mesh, bad_local, good.shardings, good.origins,
                      good.input_shardings, good.output_shardings, [])
    with pytest.raises(CheckError) as info:
        check(bad, *_args(), engine=engine)
    msg = str(info.value)
    assert isinstance(info.value, Error)
    assert "max rel" in msg and "MISMATCH" in msg and "1 of 2 outputs" in msg
    assert [r.ok for r in info.value.report] == [False, True]


def test_unknown_engine():
    prog = partition(_graph(), Mesh(dp=2), {"x": P("dp", None)})
    with pytest.raises(Error, match="unknown engine"):
        check(prog, *_args(), engine="tpu")
