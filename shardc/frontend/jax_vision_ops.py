"""JAX primitives for vision models and numerics, registered into jax_ops.RULES:
conv_general_dilated, reduce_window_{sum,max,min}, cumlogsumexp, scatter mul/min/max, the trig
and special-function family (atan2, asin, ..., lgamma, digamma, bessel_i0e/i1e), and sort by
several keys. All plain IR ops (frontend/conv.py, frontend/math_ops.py)."""
from __future__ import annotations

import math

import numpy as np

from ..ir import DType, Node, Op
from . import conv as W
from . import math_ops as M
from .jax_ops import RULES, rule


# ---- convolution and windows -------------------------------------------------------------------
@rule("conv_general_dilated")
def _conv(c, lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count=1, batch_group_count=1, preferred_element_type=None, **_):
    b = c.b
    if batch_group_count != 1:
        raise c.unsupported(f"batch_group_count={batch_group_count}")
    dn = dimension_numbers
    lhs_spec, rhs_spec, out_spec = (dn.lhs_spec, dn.rhs_spec, dn.out_spec) if dn is not None else \
        (tuple(range(lhs.rank)),) * 3
    x = b.transpose(lhs, list(lhs_spec))   # [N, C, *S]
    w = b.transpose(rhs, list(rhs_spec))   # [O, I, *K]
    dt = c.out_dtype(0)
    out = W.conv(b, b.cast(x, dt), b.cast(w, dt), list(window_strides), [tuple(p) for p in padding],
                 list(lhs_dilation), list(rhs_dilation), int(feature_group_count))
    return b.transpose(out, list(np.argsort(out_spec)))   # logical [N, O, *S] → out_spec's layout


def _reduce_window(kind: str):
    def fn(c, x, *, window_dimensions, window_strides, padding, base_dilation, window_dilation, **_):
        dims = [d for d in range(x.rank)]
        return W.reduce_window(c.b, x, kind, dims, list(window_dimensions), list(window_strides),
                               [tuple(p) for p in padding], list(window_dilation), list(base_dilation))
    return fn


RULES["reduce_window_sum"] = _reduce_window("sum")
RULES["reduce_window_max"] = _reduce_window("max")
RULES["reduce_window_min"] = _reduce_window("min")


@rule("cumlogsumexp")
def _cumlogsumexp(c, x, *, axis, reverse=False, **_):
    b = c.b
    if reverse:
        x = b.flip(x, [axis])
    m = b.reduce(Op.REDUCE_MAX, x, axis, keepdims=True)
    m = b.select(b.binary(Op.EQ, b.unary(Op.ABS, m), math.inf), b.const(0.0, x.dtype), m)
    out = b.binary(Op.ADD, b.unary(Op.LOG, b.cumsum(b.unary(Op.EXP, b.binary(Op.SUB, x, m)), axis)), m)
    return b.flip(out, [axis]) if reverse else out


# ---- elementwise math --------------------------------------------------------------------------
for _name, _fn in (("asin", M.asin), ("acos", M.acos), ("atan", M.atan), ("sinh", M.sinh), ("cosh", M.cosh),
                   ("asinh", M.asinh), ("acosh", M.acosh), ("atanh", M.atanh), ("tan", M.tan),
                   ("lgamma", M.lgamma), ("digamma", M.digamma), ("bessel_i0e", M.i0e),
                   ("bessel_i1e", M.i1e), ("cbrt", M.cbrt)):
    RULES[_name] = lambda c, x, _fn=_fn, **_: _fn(c.b, x)
RULES["atan2"] = lambda c, y, x, **_: M.atan2(c.b, y, x)


@rule("nextafter")
def _nextafter(c, x, y, **_):
    if x.dtype is not DType.f32:
        raise c.unsupported(f"nextafter on {x.dtype}")
    return M.nextafter(c.b, x, y)


# ---- scatter with a combining op ---------------------------------------------------------------
def scatter_combine(b, xt: Node, lin: Node, upd: Node, nb: int, kind: str, spread) -> Node:
    """xt [batch(nb), M, rest..] combined (mul, min, max) with updates [batch, index dims.., rest..]
    at linear positions lin [batch, index dims..]: every update is compared with every position
    (one-hot), so exact for any repeats; meant for modest index counts."""
    ident = {"mul": 1, "min": math.inf, "max": -math.inf}[kind]
    if not xt.dtype.is_float:
        info = np.iinfo(xt.dtype.np) if xt.dtype is not DType.bool else None
        ident = 1 if kind == "mul" else (int(info.max) if kind == "min" else int(info.min)) if info else (kind == "min")
    upd = spread(upd, ident)  # windows narrower than x's dims: the rest holds the identity
    batch, m, rest = xt.shape[:nb], xt.shape[nb], xt.shape[nb + 1:]
    n = math.prod(lin.shape[nb:])
    lin = b.reshape(lin, batch + (n,))
    upd = b.reshape(upd, batch + (n,) + rest)
    grid = batch + (n, m)
    hit = b.binary(Op.EQ, b.broadcast_to(b.expand_dims(lin, -1), grid), b.iota(grid, nb + 1, lin.dtype))
    full = batch + (n, m) + rest
    hit = b.add(Op.BROADCAST, [hit], shape=full, dims=list(range(nb + 2)))
    vals = b.add(Op.BROADCAST, [upd], shape=full, dims=list(range(nb + 1)) + list(range(nb + 2, len(full))))
    vals = b.select(hit, vals, b.const(ident, xt.dtype))
    if kind == "mul":
        red = M.prod(b, vals, [nb])
    else:
        red = b.reduce(Op.REDUCE_MIN if kind == "min" else Op.REDUCE_MAX, vals, nb)
    return b.binary({"mul": Op.MUL, "min": Op.MIN, "max": Op.MAX}[kind], xt, red)


# ---- sort by several keys ----------------------------------------------------------------------
def lexsort(b, keys: list[Node], axis: int) -> Node:
    """The stable order (i64) that sorts by keys[0], then keys[1], ...; NaN after every number."""
    axis %= keys[0].rank
    n = keys[0].shape[axis]
    perm = [d for d in range(keys[0].rank) if d != axis] + [axis]
    before, same = None, None
    shape = None
    for k in keys:
        kt = b.transpose(k, perm)
        kt = b.cast(kt, DType.i32) if kt.dtype is DType.bool else kt
        shape = kt.shape + (n,)
        ki = b.broadcast_to(b.expand_dims(kt, -1), shape)
        kj = b.broadcast_to(b.expand_dims(kt, -2), shape)
        lt, eq = b.binary(Op.LT, kj, ki), b.binary(Op.EQ, kj, ki)
        if kt.dtype.is_float:
            nan_i, nan_j = b.binary(Op.NE, ki, ki), b.binary(Op.NE, kj, kj)
            lt = b.binary(Op.OR, lt, b.binary(Op.AND, nan_i, b.unary(Op.NOT, nan_j)))
            eq = b.binary(Op.OR, eq, b.binary(Op.AND, nan_i, nan_j))
        if before is None:
            before, same = lt, eq
        else:
            before = b.binary(Op.OR, before, b.binary(Op.AND, same, lt))
            same = b.binary(Op.AND, same, eq)
    col, row = b.iota(shape, -1), b.iota(shape, -2)
    before = b.binary(Op.OR, before, b.binary(Op.AND, same, b.binary(Op.LT, col, row)))
    rank = b.reduce(Op.REDUCE_SUM, b.cast(before, DType.i64), -1)
    hit = b.binary(Op.EQ, b.broadcast_to(b.expand_dims(rank, -2), shape), row)
    order = b.reduce(Op.REDUCE_SUM, b.select(hit, col, 0), -1)
    return b.transpose(order, list(np.argsort(perm)))


# ---- bit counting (int32; the IR's shift right is arithmetic, so masks follow each shift) --------
def _int32_only(c, x):
    if x.dtype is not DType.i32:
        raise c.unsupported(f"{c.eqn.primitive.name} on {x.dtype} (int32 only)")


@rule("population_count")
def _popcount(c, x, **_):
    _int32_only(c, x)
    b = c.b
    k = lambda v: b.const(np.array(v, np.uint32).astype(np.int32).item(), DType.i32)
    x = b.binary(Op.SUB, x, b.binary(Op.AND, b.binary(Op.SHR, x, k(1)), k(0x55555555)))
    x = b.binary(Op.ADD, b.binary(Op.AND, x, k(0x33333333)), b.binary(Op.AND, b.binary(Op.SHR, x, k(2)), k(0x33333333)))
    x = b.binary(Op.AND, b.binary(Op.ADD, x, b.binary(Op.SHR, x, k(4))), k(0x0F0F0F0F))
    return b.binary(Op.AND, b.binary(Op.SHR, b.binary(Op.MUL, x, k(0x01010101)), k(24)), k(0xFF))


@rule("clz")
def _clz(c, x, **_):
    """Leading zeros by binary search: shift the top half down while it is empty."""
    _int32_only(c, x)
    b = c.b
    n = b.const(0, DType.i32, x.shape)
    for width in (16, 8, 4, 2, 1):
        mask = np.array(((1 << width) - 1) << (32 - width), np.uint32).astype(np.int32).item()
        empty = b.binary(Op.EQ, b.binary(Op.AND, x, b.const(mask, DType.i32)), b.const(0, DType.i32))
        n = b.select(empty, b.binary(Op.ADD, n, b.const(width, DType.i32)), n)
        x = b.select(empty, b.binary(Op.SHL, x, b.const(width, DType.i32)), x)
    zero = b.binary(Op.EQ, x, b.const(0, DType.i32))
    return b.select(zero, b.const(32, DType.i32), n)


@rule("mulhi")
def _mulhi(c, x, y, **_):
    """The high 32 bits of the 64-bit product."""
    _int32_only(c, x)
    b = c.b
    p = b.binary(Op.MUL, b.cast(x, DType.i64), b.cast(y, DType.i64))
    return b.cast(b.binary(Op.SHR, p, b.const(32, DType.i64)), DType.i32)


RULES["igamma"] = lambda c, a, x, **_: M.igamma(c.b, a, x)
RULES["igammac"] = lambda c, a, x, **_: M.igammac(c.b, a, x)
RULES["regularized_incomplete_beta"] = lambda c, a, b_, x, **_: M.betainc(c.b, a, b_, x)
