"""One small graph per op of the closed enum, for tests that walk the enum (test_ir, the op
completeness test). Elementwise ops are drawn from their categories in ir/ops.py, so a new one
needs no entry here; any other new op needs a line in SAMPLES."""
import numpy as np

from shardc.ir import DType, GraphBuilder, Op
from shardc.ir.ops import BINARY, COMPARE, INT_OR_BOOL_ONLY, UNARY

MESH = {"dp": 2, "tp": 4}

# op → how to add it to a builder `b` given an f32 (4, 8) parameter `f`
SAMPLES = {
    Op.PARAMETER: lambda b, f: f,
    Op.CONSTANT: lambda b, f: b.constant(np.arange(6.0).reshape(2, 3), DType.f32),
    Op.IOTA: lambda b, f: b.add(Op.IOTA, [], out_shape=(3, 5), out_dtype=DType.i64, dimension=1),
    Op.SELECT: lambda b, f: b.add(Op.SELECT, [b.add(Op.LT, [f, f]), f, f]),
    Op.CAST: lambda b, f: b.add(Op.CAST, [f], to=DType.bf16),
    Op.BROADCAST: lambda b, f: b.add(Op.BROADCAST, [f], shape=(2, 4, 8), dims=(1, 2)),
    Op.RESHAPE: lambda b, f: b.add(Op.RESHAPE, [f], shape=(8, 4)),
    Op.TRANSPOSE: lambda b, f: b.add(Op.TRANSPOSE, [f], perm=(1, 0)),
    Op.SLICE: lambda b, f: b.add(Op.SLICE, [f], start=(1, 0), limit=(4, 8), stride=(1, 3)),
    Op.CONCATENATE: lambda b, f: b.add(Op.CONCATENATE, [f, f], axis=1),
    Op.PAD: lambda b, f: b.add(Op.PAD, [f], low=(1, 0), high=(0, 2), value=-1.5),
    Op.GATHER: lambda b, f: b.add(Op.GATHER, [f, b.constant(np.array([3, 0, 0]), DType.i32)], axis=1),
    Op.SCATTER: lambda b, f: b.add(Op.SCATTER, [f, b.constant(np.array([3, 0, 0]), DType.i32),
                                                b.add(Op.SLICE, [f], start=(0, 0), limit=(4, 3))], axis=1),
    Op.REDUCE_SUM: lambda b, f: b.add(Op.REDUCE_SUM, [f], axes=(1,)),
    Op.REDUCE_MAX: lambda b, f: b.add(Op.REDUCE_MAX, [f], axes=(1,)),
    Op.REDUCE_MIN: lambda b, f: b.add(Op.REDUCE_MIN, [f], axes=(1,)),
    Op.DOT_GENERAL: lambda b, f: b.add(Op.DOT_GENERAL, [f, f], lhs_contract=(1,), rhs_contract=(1,)),
    Op.RAGGED_DOT: lambda b, f: b.add(Op.RAGGED_DOT, [f, b.add(Op.RESHAPE, [b.add(Op.CONCATENATE, [f, f], axis=0)],
                                                              shape=(2, 8, 4)),
                                                      b.constant(np.array([1, 2]), DType.i32)]),
    Op.AXIS_INDEX: lambda b, f: b.add(Op.AXIS_INDEX, [], axis="tp"),
    Op.ALL_REDUCE: lambda b, f: b.add(Op.ALL_REDUCE, [f], axes=("dp",), reduce="max"),
    Op.ALL_GATHER: lambda b, f: b.add(Op.ALL_GATHER, [f], axes=("tp",), dim=1),
    Op.REDUCE_SCATTER: lambda b, f: b.add(Op.REDUCE_SCATTER, [f], axes=("tp",), dim=1),
    Op.ALL_TO_ALL: lambda b, f: b.add(Op.ALL_TO_ALL, [f], axes=("tp",), split_dim=1, concat_dim=0),
    Op.COLLECTIVE_PERMUTE: lambda b, f: b.add(Op.COLLECTIVE_PERMUTE, [f], axes=("dp", "tp"),
                                              pairs=((0, 1), (1, 0), (7, 2))),
    Op.RAGGED_ALL_TO_ALL: lambda b, f: b.add(Op.RAGGED_ALL_TO_ALL, [f, b.constant(np.array([1, 0, 2, 1]), DType.i32)],
                                             axes=("tp",), rows=16),
}


def sample(op: Op, mesh: dict = MESH):
    """A tiny graph using `op` once (elementwise ops on i32 where they take integers only)."""
    b = GraphBuilder("sample", mesh)
    f = b.parameter("x", (4, 8), DType.f32)
    i = b.parameter("i", (4, 8), DType.i32)
    x = i if op in INT_OR_BOOL_ONLY else f
    if op in UNARY:
        out = b.add(op, [x])
    elif op in BINARY | COMPARE:
        out = b.add(op, [x, x])
    elif op in SAMPLES:
        out = SAMPLES[op](b, f)
    else:
        raise KeyError(f"no sample graph for {op.value}: add one to tests/unit/op_samples.py SAMPLES")
    return b.build([out])
