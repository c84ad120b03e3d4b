"""Rules for layout ops (views, slices, concatenation, padding, ...) and indexing (embedding,
gather/scatter, advanced indexing, index_put, slice_scatter). Part of torch_ops.RULES.

Overwriting scatters (scatter, index_put without accumulate) are built from the IR's
scatter-add; where indices repeat, the last update wins, as in torch's CPU kernels.
"""
from __future__ import annotations

import numpy as np

from ..ir import DType, Node, Op


# --------------------------------------------------------------------------------------- layout
def _view(e, x, shape):
    return e.reshape(x, list(shape))


def _permute(e, x, dims):
    return e.transpose(x, list(dims))


def _transpose(e, x, d0, d1):
    perm = list(range(x.rank))
    perm[d0 % x.rank], perm[d1 % x.rank] = perm[d1 % x.rank], perm[d0 % x.rank]
    return e.transpose(x, perm)


def _t(e, x):
    return x if x.rank < 2 else _transpose(e, x, 0, 1)


def _expand(e, x, size, implicit=False):
    off = len(size) - x.rank
    shape = [x.shape[i - off] if s == -1 else s for i, s in enumerate(size)]
    return e.broadcast_to(x, shape)


def _unsqueeze(e, x, dim):
    return e.expand_dims(x, dim)


def _squeeze(e, x, dim=None):
    dims = range(x.rank) if dim is None else [dim] if isinstance(dim, int) else dim
    dims = {d % max(x.rank, 1) for d in dims}
    return e.reshape(x, [s for d, s in enumerate(x.shape) if not (d in dims and s == 1)])


def _slice(e, x, dim=0, start=None, end=None, step=1):
    return e.slice(x, dim, start, end, step)


def _select(e, x, dim, index):
    dim %= x.rank
    index %= x.shape[dim]
    out = e.slice(x, dim, index, index + 1)
    return e.reshape(out, x.shape[:dim] + x.shape[dim + 1:])


def _narrow(e, x, dim, start, length):
    start += x.shape[dim % x.rank] if start < 0 else 0
    return e.slice(x, dim, start, start + length)


def _cat(e, tensors, dim=0):
    dt = e.out_dtype()
    rank = e.val.dim()
    xs = [e.cast(t, dt) for t in tensors if not (t.rank == 1 and t.shape[0] == 0 and rank != 1)]
    return e.concat(xs, dim % rank)


def _stack(e, tensors, dim=0):
    rank = tensors[0].rank + 1
    return _cat(e, [e.expand_dims(t, dim % rank) for t in tensors], dim % rank)


def _split_with_sizes(e, x, sizes, dim=0):
    out, start = [], 0
    for s in sizes:
        out.append(e.slice(x, dim, start, start + s))
        start += s
    return out


def _split(e, x, split_size, dim=0):
    if not isinstance(split_size, int):
        return _split_with_sizes(e, x, split_size, dim)
    n = x.shape[dim % x.rank]
    return _split_with_sizes(e, x, [min(split_size, n - i) for i in range(0, n, split_size)] or [0], dim)


def _chunk(e, x, chunks, dim=0):
    n = x.shape[dim % x.rank]
    return _split(e, x, max(-(-n // chunks), 1), dim)


def _unbind(e, x, dim=0):
    return [_select(e, x, dim, i) for i in range(x.shape[dim % x.rank])]


def _constant_pad_nd(e, x, pad, value=0):
    low, high = [0] * x.rank, [0] * x.rank
    for i in range(len(pad) // 2):  # pairs run from the last dim backwards
        low[x.rank - 1 - i], high[x.rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    value = bool(value) if x.dtype is DType.bool else int(value) if x.dtype.is_int else float(value)
    out = e.add(Op.PAD, [x], low=[max(l, 0) for l in low], high=[max(h, 0) for h in high], value=value)
    for d in range(x.rank):  # negative pads crop
        if low[d] < 0 or high[d] < 0:
            out = e.slice(out, d, max(-low[d], 0), out.shape[d] - max(-high[d], 0))
    return out


def _repeat(e, x, repeats):
    x = e.reshape(x, [1] * (len(repeats) - x.rank) + list(x.shape))
    spread = [v for s in x.shape for v in (1, s)]
    tiled = e.broadcast_to(e.reshape(x, spread), [v for r, s in zip(repeats, x.shape) for v in (r, s)])
    return e.reshape(tiled, [r * s for r, s in zip(repeats, x.shape)])


def _flip(e, x, dims):
    return e.flip(x, dims)


def _roll(e, x, shifts, dims=()):
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    if not dims:
        return e.reshape(_roll(e, e.reshape(x, [-1]), shifts, [0]), x.shape)
    for s, d in zip(shifts, [dims] if isinstance(dims, int) else dims):
        n = x.shape[d % x.rank]
        s %= max(n, 1)
        if s:
            x = e.concat([e.slice(x, d, n - s, n), e.slice(x, d, 0, n - s)], d % x.rank)
    return x


def _tri(upper: bool):
    def rule(e, x, diagonal=0):
        shape = x.shape[-2:]
        diff = e.binary(Op.SUB, e.iota(shape, 1), e.iota(shape, 0))  # col - row
        keep = e.binary(Op.GE if upper else Op.LE, diff, e.const(diagonal, DType.i64))
        return e.select(e.broadcast_to(keep, x.shape), x, e.const(0, x.dtype))
    return rule


# ------------------------------------------------------------------------------------ indexing
def _embedding(e, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return e.take(weight, indices, 0)


def _embedding_backward(e, grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    if scale_grad_by_freq:
        raise e.unsupported("scale_grad_by_freq=True")
    d = grad.shape[-1]
    idx = e.reshape(e.cast(indices, DType.i64), [-1])
    g = e.reshape(grad, [idx.shape[0], d])
    if padding_idx is not None and padding_idx >= 0:  # the padding row gets no gradient
        pad = e.broadcast_to(e.expand_dims(e.binary(Op.EQ, idx, e.const(padding_idx, DType.i64)), 1), g.shape)
        g = e.select(pad, e.const(0, g.dtype), g)
    return e.add(Op.SCATTER, [e.const(0, grad.dtype, (num_weights, d)), idx, g], axis=0)


def _index_select(e, x, dim, index):
    if x.rank == 0:  # a 0-d tensor indexes as a 1-element vector
        return e.reshape(e.take(e.reshape(x, [1]), e.reshape(index, [-1]), 0), e.out_shape())
    return e.take(x, e.reshape(index, [-1]), dim)


def _gather(e, x, dim, index, sparse_grad=False):
    dim %= x.rank
    for d in range(x.rank):  # torch reads the index-shaped corner of x in the other dims
        if d != dim and x.shape[d] != index.shape[d]:
            x = e.slice(x, d, 0, index.shape[d])
    return e.take_along_axis(x, index, dim)


def _scatter_dim(e, x, dim, index, src, accumulate: bool):
    """torch.scatter/scatter_add along dim: dim goes last and the other dims become the IR
    scatter's batch dims; where torch's index is smaller than x, index is padded with an
    out-of-range position (the IR scatter drops those updates)."""
    dim %= x.rank
    src = e.to(src, x.dtype)
    src = e.broadcast_to(src, index.shape) if src.rank == 0 else src
    for d in range(x.rank):
        if src.shape[d] != index.shape[d]:
            src = e.slice(src, d, 0, index.shape[d])
    perm = [d for d in range(x.rank) if d != dim] + [dim]
    xt, it, st = e.transpose(x, perm), e.transpose(e.cast(index, DType.i64), perm), e.transpose(src, perm)
    high = [a - b for a, b in zip(xt.shape[:-1], it.shape[:-1])] + [0]
    if any(high):
        low = [0] * x.rank
        it = e.add(Op.PAD, [it], low=low, high=high, value=int(xt.shape[-1]))
        st = e.add(Op.PAD, [st], low=low, high=high, value=_zero(st.dtype))
    b = x.rank - 1
    if accumulate:
        out = e.add(Op.SCATTER, [xt, it, st], axis=b, batch_dims=b)
    else:
        out = _overwrite(e, xt, it, st, b, b)
    return e.transpose(out, list(np.argsort(perm)))


def _overwrite(e, x, idx, upd, axis, batch_dims):
    """x with the positions idx names replaced by upd, from two scatter-adds and a select.
    Where indices repeat, the last update wins, as torch's CPU kernels write them in order."""
    later = _overwritten_later(e, idx, batch_dims)
    if later is not None:  # lay the [idx] mask over the update's dims and drop those updates
        b = batch_dims
        later = e.reshape(later, idx.shape[:b] + (1,) * (axis - b) + idx.shape[b:] + (1,) * (x.rank - axis - 1))
        upd = e.select(e.broadcast_to(later, upd.shape), e.const(_zero(upd.dtype), upd.dtype), upd)
    ones = e.const(1, DType.i32, upd.shape)
    hit = e.add(Op.SCATTER, [e.const(0, DType.i32, x.shape), idx, ones], axis=axis, batch_dims=batch_dims)
    vals = e.add(Op.SCATTER, [e.const(0, x.dtype, x.shape), idx, upd], axis=axis, batch_dims=batch_dims)
    return e.select(e.binary(Op.GT, hit, e.const(0, DType.i32)), vals, x)


def _overwritten_later(e, idx, b: int):
    """Bool [idx.shape]: a later update (row-major, within its batch) names the same position.
    All pairs are compared: meant for the short index lists of scatters and index_put."""
    lead, m = idx.shape[:b], int(np.prod(idx.shape[b:]))
    if m <= 1:
        return None
    flat = e.reshape(idx, lead + (m,))
    shape = lead + (m, m)  # [..., j, k]
    same = e.binary(Op.EQ, e.broadcast_to(e.expand_dims(flat, -1), shape),
                    e.broadcast_to(e.expand_dims(flat, -2), shape))
    later = e.binary(Op.GT, e.iota(shape, -1), e.iota(shape, -2))
    hits = e.cast(e.binary(Op.AND, same, later), DType.i32)
    return e.reshape(e.binary(Op.GT, e.reduce(Op.REDUCE_MAX, hits, -1), e.const(0, DType.i32)), idx.shape)


def _zero(dt: DType):
    return False if dt is DType.bool else 0 if dt.is_int else 0.0


def _scatter(e, x, dim, index, src, reduce=None):
    if reduce not in (None, "add"):
        raise e.unsupported(f"scatter with reduce={reduce!r}")
    return _scatter_dim(e, x, dim, index, src, reduce == "add")


def _scatter_add(e, x, dim, index, src):
    return _scatter_dim(e, x, dim, index, src, True)


def _scatter_reduce(e, x, dim, index, src, reduce, include_self=True):
    if reduce != "sum":
        raise e.unsupported(f"scatter_reduce with reduce={reduce!r}")
    if not include_self:  # the targeted positions start from zero
        x = _scatter_dim(e, x, dim, index, e.const(0, x.dtype, index.shape), False)
    return _scatter_dim(e, x, dim, index, src, True)


def _index_add(e, x, dim, index, source, alpha=1):
    dim %= x.rank
    if index.rank == 0:
        index = e.reshape(index, [1])
        source = e.expand_dims(source, dim) if source.rank < x.rank else source
    src = e.cast(source if alpha == 1 else e.arith(Op.MUL, source, alpha), x.dtype)
    return e.add(Op.SCATTER, [x, _wrap(e, index, x.shape[dim]), src], axis=dim)


def _wrap(e, idx, n):
    """Negative indices count from the end."""
    idx = e.cast(idx, DType.i64)
    return e.select(e.binary(Op.LT, idx, e.const(0, DType.i64)), e.binary(Op.ADD, idx, e.const(n, DType.i64)), idx)


def _index_plan(e, x, indices):
    """torch advanced indexing as one gather/scatter on one axis: the indexed dims merge into one
    (moved to the front first when they are not adjacent, where torch puts the result's index
    dims) and the broadcast index tensors linearize row-major into one index."""
    indices = list(indices) + [None] * (x.rank - len(indices))
    dims = [d for d, i in enumerate(indices) if i is not None]
    if any(indices[d].dtype is DType.bool for d in dims):
        raise e.unsupported("boolean mask indexing (its result shape depends on the data)")
    shape = tuple(np.broadcast_shapes(*(indices[d].shape for d in dims)))
    lin = None
    for d in dims:
        i = e.broadcast_to(_wrap(e, indices[d], x.shape[d]), shape)
        lin = i if lin is None else e.binary(Op.ADD, e.binary(Op.MUL, lin, e.const(x.shape[d], DType.i64)), i)
    adjacent = dims == list(range(dims[0], dims[-1] + 1))
    perm = list(range(x.rank)) if adjacent else dims + [d for d in range(x.rank) if d not in dims]
    xt = e.transpose(x, perm)
    axis = dims[0] if adjacent else 0
    merged = xt.shape[:axis] + (int(np.prod([x.shape[d] for d in dims])),) + xt.shape[axis + len(dims):]
    return e.reshape(xt, merged), lin, axis, perm, xt.shape


def _index(e, x, indices):
    xm, lin, axis, _, _ = _index_plan(e, x, indices)
    from .torch_moe_ops import repeated_rows
    return repeated_rows(e, xm, lin, axis) or e.add(Op.GATHER, [xm, lin], axis=axis)


def _index_put(e, x, indices, values, accumulate=False):
    xm, lin, axis, perm, xt_shape = _index_plan(e, x, indices)
    upd_shape = xm.shape[:axis] + lin.shape + xm.shape[axis + 1:]
    vals = e.broadcast_to(e.cast(values, x.dtype), upd_shape)
    if accumulate:
        out = e.add(Op.SCATTER, [xm, lin, vals], axis=axis)
    else:
        out = _overwrite(e, xm, lin, vals, axis, 0)
    return e.transpose(e.reshape(out, xt_shape), list(np.argsort(perm)))


def _along(e, v: Node, dim: int, shape) -> Node:
    """A 1-D vector laid along dim of shape."""
    return e.broadcast_to(e.reshape(v, [shape[d] if d == dim else 1 for d in range(len(shape))]), shape)


def _slice_scatter(e, x, src, dim=0, start=None, end=None, step=1):
    """x with x[..., start:end:step, ...] = src (the backward of slicing)."""
    dim %= x.rank
    n, m = x.shape[dim], src.shape[dim]
    start = slice(start, end, step).indices(n)[0]
    src = e.cast(src, x.dtype)
    if step == 1:
        low, high = [0] * x.rank, [0] * x.rank
        low[dim], high[dim] = start, n - start - m
        placed = e.add(Op.PAD, [src], low=low, high=high, value=_zero(x.dtype))
    else:
        idx = e.binary(Op.ADD, e.binary(Op.MUL, e.iota((m,), 0), e.const(step, DType.i64)), e.const(start, DType.i64))
        placed = e.add(Op.SCATTER, [e.const(0, x.dtype, x.shape), idx, src], axis=dim)
    if x.op is Op.CONSTANT and not isinstance(x.attrs["value"], np.ndarray) and x.attrs["value"] == 0:
        return placed  # scattering into zeros (as backward graphs do): the padding is the answer
    pos = e.iota((n,), 0)
    inside = e.binary(Op.AND, e.binary(Op.GE, pos, e.const(start, DType.i64)),
                      e.binary(Op.LT, pos, e.const(start + step * m, DType.i64)))
    if step != 1:
        on_step = e.binary(Op.EQ, e.binary(Op.REM, e.binary(Op.SUB, pos, e.const(start, DType.i64)),
                                           e.const(step, DType.i64)), e.const(0, DType.i64))
        inside = e.binary(Op.AND, inside, on_step)
    return e.select(_along(e, inside, dim, x.shape), placed, x)


def _select_scatter(e, x, src, dim, index):
    dim %= x.rank
    index += x.shape[dim] if index < 0 else 0
    return _slice_scatter(e, x, e.expand_dims(src, dim), dim, index, index + 1)


def rules(A) -> dict:
    return {
        A.view: _view, A._unsafe_view: _view, A.reshape: _view, A.permute: _permute,
        A.transpose: _transpose, A.t: _t, A.expand: _expand, A.unsqueeze: _unsqueeze,
        A.squeeze: _squeeze, A.slice: _slice, A.select: _select, A.narrow: _narrow, A.cat: _cat,
        A.stack: _stack, A.split: _split, A.split_with_sizes: _split_with_sizes, A.chunk: _chunk,
        A.unbind: _unbind, A.constant_pad_nd: _constant_pad_nd, A.repeat: _repeat, A.flip: _flip,
        A.roll: _roll, A.tril: _tri(False), A.triu: _tri(True),
        # indexing
        A.embedding: _embedding, A.embedding_dense_backward: _embedding_backward,
        A.index_select: _index_select, A.gather: _gather, A.scatter: _scatter,
        A.scatter_add: _scatter_add, A.scatter_reduce: _scatter_reduce, A.index_add: _index_add,
        A.index: _index, A.index_put: _index_put, A.slice_scatter: _slice_scatter,
        A.select_scatter: _select_scatter,
    }
