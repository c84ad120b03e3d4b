"""The engines' op tables against the numpy evaluator, op by op: every op of the closed enum has an
entry in the torch and the JAX table (or needs a rank/mesh), and every entry agrees with
ir/evaluate.py on edge cases: integer division/remainder by zero and of negatives, half floats,
out-of-range gather/scatter indices, duplicate scatter indices, bools, empty reduction axes."""
import jax
import numpy as np
import pytest

from shardc.ir import DType, Op
from shardc.ir.evaluate import eval_node
from shardc.ir.graph import GraphBuilder
from shardc.ir.ops import BINARY, COMPARE, FLOAT_ONLY, UNARY
from shardc.runtime.jax_exec import JAX_OPS, NEEDS_MESH, jax_node
from shardc.runtime.torch_ops import NEEDS_RANK, TORCH_OPS, to_numpy, to_torch, torch_node
from shardc.testing import rel_err

R = np.random.default_rng(0)


def arr(dtype: DType, shape, lo=-3.0, hi=3.0):
    if dtype is DType.bool:
        return R.random(shape) < 0.5
    if dtype.is_int:
        return R.integers(int(lo), int(hi) + 1, shape).astype(dtype.np)
    return R.uniform(lo, hi, shape).astype(np.float32).astype(dtype.np)


def cases():
    """(label, op, [(dtype, operand array)], attrs, out_shape, out_dtype) per case."""
    out = []
    f32, bf16, f16, i32, i64, b = DType.f32, DType.bf16, DType.f16, DType.i32, DType.i64, DType.bool
    for op in sorted(UNARY, key=lambda o: o.value):  # a set: sorted so every process collects one order
        if op is Op.NOT:
            for dt in (b, i32):
                out.append((op.value, op, [arr(dt, (3, 4))], {}))
            continue
        positive = op in (Op.LOG, Op.SQRT, Op.RSQRT, Op.LOG1P)
        for dt in (f32, bf16, f16):
            out.append((f"{op.value}-{dt}", op, [arr(dt, (3, 4), 0.1 if positive else -3, 3)], {}))
        if op not in FLOAT_ONLY:
            out.append((f"{op.value}-i32", op, [arr(i32, (3, 4), -5, 5)], {}))
    ints = np.array([[7, -7, 7, -7, 0, 5], [3, 3, -3, -3, 0, 0]], np.int32)
    for op in sorted(BINARY | COMPARE, key=lambda o: o.value):
        if op in (Op.AND, Op.OR, Op.XOR):
            for dt in (b, i32):
                out.append((f"{op.value}-{dt}", op, [arr(dt, (3, 4)), arr(dt, (3, 4))], {}))
        elif op in (Op.SHL, Op.SHR):
            out.append((op.value, op, [arr(i32, (3, 4), -100, 100), arr(i32, (3, 4), 0, 20)], {}))
        elif op is Op.POW:
            out.append((op.value, op, [arr(f32, (3, 4), 0.1, 3), arr(f32, (3, 4))], {}))
        else:
            for dt in (f32, bf16):
                out.append((f"{op.value}-{dt}", op, [arr(dt, (3, 4)), arr(dt, (3, 4))], {}))
            out.append((f"{op.value}-i32", op, [ints[0], ints[1]], {}))
            out.append((f"{op.value}-i64", op, [ints[0].astype(np.int64), ints[1].astype(np.int64)], {}))
    out += [
        ("select", Op.SELECT, [arr(b, (3, 4)), arr(f32, (3, 4)), arr(f32, (3, 4))], {}),
        ("cast-f32-i32", Op.CAST, [arr(f32, (3, 4), -9, 9)], {"to": i32}),
        ("cast-f32-bf16", Op.CAST, [arr(f32, (3, 4))], {"to": bf16}),
        ("cast-f32-bool", Op.CAST, [np.array([0.0, -0.0, 1.5, -2.0], np.float32)], {"to": b}),
        ("cast-bool-f32", Op.CAST, [arr(b, (5,))], {"to": f32}),
        ("cast-i32-i64", Op.CAST, [arr(i32, (5,))], {"to": i64}),
        ("broadcast", Op.BROADCAST, [arr(f32, (3, 1))], {"shape": (2, 3, 4), "dims": (1, 2)}),
        ("reshape", Op.RESHAPE, [arr(f32, (3, 4))], {"shape": (2, 6)}),
        ("transpose", Op.TRANSPOSE, [arr(f32, (2, 3, 4))], {"perm": (2, 0, 1)}),
        ("slice", Op.SLICE, [arr(f32, (7, 6))], {"start": (1, 0), "limit": (7, 5), "stride": (2, 3)}),
        ("concatenate", Op.CONCATENATE, [arr(f32, (2, 3)), arr(f32, (2, 1)), arr(f32, (2, 2))], {"axis": 1}),
        ("pad", Op.PAD, [arr(f32, (2, 3))], {"low": (1, 0), "high": (0, 2), "value": -1.5}),
        ("pad-bool", Op.PAD, [arr(b, (2, 3))], {"low": (1, 1), "high": (1, 0), "value": True}),
        ("gather", Op.GATHER, [arr(f32, (5, 3)), np.array([[0, 4], [-2, 9], [2, 2]], np.int32)], {"axis": 0}),
        ("gather-axis1", Op.GATHER, [arr(f32, (2, 5, 3)), np.array([1, 7, -1, 0], np.int64)], {"axis": 1}),
        ("gather-batch", Op.GATHER, [arr(f32, (2, 5, 3)), np.array([[1, 4], [0, 5]], np.int32)],
         {"axis": 1, "batch_dims": 1}),
        ("gather-bf16", Op.GATHER, [arr(bf16, (5, 3)), np.array([3, 3, 0], np.int32)], {"axis": 0}),
        ("scatter", Op.SCATTER, [arr(f32, (5, 3)), np.array([1, 1, 7, -1, 4], np.int32), arr(f32, (5, 3))], {"axis": 0}),
        ("scatter-batch", Op.SCATTER, [arr(f32, (2, 4, 3)), np.array([[0, 0, 3], [9, 2, 2]], np.int32),
                                       arr(f32, (2, 3, 3))], {"axis": 1, "batch_dims": 1}),
        ("scatter-bool", Op.SCATTER, [arr(b, (4, 2)), np.array([0, 3, 3], np.int32), arr(b, (3, 2))], {"axis": 0}),
        ("scatter-i32", Op.SCATTER, [arr(i32, (4, 2)), np.array([0, 3, 3], np.int32), arr(i32, (3, 2))], {"axis": 0}),
        ("scatter-bf16", Op.SCATTER, [arr(bf16, (4, 2)), np.array([0, 3, 3], np.int32), arr(bf16, (3, 2))], {"axis": 0}),
        ("dot", Op.DOT_GENERAL, [arr(f32, (2, 3, 4)), arr(f32, (2, 4, 5))],
         {"lhs_batch": (0,), "rhs_batch": (0,), "lhs_contract": (2,), "rhs_contract": (1,)}),
        ("dot-2contract", Op.DOT_GENERAL, [arr(f32, (3, 4, 2)), arr(f32, (2, 5, 4))],
         {"lhs_batch": (), "rhs_batch": (), "lhs_contract": (1, 2), "rhs_contract": (2, 0)}),
        ("dot-bf16", Op.DOT_GENERAL, [arr(bf16, (4, 8)), arr(bf16, (8, 3))],
         {"lhs_contract": (1,), "rhs_contract": (0,)}),
        ("dot-i32", Op.DOT_GENERAL, [arr(i32, (4, 8)), arr(i32, (8, 3))], {"lhs_contract": (1,), "rhs_contract": (0,)}),
        # grouped matmul: an empty group, rows past the groups, a sum past the rows, an offset
        ("ragged-rows", Op.RAGGED_DOT, [arr(f32, (7, 4)), arr(f32, (3, 4, 5)), np.array([2, 0, 3], np.int32)], {}),
        ("ragged-rows-over", Op.RAGGED_DOT, [arr(f32, (5, 4)), arr(f32, (3, 4, 2)), np.array([4, 0, 3], np.int64)], {}),
        ("ragged-rows-bf16", Op.RAGGED_DOT, [arr(bf16, (6, 4)), arr(bf16, (2, 4, 3)), np.array([1, 5], np.int32)], {}),
        ("ragged-rows-offset", Op.RAGGED_DOT, [arr(f32, (8, 4)), arr(f32, (2, 4, 3)), np.array([1, 2, 3, 1], np.int32),
                                              np.array(1, np.int32)], {}),
        ("ragged-contract", Op.RAGGED_DOT, [arr(f32, (3, 7)), arr(f32, (7, 4)), np.array([2, 0, 4], np.int32)],
         {"mode": "contract"}),
        ("ragged-contract-offset", Op.RAGGED_DOT, [arr(f32, (3, 7)), arr(f32, (7, 4)), np.array([2, 1, 3, 1], np.int32),
                                                  np.array(2, np.int32)], {"mode": "contract", "groups": 2}),
    ]
    for op in (Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN):
        for dt in (f32, bf16, i32, b):
            out.append((f"{op.value}-{dt}", op, [arr(dt, (3, 4, 5))], {"axes": (0, 2)}))
        out.append((f"{op.value}-none", op, [arr(f32, (3, 4))], {"axes": ()}))
    return out


def leaves():
    return [
        ("constant-array", Op.CONSTANT, {"value": arr(DType.f32, (2, 3))}, (2, 3), DType.f32),
        ("constant-splat", Op.CONSTANT, {"value": 2.5}, (2, 3), DType.bf16),
        ("constant-bool", Op.CONSTANT, {"value": True}, (2,), DType.bool),
        ("iota", Op.IOTA, {"dimension": 1}, (2, 3, 4), DType.i32),
        ("iota-f32", Op.IOTA, {"dimension": 0}, (3, 2), DType.f32),
        ("iota-i64", Op.IOTA, {"dimension": 0}, (3,), DType.i64),
    ]


def _build(op, operands, attrs):
    from shardc.ir.dtypes import from_numpy
    b = GraphBuilder()
    params = [b.parameter(f"x{i}", a.shape, from_numpy(a.dtype)) for i, a in enumerate(operands)]
    return b.add(op, params, **attrs)


def _compare(label, node, got, want):
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, label
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=label)
    else:
        tol = {np.dtype(np.float32): 2e-6}.get(want.dtype, 1e-2)  # halves: one rounding apart
        assert rel_err(got, want) <= tol, f"{label}: {rel_err(got, want)}"


ALL = cases()


def test_tables_cover_the_op_enum():
    missing_torch = [op for op in Op if op not in TORCH_OPS and op not in NEEDS_RANK]
    missing_jax = [op for op in Op if op not in JAX_OPS and op not in NEEDS_MESH]
    assert not missing_torch and not missing_jax, (missing_torch, missing_jax)
    tested = {c[1] for c in ALL} | {c[1] for c in leaves()}
    assert set(TORCH_OPS) <= tested, set(TORCH_OPS) - tested


@pytest.mark.parametrize("label,op,operands,attrs", ALL, ids=[c[0] for c in ALL])
def test_torch_and_jax_ops_match_the_evaluator(label, op, operands, attrs):
    node = _build(op, operands, dict(attrs))
    want = eval_node(node, [np.asarray(a) for a in operands])
    _compare(f"torch {label}", node, to_numpy(torch_node(node, [to_torch(a) for a in operands])), want)
    with jax.enable_x64(True):
        got = jax_node(node, [jax.numpy.asarray(a) for a in operands])
    _compare(f"jax {label}", node, got, want)


@pytest.mark.parametrize("label,op,attrs,shape,dtype", leaves(), ids=[c[0] for c in leaves()])
def test_leaves(label, op, attrs, shape, dtype):
    b = GraphBuilder()
    node = b.add(op, (), out_shape=shape, out_dtype=dtype, **attrs)
    want = eval_node(node, [])
    _compare(f"torch {label}", node, to_numpy(torch_node(node, [])), want)
    with jax.enable_x64(True):
        _compare(f"jax {label}", node, jax_node(node, []), want)
