"""The bad-input corpus: every entry gets a shardc.Error that names what is wrong (never an
internal traceback, a hang or a wrong answer)."""
from pathlib import Path

import numpy as np
import pytest

import shardc
from shardc import Error, IRError, Mesh, P, ShardingError
from shardc.ir import DType, GraphBuilder, Op, parse_graph

CORPUS = Path(__file__).parent.parent / "corpus" / "bad_ir"
EXPECTED = {
    "undefined_operand.ir": "%7 is used before it is defined",
    "bad_reduce_axis.ir": "bad axes",
    "dtype_mismatch.ir": "operand dtypes differ",
    "bad_reshape.ir": "cannot reshape",
    "truncated_attrs.ir": "line 3",
    "bad_mesh.ir": "bad mesh axis 'tp=four'",
    "unnamed_parameter.ir": "a parameter needs a name",
    "duplicate_id.ir": "%0 is defined twice",
    "bad_dot_dims.ir": "bad dims",
    "binary_junk.ir": "expected 'graph NAME",
}


def test_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.glob("*.ir")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_ir_text(name):
    with pytest.raises(IRError) as e:
        parse_graph((CORPUS / name).read_text(errors="replace"))
    assert EXPECTED[name] in str(e.value)


def tiny_graph():
    b = GraphBuilder()
    x = b.parameter("x", (4, 3), DType.f32)
    return b.build([b.add(Op.TANH, [x])])


@pytest.mark.parametrize("args, msg", [
    ((), "takes 1 input arrays"),
    ((np.ones((3, 4), np.float32),), "expects shape [4, 3]"),
    ((np.ones((4, 3), np.int32),), "expects f32, got int32"),
])
def test_bad_arguments(args, msg):
    g = tiny_graph()
    for run in (g.evaluate, shardc.partition(g, Mesh(dp=2), {"x": P("dp")}).simulate):
        with pytest.raises(IRError) as e:
            run(*args)
        assert msg in str(e.value)


@pytest.mark.parametrize("make, msg", [
    (lambda: Mesh({"not an axis": 2}), "must be an identifier"),
    (lambda: Mesh({}), "at least one axis"),
    (lambda: P(3), "must be None, an axis name"),
    (lambda: P("dp", priority=-1), "non-negative"),
    (lambda: shardc.partition(tiny_graph(), Mesh(dp=2), {"x": P(("dp", "dp"))}), "used twice"),
    (lambda: shardc.partition(tiny_graph(), Mesh(dp=2), {"x": P("dp", None, "dp")}), "3 entries for a tensor of rank 2"),
    (lambda: shardc.partition(tiny_graph(), Mesh(dp=2), {3: P("dp")}), "must be a name or glob"),
])
def test_bad_meshes_and_specs(make, msg):
    with pytest.raises(ShardingError) as e:
        make()
    assert msg in str(e.value)


def test_an_already_partitioned_program_is_refused():
    prog = shardc.partition(tiny_graph(), Mesh(dp=2), {"x": P(None, "dp"), "out": P()})
    assert any(c.kind == "all_gather" for c in prog.collectives)
    with pytest.raises(ShardingError, match="already partitioned"):
        shardc.partition(prog.local, Mesh(dp=2))


def test_errors_share_one_base_class():
    for cls in (IRError, ShardingError, shardc.UnsupportedOpError):
        assert issubclass(cls, Error)
