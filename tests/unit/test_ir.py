"""The IR on its own: printer ↔ parser, verifier, evaluator (every op's entry in each stage's table:
test_op_completeness.py)."""
import numpy as np
import pytest

from shardc import IRError
from shardc.ir import EVAL, RULES, DType, GraphBuilder, Op, parse_graph, print_graph, verify
from shardc.ir.ops import BINARY, COLLECTIVES, COMPARE, UNARY


@pytest.mark.parametrize("op", sorted(UNARY | BINARY | COMPARE, key=lambda o: o.value), ids=lambda o: o.value)
def test_elementwise_matches_numpy(op, rng):
    ints = op in {Op.NOT, Op.AND, Op.OR, Op.XOR, Op.SHL, Op.SHR}
    b = GraphBuilder()
    dt = DType.i32 if ints else DType.f32
    x, y = b.parameter("x", (3, 5), dt), b.parameter("y", (3, 5), dt)
    g = b.build([b.add(op, [x] if op in UNARY else [x, y])])
    if ints:
        a, c = rng.integers(-50, 50, (3, 5)).astype(np.int32), rng.integers(0, 5, (3, 5)).astype(np.int32)
    else:
        a, c = rng.uniform(0.1, 2.0, (3, 5)).astype(np.float32), rng.uniform(0.1, 2.0, (3, 5)).astype(np.float32)
    import scipy.special as sp
    ref = {Op.NEG: lambda: -a, Op.ABS: lambda: np.abs(a), Op.SIGN: lambda: np.sign(a), Op.EXP: lambda: np.exp(a),
           Op.LOG: lambda: np.log(a), Op.LOG1P: lambda: np.log1p(a), Op.SQRT: lambda: np.sqrt(a),
           Op.RSQRT: lambda: 1 / np.sqrt(a), Op.TANH: lambda: np.tanh(a), Op.LOGISTIC: lambda: 1 / (1 + np.exp(-a)),
           Op.ERF: lambda: sp.erf(a), Op.SIN: lambda: np.sin(a), Op.COS: lambda: np.cos(a),
           Op.FLOOR: lambda: np.floor(a), Op.CEIL: lambda: np.ceil(a), Op.ROUND: lambda: np.round(a),
           Op.NOT: lambda: ~a, Op.ADD: lambda: a + c, Op.SUB: lambda: a - c, Op.MUL: lambda: a * c,
           Op.DIV: lambda: a / c, Op.REM: lambda: np.fmod(a, c), Op.POW: lambda: a ** c,
           Op.MAX: lambda: np.maximum(a, c), Op.MIN: lambda: np.minimum(a, c), Op.AND: lambda: a & c,
           Op.OR: lambda: a | c, Op.XOR: lambda: a ^ c, Op.SHL: lambda: a << c, Op.SHR: lambda: a >> c,
           Op.EQ: lambda: a == c, Op.NE: lambda: a != c, Op.LT: lambda: a < c, Op.LE: lambda: a <= c,
           Op.GT: lambda: a > c, Op.GE: lambda: a >= c}[op]()
    (got,) = g.evaluate(a, c)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_integer_div_and_rem_truncate_like_xla():
    b = GraphBuilder()
    x, y = b.parameter("x", (6,), DType.i32), b.parameter("y", (6,), DType.i32)
    g = b.build([b.add(Op.DIV, [x, y]), b.add(Op.REM, [x, y])])
    q, r = g.evaluate(np.array([7, -7, 7, -7, 5, 3], np.int32), np.array([2, 2, -2, -2, 0, 3], np.int32))
    assert q.tolist() == [3, -3, -3, 3, -1, 1]
    assert r.tolist()[:4] == [1, -1, 1, -1]


def test_layout_ops_and_dot_general(rng):
    b = GraphBuilder()
    x = b.parameter("x", (2, 3, 4), DType.f32)
    w = b.parameter("w", (2, 4, 5), DType.f32)
    idx = b.parameter("idx", (2, 6), DType.i64)
    dot = b.add(Op.DOT_GENERAL, [x, w], lhs_batch=(0,), rhs_batch=(0,), lhs_contract=(2,), rhs_contract=(1,))
    tr = b.add(Op.TRANSPOSE, [x], perm=(2, 0, 1))
    bc = b.add(Op.BROADCAST, [b.add(Op.REDUCE_SUM, [x], axes=(1,))], shape=(2, 3, 4), dims=(0, 2))
    g_ = b.add(Op.GATHER, [x, idx], axis=2, batch_dims=1)
    sc = b.add(Op.SCATTER, [x, idx, g_], axis=2, batch_dims=1)
    pad = b.add(Op.PAD, [x], low=(0, 1, 2), high=(1, 0, 0), value=7.0)
    g = verify(b.build([dot, tr, bc, g_, sc, pad]))
    X, W = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((2, 4, 5)).astype(np.float32)
    I = rng.integers(0, 4, (2, 6))
    out = g.evaluate(X, W, I)
    np.testing.assert_allclose(out[0], np.einsum("bmk,bkn->bmn", X, W), rtol=1e-5, atol=1e-6)  # sums of 4 f32 products: near-cancelling entries need atol
    np.testing.assert_array_equal(out[1], X.transpose(2, 0, 1))
    np.testing.assert_allclose(out[2], np.broadcast_to(X.sum(1, keepdims=True), X.shape), rtol=1e-6)
    want_g = np.stack([X[k][:, I[k]] for k in range(2)])
    np.testing.assert_array_equal(out[3], want_g)
    want_s = X.copy()
    for k in range(2):
        np.add.at(want_s[k], (slice(None), I[k]), want_g[k])
    np.testing.assert_allclose(out[4], want_s, rtol=1e-6)
    np.testing.assert_array_equal(out[5], np.pad(X, [(0, 1), (1, 0), (2, 0)], constant_values=7.0))


def test_bf16_computes_in_f32_and_rounds_once(rng):
    b = GraphBuilder()
    x = b.parameter("x", (64,), DType.bf16)
    g = b.build([b.add(Op.REDUCE_SUM, [x], axes=(0,))])
    X = rng.standard_normal(64).astype(DType.bf16.np)
    (got,) = g.evaluate(X)
    assert got.dtype == DType.bf16.np
    assert got == X.astype(np.float32).sum(dtype=np.float32).astype(DType.bf16.np)


def test_printer_roundtrips_special_values():
    b = GraphBuilder("g", {"x": 2})
    c = b.constant(np.array([np.inf, -np.inf, 1e-30, -0.5], np.float32), DType.f32)
    with b.loc("weird \"file\".py:7"):
        p = b.add(Op.PAD, [c], low=(1,), high=(0,), value=float("-inf"), name="padded")
    g = b.build([p, c], ["a['x']", "b"])
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert g2.nodes[-1].source == "weird \"file\".py:7" and g2.nodes[-1].name == "padded"
    np.testing.assert_array_equal(g2.evaluate()[0], g.evaluate()[0])


@pytest.mark.parametrize("text, msg", [
    ("", "empty"),
    ("graph g {\n  return %0 \"out\"\n}", "before it is defined"),
    ("graph g {\n  %0 \"x\": f32[2] = parameter()\n  %1: f32[3] = exp(%0)\n  return %1 \"out\"\n}", "declared f32[3]"),
    ("graph g {\n  %0 \"x\": f32[2] = parameter()\n  %1: f32[2] = frobnicate(%0)\n  return %1 \"out\"\n}", "unknown op 'frobnicate'"),
    ("graph g {\n  %0 \"x\": q8[2] = parameter()\n  return %0 \"out\"\n}", "unknown dtype 'q8'"),
    ("graph g {\n  %0 \"x\": f32[2,3] = parameter()\n  %1: f32[3,2] = transpose(%0) {perm=[0, 0]}\n  return %1 \"out\"\n}", "not a permutation"),
    ("graph g {\n  %0 \"x\": f32[2] = parameter()\n  return %0 \"out\"\n", "closing"),
    ("graph g {\n  %0 \"x\": f32[2] = parameter()\n  %1: f32[2] = all_reduce(%0) {axes=[\"tp\"]}\n  return %1 \"out\"\n}", "not in the graph's mesh"),
])
def test_parser_rejects_malformed_text_with_a_clear_error(text, msg):
    with pytest.raises(IRError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        parse_graph(text)


def test_shape_rules_reject_bad_ops():
    b = GraphBuilder()
    x = b.parameter("x", (2, 3), DType.f32)
    y = b.parameter("y", (3, 2), DType.f32)
    with pytest.raises(IRError, match="shapes differ"):
        b.add(Op.ADD, [x, y])
    with pytest.raises(IRError, match="lhs dim 1"):
        b.add(Op.DOT_GENERAL, [x, x], lhs_contract=(1,), rhs_contract=(0,))
    with pytest.raises(IRError, match="cannot reshape"):
        b.add(Op.RESHAPE, [x], shape=(4,))
    with pytest.raises(IRError, match="needs float"):
        b.add(Op.EXP, [b.parameter("i", (2,), DType.i32)])


def test_evaluate_checks_arguments():
    b = GraphBuilder()
    x = b.parameter("x", (2, 3), DType.f32)
    g = b.build([b.add(Op.EXP, [x])])
    with pytest.raises(IRError, match="takes 1 input"):
        g.evaluate()
    with pytest.raises(IRError, match="expects shape"):
        g.evaluate(np.ones((3, 2), np.float32))
