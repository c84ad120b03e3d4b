"""IR → torch: one entry per op, mirroring shardc/ir/evaluate.py exactly (integer division and
remainder truncate, division by zero gives -1 / 0 as the evaluator does; half floats compute in f32
and round once per op; gather clamps out-of-range indices; scatter-add drops out-of-range updates;
dot_general is permute/reshape/bmm). Collectives and axis_index are not here: they need a rank
(torch_exec.py) — the table has an entry for every other op, and a test walks the op enum."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import IRError
from ..ir import DType, Node, Op
from ..ir.ops import COLLECTIVES

TORCH_DTYPE = {DType.f32: torch.float32, DType.f16: torch.float16, DType.bf16: torch.bfloat16,
               DType.i32: torch.int32, DType.i64: torch.int64, DType.bool: torch.bool}
_HALF = (torch.float16, torch.bfloat16)


def to_torch(a) -> torch.Tensor:
    """numpy (bf16 included) or scalar → a torch tensor that owns its memory."""
    if isinstance(a, torch.Tensor):
        return a
    a = np.array(a, copy=True, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if a.dtype == DType.bf16.np:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(DType.bf16.np).copy()
    return t.numpy().copy()


def _int_div(a, b):
    if a.dtype.is_floating_point:
        return a / b
    if a.dtype == torch.bool:
        return a
    safe = torch.where(b == 0, torch.ones_like(b), b)
    q = torch.div(a, safe, rounding_mode="trunc")
    return torch.where(b == 0, torch.full_like(q, -1), q)


def _rem(a, b):
    if a.dtype.is_floating_point:
        return torch.fmod(a, b)
    safe = torch.where(b == 0, torch.ones_like(b), b)
    return torch.where(b == 0, torch.zeros_like(a), torch.fmod(a, safe))  # numpy: x % 0 -> 0


def _sign(x):
    if x.dtype.is_floating_point:
        return torch.where(torch.isnan(x), x, torch.sign(x))  # np.sign(nan) is nan
    return torch.sign(x)


def _constant(n: Node):
    v = n.attrs["value"]
    if isinstance(v, np.ndarray):
        return to_torch(v.astype(n.dtype.np))
    return torch.full(n.shape, v, dtype=TORCH_DTYPE[n.dtype])


def _iota(n: Node):
    d = n.attrs["dimension"]
    r = torch.arange(n.shape[d], dtype=TORCH_DTYPE[n.dtype])
    return r.reshape([-1 if i == d else 1 for i in range(len(n.shape))]).expand(n.shape)


def _broadcast(n: Node, x):
    shape = [1] * len(n.shape)
    for i, d in enumerate(n.attrs["dims"]):
        shape[d] = x.shape[i]
    return x.reshape(shape).expand(n.shape)


def _slice(n: Node, x):
    a = n.attrs
    return x[tuple(slice(s, l, st) for s, l, st in zip(a["start"], a["limit"], a["stride"]))]


def _pad(n: Node, x):
    low, high = n.attrs["low"], n.attrs["high"]
    # negative padding crops first; then place the operand inside a tensor filled with the value
    x = x[tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0)) for d, (lo, hi) in enumerate(zip(low, high)))]
    out = torch.full(n.shape, n.attrs["value"], dtype=x.dtype)
    out[tuple(slice(max(lo, 0), max(lo, 0) + x.shape[d]) for d, lo in enumerate(low))] = x
    return out


def _gather_view(n: Node, x, idx):
    """[nb, pre, X, post] view of the operand and [nb, k] view of the indices (batch dims folded)."""
    b, axis = n.attrs.get("batch_dims", 0), n.attrs["axis"]
    nb = math.prod(x.shape[:b])
    pre = math.prod(x.shape[b:axis])
    post = math.prod(x.shape[axis + 1:])
    return x.reshape(nb, pre, x.shape[axis], post), idx.reshape(nb, -1).to(torch.int64), (nb, pre, post)


def _gather(n: Node, x, idx):
    x4, i2, (nb, pre, post) = _gather_view(n, x, idx)
    i2 = i2.clamp(0, x4.shape[2] - 1)  # out-of-range indices clamp, as XLA's gather
    k = i2.shape[1]
    out = torch.gather(x4, 2, i2.reshape(nb, 1, k, 1).expand(nb, pre, k, post))
    return out.reshape(n.shape)


def _scatter(n: Node, x, idx, upd):
    x4, i2, (nb, pre, post) = _gather_view(n, x, idx)
    k = i2.shape[1]
    keep = (i2 >= 0) & (i2 < x4.shape[2])  # out-of-range updates are dropped, as XLA's scatter
    i2 = torch.where(keep, i2, torch.zeros_like(i2)).reshape(nb, 1, k, 1).expand(nb, pre, k, post)
    u4 = upd.reshape(nb, pre, k, post)
    u4 = torch.where(keep.reshape(nb, 1, k, 1), u4, torch.zeros_like(u4))
    if x.dtype == torch.bool:
        out = x4.to(torch.int32).scatter_add(2, i2, u4.to(torch.int32)) > 0
    else:
        out = x4.scatter_add(2, i2, u4)
    return out.reshape(n.shape)


def _reduce(kind: str):
    def fn(n: Node, x):
        axes = tuple(n.attrs["axes"])
        if not axes:
            return x
        if x.dtype == torch.bool:  # numpy: sum/max of bools is any, min is all
            return (torch.all if kind == "min" else torch.any)(x, dim=axes)
        if kind == "sum":
            return torch.sum(x, dim=axes, dtype=x.dtype)
        if x.numel() == 0:
            raise IRError(f"{n.describe()}: {kind} of an empty array")
        return (torch.amax if kind == "max" else torch.amin)(x, dim=axes)
    return fn


def _dot_general(n: Node, a, b):
    at = n.attrs
    lb, rb, lc, rc = at["lhs_batch"], at["rhs_batch"], at["lhs_contract"], at["rhs_contract"]
    lf = [d for d in range(a.ndim) if d not in lb + lc]
    rf = [d for d in range(b.ndim) if d not in rb + rc]
    size = lambda x, ds: math.prod(x.shape[d] for d in ds)
    a3 = a.permute(list(lb) + lf + list(lc)).reshape(size(a, lb), size(a, lf), size(a, lc))
    b3 = b.permute(list(rb) + list(rc) + rf).reshape(size(b, rb), size(b, rc), size(b, rf))
    if a3.dtype == torch.bool:
        raise IRError(f"{n.describe()}: bool dot_general")
    return torch.bmm(a3, b3).reshape(n.shape)  # halves arrive as f32: f32 accumulation


def _ragged_dot(n: Node, a, b, sizes, offset=None):
    """Group by group, as the numpy evaluator (the bounds are values: read them once)."""
    from ..ir.evaluate import group_bounds
    o = 0 if offset is None else int(offset)
    out = torch.zeros(n.shape, dtype=a.dtype)
    if n.attrs["mode"] == "rows":
        for j, (s, e) in enumerate(group_bounds(sizes.tolist(), o, b.shape[0], a.shape[0])):
            out[s:e] = a[s:e] @ b[j]
    else:
        for j, (s, e) in enumerate(group_bounds(sizes.tolist(), o, n.shape[0], a.shape[1])):
            out[j] = a[:, s:e] @ b[s:e]
    return out


_UNARY: dict[Op, Callable] = {
    Op.NEG: torch.neg, Op.ABS: torch.abs, Op.SIGN: _sign, Op.EXP: torch.exp, Op.LOG: torch.log,
    Op.LOG1P: torch.log1p, Op.SQRT: torch.sqrt, Op.RSQRT: torch.rsqrt, Op.TANH: torch.tanh,
    Op.LOGISTIC: torch.sigmoid, Op.ERF: torch.erf, Op.SIN: torch.sin, Op.COS: torch.cos,
    Op.FLOOR: torch.floor, Op.CEIL: torch.ceil, Op.ROUND: torch.round, Op.NOT: torch.bitwise_not,
}
_BINARY: dict[Op, Callable] = {
    Op.ADD: torch.add, Op.SUB: torch.sub, Op.MUL: torch.mul, Op.DIV: _int_div, Op.REM: _rem,
    Op.POW: torch.pow, Op.MAX: torch.maximum, Op.MIN: torch.minimum, Op.AND: torch.bitwise_and,
    Op.OR: torch.bitwise_or, Op.XOR: torch.bitwise_xor, Op.SHL: torch.bitwise_left_shift,
    Op.SHR: torch.bitwise_right_shift, Op.EQ: torch.eq, Op.NE: torch.ne, Op.LT: torch.lt,
    Op.LE: torch.le, Op.GT: torch.gt, Op.GE: torch.ge,
}


def _bool_arith(f):
    """numpy adds/multiplies bools as or/and; torch refuses sub on bools: go through int."""
    def g(a, b):
        if a.dtype == torch.bool and f in (torch.add, torch.sub, torch.mul):
            return f(a.to(torch.int32), b.to(torch.int32)) != 0
        return f(a, b)
    return g


# Each entry: fn(node, *operand tensors) -> result tensor (dtype fixed up by the caller).
TORCH_OPS: dict[Op, Callable] = {
    Op.CONSTANT: _constant,
    Op.IOTA: _iota,
    **{op: (lambda f: lambda n, x: f(x))(f) for op, f in _UNARY.items()},
    **{op: (lambda f: lambda n, a, b: f(a, b))(_bool_arith(f)) for op, f in _BINARY.items()},
    Op.SELECT: lambda n, p, t, f: torch.where(p, t, f),
    Op.CAST: lambda n, x: x.to(TORCH_DTYPE[n.dtype]),
    Op.BROADCAST: _broadcast,
    Op.RESHAPE: lambda n, x: x.reshape(n.shape),
    Op.TRANSPOSE: lambda n, x: x.permute(n.attrs["perm"]),
    Op.SLICE: _slice,
    Op.CONCATENATE: lambda n, *xs: torch.cat(xs, dim=n.attrs["axis"]),
    Op.PAD: _pad,
    Op.GATHER: _gather,
    Op.SCATTER: _scatter,
    Op.REDUCE_SUM: _reduce("sum"),
    Op.REDUCE_MAX: _reduce("max"),
    Op.REDUCE_MIN: _reduce("min"),
    Op.DOT_GENERAL: _dot_general,
    Op.RAGGED_DOT: _ragged_dot,
}
# Not in the table: PARAMETER (a value the executor binds), AXIS_INDEX and the collectives (they
# need the rank and its process groups: torch_exec.py).
NEEDS_RANK = frozenset({Op.PARAMETER, Op.AXIS_INDEX}) | COLLECTIVES


def torch_node(n: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """One node's value from its operands' values; half floats compute in f32 and round once."""
    args = [a.float() if a.dtype in _HALF else a for a in args]
    out = TORCH_OPS[n.op](n, *args)
    want = TORCH_DTYPE[n.dtype]
    if out.dtype != want:
        out = out.to(want)
    if tuple(out.shape) != n.shape:
        raise IRError(f"{n.describe()}: torch produced shape {tuple(out.shape)}")
    return out
