"""Numpy-style building blocks over the closed op set, shared by the frontends and the
partitioner: implicit broadcasting, type promotion, keepdims reductions, matmul, and the
decompositions frameworks leave to us (softmax, argmax, cumsum, top-k, ...): plain IR ops only."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import UnsupportedOpError
from .dtypes import DType
from .graph import GraphBuilder, Node
from .ops import Op

_RANK = {DType.bool: 0, DType.i32: 1, DType.i64: 2, DType.bf16: 3, DType.f16: 3, DType.f32: 4}


def promote(a: DType, b: DType) -> DType:
    """Result type of mixing a and b (bf16 with f16 goes to f32, as torch and jax do)."""
    if a == b:
        return a
    if {a, b} == {DType.bf16, DType.f16}:
        return DType.f32
    return a if _RANK[a] >= _RANK[b] else b


class Emitter(GraphBuilder):
    """GraphBuilder plus numpy semantics. Scalars (python numbers) may stand for any operand."""

    # ---- conversions ----------------------------------------------------------------------
    def const(self, value, dtype: DType, shape: Sequence[int] | None = None) -> Node:
        """A scalar (splat to `shape`, default rank 0) or a whole array."""
        return self.constant(value, dtype, None if shape is None else tuple(shape))

    def cast(self, x: Node, dtype: DType) -> Node:
        return x if x.dtype == dtype else self.add(Op.CAST, [x], to=dtype)

    def as_node(self, v, like: Node | None = None, dtype: DType | None = None) -> Node:
        if isinstance(v, Node):
            return v
        if dtype is None:
            if like is not None and (like.dtype.is_float or not isinstance(v, float)):
                dtype = like.dtype
            else:
                dtype = DType.f32 if isinstance(v, float) else DType.bool if isinstance(v, bool) else DType.i64
        return self.const(v, dtype)

    # ---- shapes ---------------------------------------------------------------------------
    def broadcast_to(self, x: Node, shape: Sequence[int]) -> Node:
        shape = tuple(shape)
        if x.shape == shape:
            return x
        off = len(shape) - x.rank
        if off < 0 or any(s not in (1, shape[off + i]) for i, s in enumerate(x.shape)):
            raise UnsupportedOpError(f"cannot broadcast {x.describe()} to {list(shape)}")
        # drop size-1 dims that stretch, so broadcast maps only real dims
        keep = [i for i, s in enumerate(x.shape) if s == shape[off + i]]
        if len(keep) != x.rank:
            x = self.reshape(x, [x.shape[i] for i in keep])
        return self.add(Op.BROADCAST, [x], shape=shape, dims=[off + i for i in keep])

    def reshape(self, x: Node, shape: Sequence[int]) -> Node:
        shape = list(shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape[shape.index(-1)] = x.size // known if known else 0
        if x.size == 0 and tuple(shape) != x.shape:  # nothing to move: an empty constant
            return self.const(False if x.dtype is DType.bool else 0, x.dtype, shape)
        return x if tuple(shape) == x.shape else self.add(Op.RESHAPE, [x], shape=shape)

    def transpose(self, x: Node, perm: Sequence[int]) -> Node:
        perm = [p % x.rank for p in perm] if x.rank else []
        return x if perm == list(range(x.rank)) else self.add(Op.TRANSPOSE, [x], perm=perm)

    def expand_dims(self, x: Node, axis: int) -> Node:
        shape = list(x.shape)
        shape.insert(axis % (x.rank + 1), 1)
        return self.reshape(x, shape)

    def slice(self, x: Node, axis: int, start: int, stop: int, step: int = 1) -> Node:
        axis %= x.rank
        n = x.shape[axis]
        start, stop, step = slice(start, stop, step).indices(n)
        stop = max(stop, start)
        if (start, stop, step) == (0, n, 1):
            return x
        begin = [0] * x.rank
        end = list(x.shape)
        strides = [1] * x.rank
        begin[axis], end[axis], strides[axis] = start, stop, step
        return self.add(Op.SLICE, [x], start=begin, limit=end, stride=strides)

    def concat(self, xs: Sequence[Node], axis: int) -> Node:
        xs = [x for x in xs if x.shape[axis % x.rank] > 0] or list(xs[:1])
        return xs[0] if len(xs) == 1 else self.add(Op.CONCATENATE, xs, axis=axis % xs[0].rank)

    # ---- elementwise with broadcasting and promotion ---------------------------------------
    def binary(self, op: Op, a, b) -> Node:
        if not isinstance(a, Node) and not isinstance(b, Node):
            raise UnsupportedOpError(f"{op.value} of two python scalars")
        a = self.as_node(a, like=b if isinstance(b, Node) else None)
        b = self.as_node(b, like=a)
        dt = promote(a.dtype, b.dtype)
        a, b = self.cast(a, dt), self.cast(b, dt)
        shape = tuple(np.broadcast_shapes(a.shape, b.shape))
        return self.add(op, [self.broadcast_to(a, shape), self.broadcast_to(b, shape)])

    def unary(self, op: Op, x: Node) -> Node:
        return self.add(op, [x])

    def select(self, pred: Node, a, b) -> Node:
        like = a if isinstance(a, Node) else b if isinstance(b, Node) else None
        a, b = self.as_node(a, like=like), self.as_node(b, like=like)
        dt = promote(a.dtype, b.dtype)
        a, b = self.cast(a, dt), self.cast(b, dt)
        shape = tuple(np.broadcast_shapes(pred.shape, a.shape, b.shape))
        return self.add(Op.SELECT, [self.broadcast_to(self.cast(pred, DType.bool), shape),
                                    self.broadcast_to(a, shape), self.broadcast_to(b, shape)])

    def float_div(self, a, b) -> Node:
        """True division: integers promote to f32 first (torch and jnp semantics)."""
        a = self.as_node(a, like=b if isinstance(b, Node) else None)
        b = self.as_node(b, like=a)
        if not promote(a.dtype, b.dtype).is_float:
            a, b = self.cast(a, DType.f32), self.cast(b, DType.f32)
        return self.binary(Op.DIV, a, b)

    def floor_div(self, a, b) -> Node:
        """Python floor division for ints (the IR's div truncates) and floats."""
        q = self.binary(Op.DIV, a, b)
        if q.dtype.is_float:
            return self.unary(Op.FLOOR, q)
        a, b = self.as_node(a, like=q), self.as_node(b, like=q)
        r = self.binary(Op.REM, a, b)
        fix = self.binary(Op.AND, self.binary(Op.NE, r, 0),
                          self.binary(Op.NE, self.binary(Op.LT, r, 0), self.binary(Op.LT, b, 0)))
        return self.select(fix, self.binary(Op.SUB, q, 1), q)

    def py_rem(self, a, b) -> Node:
        """Python remainder: the result takes the sign of the divisor."""
        r = self.binary(Op.REM, a, b)
        b = self.as_node(b, like=r)
        fix = self.binary(Op.AND, self.binary(Op.NE, r, 0),
                          self.binary(Op.NE, self.binary(Op.LT, r, 0), self.binary(Op.LT, b, 0)))
        return self.select(fix, self.binary(Op.ADD, r, b), r)

    # ---- reductions -----------------------------------------------------------------------
    def reduce(self, op: Op, x: Node, axes, keepdims: bool = False) -> Node:
        axes = sorted({a % x.rank for a in ([axes] if isinstance(axes, int) else (axes if axes is not None else range(x.rank)))}) if x.rank else []
        if x.dtype is DType.bool and op is Op.REDUCE_SUM:
            x = self.cast(x, DType.i64)
        out = self.add(op, [x], axes=axes) if axes else x
        if keepdims:
            out = self.reshape(out, [1 if d in axes else s for d, s in enumerate(x.shape)])
        return out

    def mean(self, x: Node, axes, keepdims: bool = False) -> Node:
        s = self.reduce(Op.REDUCE_SUM, x, axes, keepdims)
        count = x.size // max(s.size, 1) if x.size else 1
        return self.binary(Op.MUL, s, 1.0 / count)

    def softmax(self, x: Node, axis: int) -> Node:
        m = self.reduce(Op.REDUCE_MAX, x, axis, keepdims=True)
        e = self.unary(Op.EXP, self.binary(Op.SUB, x, m))
        return self.binary(Op.DIV, e, self.reduce(Op.REDUCE_SUM, e, axis, keepdims=True))

    def log_softmax(self, x: Node, axis: int) -> Node:
        m = self.reduce(Op.REDUCE_MAX, x, axis, keepdims=True)
        shifted = self.binary(Op.SUB, x, m)
        lse = self.unary(Op.LOG, self.reduce(Op.REDUCE_SUM, self.unary(Op.EXP, shifted), axis, keepdims=True))
        return self.binary(Op.SUB, shifted, lse)

    def iota(self, shape: Sequence[int], dim: int, dtype: DType = DType.i64) -> Node:
        return self.add(Op.IOTA, [], out_shape=tuple(shape), out_dtype=dtype, dimension=dim % len(shape))

    def argmax(self, x: Node, axis: int, keepdims: bool = False, largest: bool = True,
               dtype: DType = DType.i64) -> Node:
        """First index of the max (min) along axis, as torch and jax break ties."""
        axis %= x.rank
        m = self.reduce(Op.REDUCE_MAX if largest else Op.REDUCE_MIN, x, axis, keepdims=True)
        hit = self.binary(Op.EQ, x, m)
        if x.dtype.is_float:  # a NaN is the max, as in torch and jax
            hit = self.binary(Op.OR, hit, self.binary(Op.NE, x, x))
        idx = self.iota(x.shape, axis, dtype)
        cand = self.select(hit, idx, self.const(x.shape[axis], dtype))
        return self.reduce(Op.REDUCE_MIN, cand, axis, keepdims)

    def top_k(self, x: Node, k: int, axis: int = -1, largest: bool = True) -> tuple[Node, Node]:
        """k rounds of argmax with the winner masked out: exact, and cheap for the small k of MoE."""
        axis %= x.rank
        if k > x.shape[axis]:
            raise UnsupportedOpError(f"top_k with k={k} > dim size {x.shape[axis]}")
        fill = -math.inf if largest else math.inf
        if not x.dtype.is_float:
            info = np.iinfo(x.dtype.np)
            fill = info.min if largest else info.max
        vals, idxs, cur = [], [], x
        iota = self.iota(x.shape, axis)
        for _ in range(k):
            i = self.argmax(cur, axis, keepdims=True, largest=largest)
            hit = self.binary(Op.EQ, iota, i)
            vals.append(self.reduce(Op.REDUCE_SUM, self.select(hit, x, self.const(0, x.dtype)), axis, keepdims=True))
            idxs.append(i)
            cur = self.select(hit, self.const(fill, x.dtype), cur)
        return self.concat(vals, axis), self.concat(idxs, axis)

    def cumsum(self, x: Node, axis: int) -> Node:
        """A dot with a triangular 0/1 matrix: exact for ints and shardable like any dot."""
        axis %= x.rank
        n = x.shape[axis]
        dt = DType.i64 if x.dtype is DType.bool else x.dtype
        tri = self.cast(self.binary(Op.LE, self.iota((n, n), 0), self.iota((n, n), 1)), dt)
        out = self.add(Op.DOT_GENERAL, [self.cast(x, dt), tri], lhs_contract=[axis], rhs_contract=[0])
        perm = list(range(x.rank - 1))
        perm.insert(axis, x.rank - 1)
        return self.transpose(out, perm)

    def matmul(self, a: Node, b: Node) -> Node:
        """numpy/torch matmul: batch dims broadcast, 1-d operands promoted and squeezed."""
        dt = promote(a.dtype, b.dtype)
        a, b = self.cast(a, dt), self.cast(b, dt)
        squeeze_a, squeeze_b = a.rank == 1, b.rank == 1
        if squeeze_a:
            a = self.reshape(a, (1, a.shape[0]))
        if squeeze_b:
            b = self.reshape(b, (b.shape[0], 1))
        batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        a = self.broadcast_to(a, batch + a.shape[-2:])
        b = self.broadcast_to(b, batch + b.shape[-2:])
        nb = len(batch)
        out = self.add(Op.DOT_GENERAL, [a, b], lhs_batch=list(range(nb)), rhs_batch=list(range(nb)),
                       lhs_contract=[nb + 1], rhs_contract=[nb])
        if squeeze_a:
            out = self.reshape(out, out.shape[:-2] + out.shape[-1:])
        if squeeze_b:
            out = self.reshape(out, out.shape[:-1])
        return out

    def take(self, x: Node, idx: Node, axis: int) -> Node:
        """x indexed by idx along axis; negative indices wrap, as in torch and numpy. Indexed by
        0, 1, ..., n-1 (positions: GPT-2's wpe(arange(s))), it is the first n rows: a slice, which
        the partitioner splits like any other dim (a lookup it would do vocab-parallel)."""
        axis %= x.rank
        n = arange_length(idx)
        if n is not None and n <= x.shape[axis]:
            rows = self.slice(x, axis, 0, n)
            return self.reshape(rows, x.shape[:axis] + idx.shape + x.shape[axis + 1:])
        idx = self.select(self.binary(Op.LT, idx, 0), self.binary(Op.ADD, idx, x.shape[axis]), idx)
        return self.add(Op.GATHER, [x, idx], axis=axis)

    # ---- added with the jax frontend: reverse, take-along-axis, sort, erf_inv ------------------
    def flip(self, x: Node, axes: Sequence[int]) -> Node:
        """x reversed along axes: a gather with a constant reversed index (the IR has no reverse)."""
        for axis in sorted({a % x.rank for a in axes}):
            n = x.shape[axis]
            if n > 1:
                rev = self.constant(np.arange(n - 1, -1, -1, dtype=np.int32), DType.i32)
                x = self.add(Op.GATHER, [x, rev], axis=axis)
        return x

    def take_along_axis(self, x: Node, idx: Node, axis: int) -> Node:
        """out[.., i, ..] = x[.., idx[.., i, ..], ..] (numpy take_along_axis, torch.gather); the
        other dims broadcast; indices must be in range (out-of-range ones clamp, as gather's)."""
        axis %= x.rank
        other = lambda s: s[:axis] + s[axis + 1:]
        batch = tuple(np.broadcast_shapes(other(x.shape), other(idx.shape)))
        x = self.broadcast_to(x, batch[:axis] + (x.shape[axis],) + batch[axis:])
        idx = self.broadcast_to(idx, batch[:axis] + (idx.shape[axis],) + batch[axis:])
        perm = [d for d in range(x.rank) if d != axis] + [axis]  # the gather axis goes last
        out = self.add(Op.GATHER, [self.transpose(x, perm), self.transpose(idx, perm)],
                       axis=x.rank - 1, batch_dims=x.rank - 1)
        return self.transpose(out, list(np.argsort(perm)))

    def sort(self, x: Node, axis: int = -1, descending: bool = False) -> tuple[Node, Node]:
        """(values, i64 indices) of a stable sort along axis; NaN sorts after every number (before,
        when descending), as in torch and jax. Ranks come from all n² pairwise comparisons: exact
        and shardable, meant for the short rows of routing and sampling, not for long ones."""
        axis %= x.rank
        n = x.shape[axis]
        perm = [d for d in range(x.rank) if d != axis] + [axis]
        xt = self.transpose(x, perm)
        key = self.cast(xt, DType.i32) if xt.dtype is DType.bool else xt
        shape = key.shape + (n,)  # [..., i, j]
        ki = self.broadcast_to(self.expand_dims(key, -1), shape)
        kj = self.broadcast_to(self.expand_dims(key, -2), shape)
        before = self.binary(Op.GT if descending else Op.LT, kj, ki)  # x_j strictly before x_i
        same = self.binary(Op.EQ, kj, ki)
        if key.dtype.is_float:
            nan_i, nan_j = self.binary(Op.NE, ki, ki), self.binary(Op.NE, kj, kj)
            first, second = (nan_j, nan_i) if descending else (nan_i, nan_j)
            before = self.binary(Op.OR, before, self.binary(Op.AND, first, self.unary(Op.NOT, second)))
            same = self.binary(Op.OR, same, self.binary(Op.AND, nan_i, nan_j))
        col, row = self.iota(shape, -1), self.iota(shape, -2)
        before = self.binary(Op.OR, before, self.binary(Op.AND, same, self.binary(Op.LT, col, row)))
        rank = self.reduce(Op.REDUCE_SUM, self.cast(before, DType.i64), -1)  # a permutation of 0..n-1
        hit = self.binary(Op.EQ, self.broadcast_to(self.expand_dims(rank, -2), shape), row)  # [..., r, i]
        order = self.reduce(Op.REDUCE_SUM, self.select(hit, col, 0), -1)  # [..., r]: source of rank r
        values = self.add(Op.GATHER, [xt, order], axis=xt.rank - 1, batch_dims=xt.rank - 1)
        inv = list(np.argsort(perm))
        return self.transpose(values, inv), self.transpose(order, inv)

    def erf_inv(self, x: Node) -> Node:
        """Inverse error function in f32 with Giles' single-precision polynomials, as XLA has it."""
        small_w = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
        large_w = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                   -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)
        dt, x = x.dtype, self.cast(x, DType.f32)
        w = self.unary(Op.NEG, self.unary(Op.LOG1P, self.unary(Op.NEG, self.binary(Op.MUL, x, x))))

        def horner(coeffs, t):
            p = self.const(coeffs[0], DType.f32, t.shape)
            for c in coeffs[1:]:
                p = self.binary(Op.ADD, self.binary(Op.MUL, p, t), c)
            return p

        p = self.select(self.binary(Op.LT, w, 5.0), horner(small_w, self.binary(Op.SUB, w, 2.5)),
                        horner(large_w, self.binary(Op.SUB, self.unary(Op.SQRT, w), 3.0)))
        out = self.select(self.binary(Op.EQ, self.unary(Op.ABS, x), 1.0),
                          self.binary(Op.MUL, x, math.inf), self.binary(Op.MUL, p, x))
        return self.cast(out, dt)


def arange_length(idx: Node) -> int | None:
    """n when idx holds 0, 1, ..., n-1 in order (an iota along its one dim longer than 1, maybe
    reshaped to add unit dims), else None."""
    x = idx
    while x.op is Op.RESHAPE and [d for d in x.shape if d != 1] == [d for d in x.inputs[0].shape if d != 1]:
        x = x.inputs[0]
    if x.op is not Op.IOTA or sum(d > 1 for d in x.shape) > 1:
        return None
    n = math.prod(x.shape)
    return n if n == 1 or x.shape[x.attrs["dimension"]] == n else None
