"""What a pool rank receives: the per-device program and the compiled launch plan as plain data
(runtime/wire.py). A rank rebuilds the same steps over its copy of the program and loads the
kernels from their source through its own kernel cache; it never compiles."""
import copy
import pickle

import numpy as np

import shardc
import shardc.codegen
import shardc.testing
from shardc import DType, Mesh, Op, P, partition
from shardc.ir import GraphBuilder
from shardc.runtime.executable import Executable
from shardc.runtime.wire import graph_from_wire, graph_to_wire, plan_from_wire, plan_to_wire


def _mlp():
    b = GraphBuilder("mlp")
    x = b.parameter("x", (8, 16), DType.f32)
    w1 = b.parameter("w1", (16, 32), DType.f32)
    w2 = b.parameter("w2", (32, 16), DType.f32)
    h = b.add(Op.TANH, [b.add(Op.DOT_GENERAL, [x, w1], lhs_contract=(1,), rhs_contract=(0,))])
    y = b.add(Op.DOT_GENERAL, [h, w2], lhs_contract=(1,), rhs_contract=(0,))
    return b.build([b.add(Op.RESHAPE, [y], shape=(4, 32)), b.add(Op.REDUCE_SUM, [y], axes=(0, 1))])


def test_a_compiled_plan_travels_as_plain_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path / "parent"))
    g = _mlp()
    prog = partition(g, Mesh(dp=2, tp=2), {"x": P("dp", None), "w1": P(None, "tp"), "w2": P("tp", None)})
    exe = shardc.compile(prog)
    wire = pickle.loads(pickle.dumps((graph_to_wire(prog.local), plan_to_wire(exe))))

    # the rank: its own cache, and compiling is an error
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path / "rank"))
    monkeypatch.setattr(shardc.codegen, "compile", lambda *a, **k: (_ for _ in ()).throw(AssertionError("compiled")))
    local = graph_from_wire(wire[0])
    plan = plan_from_wire(wire[1], local)

    index = {n: i for i, n in enumerate(prog.local.nodes)}
    rank_index = {n: i for i, n in enumerate(local.nodes)}
    assert [s.step for s in plan] == [s.step for s in exe.plan]
    assert {s.step for s in plan} >= {"kernel", "collective"}
    for mine, theirs in zip(plan, exe.plan):
        assert [rank_index[n] for n in mine.reads] == [index[n] for n in theirs.reads]
        assert [rank_index[n] for n in mine.writes] == [index[n] for n in theirs.writes]
        if mine.step == "kernel":
            k, pk = mine.kernel, theirs.kernel
            assert (k.name, k.key, k.source, k.axes) == (pk.name, pk.key, pk.source, pk.axes)
            assert k.config(True) == pk.config(True)
            assert k.path.is_file() and str(tmp_path / "rank") in str(k.path)

    # the received plan runs and gives what the parent's gives
    args = [np.random.default_rng(0).standard_normal(p.shape).astype(np.float32) for p in g.inputs]
    rank_prog = copy.copy(prog)
    rank_prog.local = local
    got = Executable(rank_prog, plan, "triton").run_interpreted(*args)
    for a, b, want in zip(got, exe.run_interpreted(*args), g.evaluate(*args)):
        assert np.array_equal(a, b)
        assert shardc.testing.rel_err(a, want) <= 1e-5
