"""Windowed ops — convolution and pooling — decomposed into the closed op set, shared by the
torch and JAX tables.

A window op reads, for each kernel offset k, a strided slice of the (dilated, padded) input; a
convolution stacks those slices (im2col) and contracts them with the weight in ONE dot_general
(channels and kernel offsets are its contracting dims, groups its batch dim); a pooling combines
them elementwise (max, min, sum). So the partitioner needs no new rule: the batch dim and the
output channels (the weight's free dim) shard like any dot's, and a spatial dim split across
devices is resharded before its slices by the ordinary rules (the slices of a split dim read
across the split)."""
from __future__ import annotations

import itertools
import math
from typing import Sequence

from ..errors import UnsupportedOpError
from ..ir import DType, Node, Op


def dilate(b, x: Node, dims: Sequence[int], factors: Sequence[int], value=0) -> Node:
    """Insert factor-1 fill values between neighbours along each dim (lhs dilation)."""
    for d, f in zip(dims, factors):
        n = x.shape[d]
        if f > 1 and n > 1:
            x = b.reshape(x, x.shape[:d + 1] + (1,) + x.shape[d + 1:])
            lows, highs = [0] * x.rank, [0] * x.rank
            highs[d + 1] = f - 1
            x = b.add(Op.PAD, [x], low=lows, high=highs, value=value)
            x = b.reshape(x, x.shape[:d] + (n * f,) + x.shape[d + 2:])
            x = b.slice(x, d, 0, n + (n - 1) * (f - 1))
    return x


def pad(b, x: Node, dims: Sequence[int], lows: Sequence[int], highs: Sequence[int], value=0) -> Node:
    """Edge padding along dims; negative amounts crop."""
    lo, hi = [0] * x.rank, [0] * x.rank
    for d, l, h in zip(dims, lows, highs):
        lo[d], hi[d] = max(l, 0), max(h, 0)
    if any(lo) or any(hi):
        x = b.add(Op.PAD, [x], low=lo, high=hi, value=value)
    for d, l, h in zip(dims, lows, highs):
        if l < 0 or h < 0:
            x = b.slice(x, d, max(-l, 0), x.shape[d] - max(-h, 0))
    return x


def out_size(n: int, k: int, stride: int, dilation: int) -> int:
    """Output positions of a window of k taps (dilated) sliding by stride over n (padded) elements."""
    span = (k - 1) * dilation + 1
    return 0 if n < span else (n - span) // stride + 1


def window_slices(b, x: Node, dims: Sequence[int], sizes: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int], outs: Sequence[int] | None = None) -> list[Node]:
    """One strided slice of x per kernel offset (row-major over the window), each of the output's
    shape along dims: slice k holds x[.., o*stride + k*dilation, ..]."""
    outs = outs or [out_size(x.shape[d], k, s, r) for d, k, s, r in zip(dims, sizes, strides, dilations)]
    slices = []
    for offs in itertools.product(*[range(k) for k in sizes]):
        start, limit, stride = [0] * x.rank, list(x.shape), [1] * x.rank
        for d, o, s, r, n in zip(dims, offs, strides, dilations, outs):
            start[d] = o * r
            limit[d] = o * r + (n - 1) * s + 1 if n else o * r
            stride[d] = s
        if limit == list(x.shape) and not any(start) and all(s == 1 for s in stride):
            slices.append(x)
        else:
            slices.append(b.add(Op.SLICE, [x], start=start, limit=limit, stride=stride))
    return slices


def conv(b, x: Node, w: Node, strides: Sequence[int], padding: Sequence[tuple[int, int]],
         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
         groups: int = 1) -> Node:
    """x [N, C, *S] ⋆ w [O, C/groups, *K] → [N, O, *S_out] (cross-correlation, as torch and XLA).
    lhs_dilation > 1 is a transposed convolution's stride."""
    nsp = x.rank - 2
    if w.rank != x.rank:
        raise UnsupportedOpError(f"convolution of a rank-{x.rank} input with a rank-{w.rank} weight")
    lhs_dilation = list(lhs_dilation or [1] * nsp)
    rhs_dilation = list(rhs_dilation or [1] * nsp)
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    ks = list(w.shape[2:])
    if c != cg * groups or o % groups:
        raise UnsupportedOpError(f"convolution with {c} input channels, weight {list(w.shape)} and {groups} groups")
    dt = x.dtype if x.dtype == w.dtype else DType.f32
    x, w = b.cast(x, dt), b.cast(w, dt)
    spatial = list(range(2, x.rank))
    x = dilate(b, x, spatial, lhs_dilation)
    x = pad(b, x, spatial, [p[0] for p in padding], [p[1] for p in padding])
    cols = window_slices(b, x, spatial, ks, strides, rhs_dilation)
    kk = math.prod(ks)
    so = cols[0].shape[2:]
    if kk == 1:
        stacked = b.reshape(cols[0], (n, c, 1) + so)
    else:
        stacked = b.concat([b.reshape(s, (n, c, 1) + so) for s in cols], 2)   # [N, C, K, *So]
    g, og = groups, o // groups
    if g == 1:
        wk = b.reshape(w, (o, c, kk))
        out = b.add(Op.DOT_GENERAL, [stacked, wk], lhs_contract=[1, 2], rhs_contract=[1, 2])  # [N, *So, O]
        return b.transpose(out, [0, nsp + 1] + list(range(1, nsp + 1)))
    xs = b.reshape(stacked, (n, g, cg, kk) + so)
    wk = b.reshape(w, (g, og, cg, kk))
    out = b.add(Op.DOT_GENERAL, [xs, wk], lhs_batch=[1], rhs_batch=[0], lhs_contract=[2, 3],
                rhs_contract=[2, 3])                                                   # [G, N, *So, Og]
    out = b.transpose(out, [1, 0, nsp + 2] + list(range(2, nsp + 2)))                  # [N, G, Og, *So]
    return b.reshape(out, (n, o) + so)


def conv_transpose(b, x: Node, w: Node, strides, padding, output_padding, dilation, groups: int) -> Node:
    """torch's transposed convolution (w [C, O/groups, *K]): a convolution of the stride-dilated
    input with the flipped, in/out-swapped weight, padded by dilation·(k-1) - padding."""
    nsp = x.rank - 2
    c, og = w.shape[:2]
    ks = w.shape[2:]
    g = groups
    wf = b.flip(w, list(range(2, w.rank)))
    wf = b.reshape(wf, (g, c // g, og) + tuple(ks))
    wf = b.transpose(wf, [0, 2, 1] + list(range(3, wf.rank)))                           # [G, Og, Cg, *K]
    wf = b.reshape(wf, (g * og, c // g) + tuple(ks))
    pads = [(dilation[i] * (ks[i] - 1) - padding[i], dilation[i] * (ks[i] - 1) - padding[i] + output_padding[i])
            for i in range(nsp)]
    return conv(b, x, wf, [1] * nsp, pads, strides, dilation, groups)


_COMBINE = {"max": Op.MAX, "min": Op.MIN, "sum": Op.ADD}


def reduce_window(b, x: Node, kind: str, dims: Sequence[int], sizes, strides, padding, dilations=None,
                  base_dilations=None, init=None, outs=None) -> Node:
    """Combine (max, min, sum) each window of x along dims; padding and dilation holes hold init
    (the reduction's identity by default)."""
    dilations = list(dilations or [1] * len(dims))
    if init is None:
        init = _identity(kind, x.dtype)
    x = dilate(b, x, dims, list(base_dilations or [1] * len(dims)), init)
    x = pad(b, x, dims, [p[0] for p in padding], [p[1] for p in padding], init)
    slices = window_slices(b, x, dims, sizes, strides, dilations, outs)
    out = slices[0]
    for s in slices[1:]:
        out = b.binary(_COMBINE[kind], out, s)
    return out


def _identity(kind: str, dt: DType):
    if kind == "sum":
        return False if dt is DType.bool else 0
    big = math.inf if dt.is_float else (True if dt is DType.bool else int(_int_max(dt)))
    if kind == "max":
        return -big if dt.is_float else (False if dt is DType.bool else -big - 1)
    return big


def _int_max(dt: DType) -> int:
    import numpy as np
    return np.iinfo(dt.np).max


def max_pool_with_indices(b, x: Node, sizes, strides, padding, dilations, outs) -> tuple[Node, Node]:
    """torch's max_pool*_with_indices: the max of each window over the last len(sizes) dims and the
    flat index (over those dims of the input) of its first occurrence; a NaN wins (the last one),
    and a window of -inf points at its first element inside the input, as torch's CPU kernel."""
    nsp = len(sizes)
    dims = list(range(x.rank - nsp, x.rank))
    spatial = x.shape[x.rank - nsp:]
    flat = None
    for i, d in enumerate(dims):
        part = b.iota(spatial, i, DType.i64)
        part = b.binary(Op.MUL, part, math.prod(spatial[i + 1:]))
        flat = part if flat is None else b.binary(Op.ADD, flat, part)
    flat = b.broadcast_to(flat, x.shape)
    lo, hi = [p[0] for p in padding], [p[1] for p in padding]
    fill = -math.inf if x.dtype.is_float else _identity("max", x.dtype)
    xp = pad(b, x, dims, lo, hi, fill)
    ip = pad(b, flat, dims, lo, hi, -1)
    vals = window_slices(b, xp, dims, sizes, strides, dilations, outs)
    idxs = window_slices(b, ip, dims, sizes, strides, dilations, outs)
    best, arg = vals[0], idxs[0]
    for v, i in zip(vals[1:], idxs[1:]):
        take = b.binary(Op.OR, b.binary(Op.GT, v, best),
                        b.binary(Op.AND, b.binary(Op.LT, arg, 0), b.binary(Op.GE, i, 0)))
        if v.dtype.is_float:
            take = b.binary(Op.OR, take, b.binary(Op.NE, v, v))
        best, arg = b.select(take, v, best), b.select(take, i, arg)
    return best, arg
