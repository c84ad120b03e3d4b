"""The numpy reference evaluator: one entry per op. It is the oracle every later stage is
checked against, so it favours clarity and exactness over speed. Half floats compute in f32 and
round once per op (as torch eager and XLA do); integer division and remainder truncate (as XLA)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.special

from ..errors import IRError
from .dtypes import DType
from .graph import Graph, Node
from .ops import COLLECTIVES, Op


def _int_div(a, b):
    if not np.issubdtype(a.dtype, np.integer):
        return a / b
    safe = np.where(b == 0, 1, b)
    q = np.abs(a) // np.abs(safe)
    return np.where(b == 0, -1, np.where((a < 0) != (safe < 0), -q, q)).astype(a.dtype)


def _rsqrt(x):
    return 1.0 / np.sqrt(x)


def _logistic(x):
    return scipy.special.expit(x)


def _constant(n: Node):
    v = n.attrs["value"]
    if isinstance(v, np.ndarray):
        return v.astype(n.dtype.np, copy=True)
    return np.full(n.shape, v, dtype=n.dtype.np)


def _iota(n: Node):
    d = n.attrs["dimension"]
    r = np.arange(n.shape[d], dtype=n.dtype.np)
    return np.broadcast_to(r.reshape([-1 if i == d else 1 for i in range(len(n.shape))]), n.shape).copy()


def _broadcast(n: Node, x):
    dims = n.attrs["dims"]
    shape = [1] * len(n.shape)
    for i, d in enumerate(dims):
        shape[d] = x.shape[i]
    return np.broadcast_to(x.reshape(shape), n.shape).copy()


def _slice(n: Node, x):
    a = n.attrs
    return x[tuple(slice(s, l, st) for s, l, st in zip(a["start"], a["limit"], a["stride"]))].copy()


def _pad(n: Node, x):
    return np.pad(x, list(zip(n.attrs["low"], n.attrs["high"])), constant_values=n.attrs["value"])


def _per_batch(n: Node, fn, x, idx, *rest):
    """Apply fn(x_b, idx_b, *rest_b, axis) to each entry of the leading batch_dims."""
    b, axis = n.attrs.get("batch_dims", 0), n.attrs["axis"]
    if b == 0:
        return fn(x, idx, *rest, axis)
    nb = int(np.prod(x.shape[:b]))
    xs = x.reshape((nb,) + x.shape[b:])
    ids = idx.reshape((nb,) + idx.shape[b:])
    rs = [r.reshape((nb,) + r.shape[b:]) for r in rest]
    outs = [fn(xs[k], ids[k], *(r[k] for r in rs), axis - b) for k in range(nb)]
    return np.stack(outs).reshape(x.shape[:b] + outs[0].shape)


def _take(x, idx, axis):
    idx = np.clip(idx, 0, x.shape[axis] - 1)  # out-of-range indices clamp, as XLA's gather
    return x[(slice(None),) * axis + (idx,)]


def _scatter_add(x, idx, upd, axis):
    out = x.copy()
    keep = (idx >= 0) & (idx < x.shape[axis])  # out-of-range updates are dropped, as XLA's scatter
    idx = np.where(keep, idx, 0)
    upd = np.where(keep.reshape((1,) * axis + keep.shape + (1,) * (x.ndim - axis - 1)), upd, 0)
    if out.dtype == np.bool_:
        np.logical_or.at(out, (slice(None),) * axis + (idx,), upd)
    else:
        np.add.at(out, (slice(None),) * axis + (idx,), upd)
    return out


def _dot_general(n: Node, a, b):
    at = n.attrs
    lb, rb, lc, rc = at["lhs_batch"], at["rhs_batch"], at["lhs_contract"], at["rhs_contract"]
    lf = [d for d in range(a.ndim) if d not in lb + lc]
    rf = [d for d in range(b.ndim) if d not in rb + rc]
    size = lambda x, ds: int(np.prod([x.shape[d] for d in ds]))
    a3 = a.transpose(list(lb) + lf + list(lc)).reshape(size(a, lb), size(a, lf), size(a, lc))
    b3 = b.transpose(list(rb) + list(rc) + rf).reshape(size(b, rb), size(b, rc), size(b, rf))
    return np.matmul(a3, b3).reshape(n.shape)


def group_bounds(sizes, offset=0, groups=None, limit=None):
    """[(start, end)] of groups offset..offset+groups of a dim cut by `sizes` (clipped to limit)."""
    sizes = np.maximum(np.asarray(sizes).astype(np.int64), 0)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    if limit is not None:
        starts, ends = np.minimum(starts, limit), np.minimum(ends, limit)
    o = int(offset)
    groups = len(sizes) - o if groups is None else groups
    return [(int(starts[o + j]), int(ends[o + j])) if 0 <= o + j < len(sizes) else (0, 0) for j in range(groups)]


def ragged_dot(n: Node, a, b, sizes, offset=0):
    if n.attrs["mode"] == "rows":
        out = np.zeros(n.shape, dtype=a.dtype)
        for j, (s, e) in enumerate(group_bounds(sizes, offset, b.shape[0], a.shape[0])):
            out[s:e] = a[s:e] @ b[j]
        return out
    out = np.zeros(n.shape, dtype=a.dtype)
    for j, (s, e) in enumerate(group_bounds(sizes, offset, n.shape[0], a.shape[1])):
        out[j] = a[:, s:e] @ b[s:e]
    return out


_UNARY: dict[Op, Callable] = {
    Op.NEG: np.negative, Op.ABS: np.abs, Op.SIGN: np.sign, Op.EXP: np.exp, Op.LOG: np.log,
    Op.LOG1P: np.log1p, Op.SQRT: np.sqrt, Op.RSQRT: _rsqrt, Op.TANH: np.tanh, Op.LOGISTIC: _logistic,
    Op.ERF: scipy.special.erf, Op.SIN: np.sin, Op.COS: np.cos, Op.FLOOR: np.floor, Op.CEIL: np.ceil,
    Op.ROUND: np.round, Op.NOT: np.invert,
}
_BINARY: dict[Op, Callable] = {
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.DIV: _int_div, Op.REM: np.fmod,
    Op.POW: np.power, Op.MAX: np.maximum, Op.MIN: np.minimum, Op.AND: np.bitwise_and,
    Op.OR: np.bitwise_or, Op.XOR: np.bitwise_xor, Op.SHL: np.left_shift, Op.SHR: np.right_shift,
    Op.EQ: np.equal, Op.NE: np.not_equal, Op.LT: np.less, Op.LE: np.less_equal,
    Op.GT: np.greater, Op.GE: np.greater_equal,
}


def _no_collective(n: Node, *args):
    raise IRError(f"{n.describe()}: collectives need the SPMD simulator (prog.simulate), not Graph.evaluate")


def _no_axis_index(n: Node):
    raise IRError(f"{n.describe()}: axis_index needs the SPMD simulator (prog.simulate), not Graph.evaluate")


# Each entry: fn(node, *operand arrays) -> result array (dtype fixed up by the caller).
EVAL: dict[Op, Callable] = {
    Op.PARAMETER: lambda n: (_ for _ in ()).throw(IRError(f"parameter {n.name!r} has no value")),
    Op.CONSTANT: _constant,
    Op.IOTA: _iota,
    **{op: (lambda f: lambda n, x: f(x))(f) for op, f in _UNARY.items()},
    **{op: (lambda f: lambda n, a, b: f(a, b))(f) for op, f in _BINARY.items()},
    Op.SELECT: lambda n, p, t, f: np.where(p, t, f),
    Op.CAST: lambda n, x: x.astype(n.dtype.np),
    Op.BROADCAST: _broadcast,
    Op.RESHAPE: lambda n, x: x.reshape(n.shape),
    Op.TRANSPOSE: lambda n, x: x.transpose(n.attrs["perm"]).copy(),
    Op.SLICE: _slice,
    Op.CONCATENATE: lambda n, *xs: np.concatenate(xs, axis=n.attrs["axis"]),
    Op.PAD: _pad,
    Op.GATHER: lambda n, x, idx: _per_batch(n, _take, x, idx),
    Op.SCATTER: lambda n, x, idx, upd: _per_batch(n, _scatter_add, x, idx, upd),
    Op.REDUCE_SUM: lambda n, x: np.sum(x, axis=n.attrs["axes"], dtype=x.dtype),
    Op.REDUCE_MAX: lambda n, x: np.max(x, axis=n.attrs["axes"]),
    Op.REDUCE_MIN: lambda n, x: np.min(x, axis=n.attrs["axes"]),
    Op.DOT_GENERAL: _dot_general,
    Op.RAGGED_DOT: ragged_dot,
    Op.AXIS_INDEX: _no_axis_index,
    **{op: _no_collective for op in COLLECTIVES},
}

_HALF = (DType.f16.np, DType.bf16.np)


def eval_node(n: Node, args: list[np.ndarray]) -> np.ndarray:
    """One node's value from its operands' values; half floats compute in f32."""
    args = [a.astype(np.float32) if a.dtype in _HALF else a for a in args]
    with np.errstate(all="ignore"):
        out = EVAL[n.op](n, *args)
    out = np.asarray(out)
    if out.dtype != n.dtype.np:
        out = out.astype(n.dtype.np)
    if out.shape != n.shape:
        raise IRError(f"{n.describe()}: evaluator produced shape {out.shape}")
    return out


def evaluate_graph(g: Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `g` given every input's value by name."""
    env: dict[Node, np.ndarray] = {}
    for p in g.inputs:
        if p.name not in inputs:
            raise IRError(f"no value for input {p.name!r}")
        env[p] = np.asarray(inputs[p.name])
    remaining = _last_uses(g)
    keep = set(g.outputs)
    for n in g.nodes:
        if n.op is Op.PARAMETER:
            continue
        env[n] = eval_node(n, [env[i] for i in n.inputs])
        for i in n.inputs:  # free intermediates early: the oracle runs GPT-2-sized graphs too
            remaining[i] -= 1
            if remaining[i] == 0 and i not in keep:
                env.pop(i, None)
    return [env[o] for o in g.outputs]


def _last_uses(g: Graph) -> dict[Node, int]:
    count = {n: 0 for n in g.nodes}
    for n in g.nodes:
        for i in n.inputs:
            count[i] += 1
    return count
