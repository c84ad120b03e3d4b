"""Rules for vision and numerics ops real models need beyond torch_ops/torch_layout/torch_nn:
convolution (1-/2-/3-D, groups, dilation, transposed), pooling (max with indices, avg, adaptive
max), cumulative ops (cumprod, cummax, cummin, logcumsumexp), prod, inverse and hyperbolic trig,
atan2, lgamma/digamma, scatter_reduce's other reductions, unfold, diagonal, searchsorted and
bucketize. Part of torch_ops.RULES; everything here is plain IR ops (frontend/conv.py,
frontend/math_ops.py)."""
from __future__ import annotations

import math

import numpy as np

from ..ir import DType, Node, Op
from . import conv as W
from . import math_ops as M
from .torch_emitter import reduce_dims


def _tuple(v, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v


# ---------------------------------------------------------------------------------- convolution
def _convolution(e, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    unbatched = x.rank == w.rank - 1  # [C, *S]: one sample
    if unbatched:
        x = e.expand_dims(x, 0)
    nsp = x.rank - 2
    stride, dilation = _tuple(stride, nsp), _tuple(dilation, nsp)
    padding, output_padding = _tuple(padding, nsp), _tuple(output_padding, nsp)
    if transposed:
        out = W.conv_transpose(e, x, w, stride, padding, output_padding, dilation, groups)
    else:
        out = W.conv(e, x, w, stride, [(p, p) for p in padding], None, dilation, groups)
    if bias is not None:
        out = e.binary(Op.ADD, out, e.reshape(e.cast(bias, out.dtype), (out.shape[1],) + (1,) * nsp))
    if unbatched:
        out = e.reshape(out, out.shape[1:])
    return e.cast(out, e.out_dtype())


# -------------------------------------------------------------------------------------- pooling
def _pool_geometry(e, nsp, x, kernel_size, stride, padding, dilation=1, i: int | None = None):
    """(spatial dims, kernel, stride, dilation, (lo, hi) pads, output sizes) of a torch pooling over
    the last nsp dims; the output sizes come from torch's own result (ceil_mode windows need extra
    high padding)."""
    shape = e.out_shape(i)
    ks = _tuple(kernel_size, nsp)
    st = _tuple(stride, nsp) if stride not in (None, [], ()) else ks
    pd, dl = _tuple(padding, nsp), _tuple(dilation, nsp)
    dims = list(range(x.rank - nsp, x.rank))
    outs = list(shape[len(shape) - nsp:])
    pads = []
    for d, k, s, p, r, o in zip(dims, ks, st, pd, dl, outs):
        need = (o - 1) * s + (k - 1) * r + 1
        pads.append((p, max(need - x.shape[d] - p, 0)))
    return dims, ks, st, dl, pads, outs


def _max_pool_with_indices(nsp):
    return lambda e, x, *a, **k: _max_pool_with_indices_(e, nsp, x, *a, **k)


def _max_pool_with_indices_(e, nsp, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    dims, ks, st, dl, pads, outs = _pool_geometry(e, nsp, x, kernel_size, stride, padding, dilation, 0)
    vals, idx = W.max_pool_with_indices(e, x, ks, st, pads, dl, outs)
    return vals, idx


def _max_pool(nsp):
    return lambda e, x, *a, **k: _max_pool_(e, nsp, x, *a, **k)


def _max_pool_(e, nsp, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    dims, ks, st, dl, pads, outs = _pool_geometry(e, nsp, x, kernel_size, stride, padding, dilation)
    return W.reduce_window(e, x, "max", dims, ks, st, pads, dl, outs=outs)


def _avg_pool(nsp):
    return lambda e, x, *a, **k: _avg_pool_(e, nsp, x, *a, **k)


def _avg_pool_(e, nsp, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    dims, ks, st, dl, pads, outs = _pool_geometry(e, nsp, x, kernel_size, stride, padding)
    dt = x.dtype
    xc = e.upcast(x)
    total = W.reduce_window(e, xc, "sum", dims, ks, st, pads, dl, outs=outs)
    if divisor_override:
        div = np.full(outs, float(divisor_override), np.float32)
    else:
        div = _avg_divisor(x.shape[-len(dims):], ks, st, [p[0] for p in pads], outs, count_include_pad)
    out = e.binary(Op.DIV, total, e.constant(div.astype(np.float32), DType.f32) if total.dtype is DType.f32
                   else e.cast(e.constant(div.astype(np.float32), DType.f32), total.dtype))
    return e.cast(out, dt)


def _avg_divisor(spatial, ks, st, pads, outs, count_include_pad) -> np.ndarray:
    """torch's avg-pool divisor per output position: the window clipped to the padded input
    (count_include_pad) or to the input itself."""
    per_dim = []
    for n, k, s, p, o in zip(spatial, ks, st, pads, outs):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if count_include_pad:
            cnt = end - start
        else:
            cnt = np.minimum(end, n) - np.maximum(start, 0)
        per_dim.append(np.maximum(cnt, 1))
    div = per_dim[0].astype(np.float64)
    for c in per_dim[1:]:
        div = np.multiply.outer(div, c)
    return div


def _adaptive_windows(n: int, o: int) -> np.ndarray:
    """[o, L] input positions of each adaptive window (the last one repeated to a common L)."""
    start = [(i * n) // o for i in range(o)]
    end = [-((-(i + 1) * n) // o) for i in range(o)]
    width = max(b - a for a, b in zip(start, end))
    return np.array([[min(a + j, b - 1) for j in range(width)] for a, b in zip(start, end)], np.int64)


def _adaptive_max_pool(e, x, output_size):
    nsp = len(output_size)
    dims = list(range(x.rank - nsp, x.rank))
    spatial = x.shape[x.rank - nsp:]
    flat = None
    for i in range(nsp):
        part = e.binary(Op.MUL, e.iota(spatial, i, DType.i64), math.prod(spatial[i + 1:]))
        flat = part if flat is None else e.binary(Op.ADD, flat, part)
    flat = e.broadcast_to(flat, x.shape)
    widths = []
    for d, o in zip(dims, output_size):  # each spatial dim d → [.., o, L, ..]
        win = _adaptive_windows(x.shape[d + sum(1 for _ in widths)], o)
        at = d + len(widths)
        idx = e.constant(win, DType.i64)
        x, flat = e.add(Op.GATHER, [x, idx], axis=at), e.add(Op.GATHER, [flat, idx], axis=at)
        widths.append(win.shape[1])
    # x: [..., o0, L0, o1, L1, ...] → [..., o0, o1, ..., L0*L1*...]
    lead = x.rank - 2 * nsp
    perm = list(range(lead)) + [lead + 2 * i for i in range(nsp)] + [lead + 2 * i + 1 for i in range(nsp)]
    shape = x.shape[:lead] + tuple(output_size) + (math.prod(widths),)
    x, flat = e.reshape(e.transpose(x, perm), shape), e.reshape(e.transpose(flat, perm), shape)
    arg = e.argmax(x, -1, keepdims=True)
    vals = e.reshape(e.take_along_axis(x, arg, -1), shape[:-1])
    return vals, e.reshape(e.take_along_axis(flat, arg, -1), shape[:-1])


# ---------------------------------------------------------------------------------- cumulative
def _scan(e, x, axis, combine, identity):
    """Inclusive prefix scan in log2(n) rounds; combine(earlier, later) -> tuple of nodes."""
    axis %= x[0].rank
    n, k = x[0].shape[axis], 1
    while k < n:
        shifted = [e.slice(W.pad(e, v, [axis], [k], [0], ident), axis, 0, n) for v, ident in zip(x, identity)]
        x = combine(shifted, x)
        k *= 2
    return x


def _cumprod(e, x, dim, dtype=None):
    x = e.cast(x, e.out_dtype())
    one = 1.0 if x.dtype.is_float else 1
    return _scan(e, [x], dim, lambda a, b: [e.binary(Op.MUL, a[0], b[0])], [one])[0] if x.rank else x


def _cumextreme(largest: bool):
    def rule(e, x, dim):
        if x.rank == 0:
            return x, e.const(0, DType.i64)
        dim %= x.rank
        idx = e.iota(x.shape, dim, DType.i64)
        worst = W._identity("max" if largest else "min", x.dtype)

        def combine(a, b):
            later_wins = e.binary(Op.GE if largest else Op.LE, b[0], a[0])
            if x.dtype.is_float:
                later_wins = e.binary(Op.OR, e.binary(Op.NE, b[0], b[0]),
                                      e.binary(Op.AND, later_wins, e.binary(Op.EQ, a[0], a[0])))
            return [e.select(later_wins, b[0], a[0]), e.select(later_wins, b[1], a[1])]
        vals, ids = _scan(e, [x, idx], dim, combine, [worst, -1])
        return vals, ids
    return rule


def _logcumsumexp(e, x, dim):
    if x.rank == 0:
        return x
    xc = e.upcast(x)
    m = e.reduce(Op.REDUCE_MAX, xc, dim, keepdims=True)
    m = e.select(e.binary(Op.EQ, e.unary(Op.ABS, m), math.inf), 0.0, m)
    s = e.cumsum(e.unary(Op.EXP, e.binary(Op.SUB, xc, m)), dim)
    return e.cast(e.binary(Op.ADD, e.unary(Op.LOG, s), m), x.dtype)


def _prod(e, x, dim=None, keepdim=False, dtype=None):
    x = e.cast(x, e.out_dtype())
    axes = reduce_dims(x, dim) if not isinstance(dim, int) else [dim % max(x.rank, 1)]
    if x.rank == 0:
        return x
    axes = list(range(x.rank)) if axes is None else axes
    return M.prod(e, x, axes, keepdim)


# ------------------------------------------------------------------------------- indexing ops
def _unfold(e, x, dim, size, step):
    if x.rank == 0:
        return e.reshape(x, [1])
    dim %= x.rank
    slices = W.window_slices(e, x, [dim], [size], [step], [1])
    return e.concat([e.expand_dims(s, -1) for s in slices], -1)


def _diagonal(e, x, offset=0, dim1=0, dim2=1):
    dim1, dim2 = dim1 % x.rank, dim2 % x.rank
    rest = [d for d in range(x.rank) if d not in (dim1, dim2)]
    xt = e.transpose(x, rest + [dim1, dim2])
    a, b = xt.shape[-2:]
    r0, c0 = max(-offset, 0), max(offset, 0)
    n = max(min(a - r0, b - c0), 0)
    flat = e.reshape(xt, xt.shape[:-2] + (a * b,))
    idx = e.constant(np.array([(r0 + i) * b + c0 + i for i in range(n)], np.int64), DType.i64)
    if n == 0:
        return e.const(0, x.dtype, xt.shape[:-2] + (0,))
    return e.add(Op.GATHER, [flat, idx], axis=flat.rank - 1)


def _searchsorted(e, seq, v, out_int32=False, right=False, side=None, sorter=None):
    if side is not None:
        right = side == "right"
    if sorter is not None:
        seq = e.take_along_axis(seq, sorter, -1)
    if not isinstance(v, Node):
        v = e.const(v, seq.dtype)
    dt = seq.dtype if seq.dtype == v.dtype else DType.f32
    seq, v = e.cast(seq, dt), e.cast(v, dt)
    if seq.rank == 1:
        s = e.reshape(seq, (1,) * v.rank + seq.shape)
    else:
        s = e.expand_dims(seq, -2)                             # [.., 1, n]
    cmp = e.binary(Op.LE if right else Op.LT, s, e.expand_dims(v, -1))   # [.., m, n]
    if dt.is_float:  # NaN sorts last: every number is before it
        cmp = e.binary(Op.OR, cmp, e.binary(Op.AND, e.binary(Op.NE, e.expand_dims(v, -1), e.expand_dims(v, -1)),
                                            e.binary(Op.EQ, s, s)))
    return e.cast(e.reduce(Op.REDUCE_SUM, e.cast(cmp, DType.i64), -1), e.out_dtype())


def _bucketize(e, v, boundaries, out_int32=False, right=False):
    return _searchsorted(e, boundaries, v, out_int32, right)


def _scatter_reduce(scatter_sum):
    """scatter_reduce: sum through the IR scatter; prod, amax, amin and mean by comparing every
    index with every position along dim (exact; meant for the short dims of pooling-like uses)."""
    def rule(e, x, dim, index, src, reduce, include_self=True):
        if reduce == "sum":
            return scatter_sum(e, x, dim, index, src, reduce, include_self)
        dim %= max(x.rank, 1)
        if x.rank == 0:
            out = rule(e, e.reshape(x, [1]), 0, e.reshape(index, [1]), e.reshape(src, [1]), reduce, include_self)
            return e.reshape(out, ())
        for d in range(x.rank):
            if src.shape[d] != index.shape[d]:
                src = e.slice(src, d, 0, index.shape[d])
        n = x.shape[dim]
        # lay index/src out over x's other dims: pad (with a position that hits nothing) to x's shape
        high = [0 if d == dim else x.shape[d] - index.shape[d] for d in range(x.rank)]
        idx = e.cast(index, DType.i64)
        if any(high):
            idx = e.add(Op.PAD, [idx], low=[0] * x.rank, high=high, value=-1)
            src = e.add(Op.PAD, [src], low=[0] * x.rank, high=high, value=0.0 if src.dtype.is_float else 0)
        idx = e.select(e.binary(Op.LT, idx, 0), e.binary(Op.ADD, idx, n), idx)
        m = idx.shape[dim]
        # hit[.., j, i] = idx[.., i] == j (j over x's dim, i over index's dim): dim moves last
        perm = [d for d in range(x.rank) if d != dim] + [dim]
        it, st = e.transpose(idx, perm), e.transpose(e.cast(src, x.dtype), perm)
        shape = it.shape[:-1] + (n, m)
        hit = e.binary(Op.EQ, e.broadcast_to(e.expand_dims(it, -2), shape), e.iota(shape, -2))
        vals = e.broadcast_to(e.expand_dims(st, -2), shape)
        kind = {"prod": "prod", "amax": "max", "amin": "min", "mean": "sum"}[reduce]
        ident = W._identity(kind, x.dtype) if kind != "prod" else (1.0 if x.dtype.is_float else 1)
        masked = e.select(hit, vals, e.const(ident, x.dtype))
        if kind == "prod":
            red = M.prod(e, masked, [masked.rank - 1])
        else:
            red = e.reduce({"max": Op.REDUCE_MAX, "min": Op.REDUCE_MIN, "sum": Op.REDUCE_SUM}[kind], masked, -1)
        count = e.reduce(Op.REDUCE_SUM, e.cast(hit, DType.i64), -1)
        red = e.transpose(red, list(np.argsort(perm)))
        count = e.transpose(count, list(np.argsort(perm)))
        touched = e.binary(Op.GT, count, 0)
        if include_self:
            comb = {"prod": Op.MUL, "max": Op.MAX, "min": Op.MIN, "sum": Op.ADD}[kind]
            red = e.binary(comb, x, red)
            count = e.binary(Op.ADD, count, 1)
        if reduce == "mean":
            c = e.cast(count, x.dtype)
            red = e.binary(Op.DIV, red, c) if x.dtype.is_float else e.floor_div(red, c)
        return e.select(touched, red, x)
    return rule


# -------------------------------------------------------------------------------------- the table
def _math(fn):
    return lambda e, *xs: fn(e, *[e.float_out(x) if isinstance(x, Node) else e.const(x, e.out_dtype())
                                   for x in xs])


def _lgamma_like(fn):
    return lambda e, x: fn(e, e.float_out(x))


def rules(A, scatter_sum) -> dict:
    out = {
        A.convolution: _convolution,
        A.max_pool2d_with_indices: _max_pool_with_indices(2), A.max_pool3d_with_indices: _max_pool_with_indices(3),
        A.max_pool2d: _max_pool(2), A.max_pool1d: _max_pool(1), A.max_pool3d: _max_pool(3),
        A.avg_pool1d: _avg_pool(1), A.avg_pool2d: _avg_pool(2), A.avg_pool3d: _avg_pool(3),
        A.adaptive_max_pool2d: _adaptive_max_pool, A.adaptive_max_pool1d: _adaptive_max_pool,
        A.adaptive_max_pool3d: _adaptive_max_pool,
        A.cumprod: _cumprod, A.cummax: _cumextreme(True), A.cummin: _cumextreme(False),
        A.logcumsumexp: _logcumsumexp, A.prod: _prod,
        A.asin: _math(M.asin), A.acos: _math(M.acos), A.atan: _math(M.atan), A.sinh: _math(M.sinh),
        A.cosh: _math(M.cosh), A.asinh: _math(M.asinh), A.acosh: _math(M.acosh), A.atanh: _math(M.atanh),
        A.tan: _math(M.tan), A.atan2: lambda e, y, x: M.atan2(e, *[e.cast(v, e.out_dtype()) for v in (y, x)])
        if isinstance(x, Node) and isinstance(y, Node) else _math(M.atan2)(e, y, x),
        A.arctan2: lambda e, y, x: M.atan2(e, e.cast(y, e.out_dtype()), e.cast(x, e.out_dtype())),
        A.lgamma: _lgamma_like(M.lgamma), A.digamma: _lgamma_like(M.digamma),
        A.special_i0e: _lgamma_like(M.i0e), A.special_i1e: _lgamma_like(M.i1e),
        A.unfold: _unfold, A.diagonal: _diagonal, A.searchsorted: _searchsorted, A.bucketize: _bucketize,
        A.scatter_reduce: _scatter_reduce(scatter_sum),
    }
    return out
