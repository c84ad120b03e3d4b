"""Mixture-of-experts as real models write it: the grouped matmul (ragged_dot) and the ragged
all-to-all in the IR, their factor rules, and grouped matmuls partitioned over experts, rows and
the contraction: simulate == evaluate exactly, and expert weights are never gathered."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.ir import DType, GraphBuilder, Op

R = np.random.default_rng(7)


def _grouped_graph():
    """y = ragged_dot(x, w, sizes) and its weight gradient ragged_dot(xᵀ, dy, sizes) (contract)."""
    E, m, k, n = 4, 12, 8, 6
    b = GraphBuilder("grouped", {})
    x = b.parameter("x", (m, k), DType.f32)
    w = b.parameter("w", (E, k, n), DType.f32)
    s = b.parameter("sizes", (E,), DType.i32)
    dy = b.parameter("dy", (m, n), DType.f32)
    y = b.add(Op.RAGGED_DOT, [x, w, s])
    dw = b.add(Op.RAGGED_DOT, [b.add(Op.TRANSPOSE, [x], perm=(1, 0)), dy, s], mode="contract")
    g = b.build([y, dw])
    vals = [R.standard_normal((m, k)).astype(np.float32), R.standard_normal((E, k, n)).astype(np.float32),
            np.array([3, 0, 5, 2], np.int32), R.standard_normal((m, n)).astype(np.float32)]
    return g, vals


def test_ragged_dot_evaluates_group_by_group():
    g, (x, w, s, dy) = _grouped_graph()
    y, dw = g.evaluate(x, w, s, dy)
    ends = np.cumsum(s)
    want = np.zeros_like(y)
    for e in range(4):
        lo, hi = ends[e] - s[e], ends[e]
        want[lo:hi] = x[lo:hi] @ w[e]
        np.testing.assert_allclose(dw[e], x[lo:hi].T @ dy[lo:hi], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y[ends[-1]:], 0)  # rows past the groups
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axes,specs", [
    ({"ep": 4}, {"w": P("ep", None, None)}),
    ({"ep": 4}, {"x": P("ep", None), "dy": P("ep", None)}),
    ({"dp": 2, "ep": 2}, {"x": P("dp", None), "dy": P("dp", None), "w": P("ep", None, None)}),
    ({"ep": 2, "tp": 2}, {"w": P("ep", None, "tp"), "x": P(None, "tp")}),
    ({"ep": 4}, {"w": P("ep", None, None), "out[1]": P("ep", None, None)}),
    ({"ep": 3}, {"w": P("ep", None, None), "x": P("ep", None)}),  # uneven: 4 experts, 12 rows over 3
], ids=["experts", "rows", "rows-dp-experts-ep", "experts-tp", "grad-experts", "uneven"])
def test_grouped_matmul_partitions_exactly(axes, specs):
    g, vals = _grouped_graph()
    prog = shardc.partition(g, Mesh(axes), specs)
    for got, want in zip(prog.simulate(*vals), g.evaluate(*vals)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not any(c.kind == "all_gather" and c.tensor == "w" for c in prog.collectives), prog.ledger()
