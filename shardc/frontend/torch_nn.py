"""Rules for torch's nn-level ops, the backward ops core ATen leaves in training graphs, and
indexing (embedding, gather/scatter, advanced indexing). Registered by torch_ops.RULES.

Norms, softmax and gelu compute half-float inputs in f32 and round once, as torch's CPU kernels
do. Overwriting scatters (scatter, index_put without accumulate) are built from the IR's
scatter-add: duplicate indices add up where torch keeps an unspecified one of them.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import DType, Node, Op


# ------------------------------------------------------------------------------ softmax, norms
def _softmax(e, x, dim, half_to_float=False):
    return e.cast(e.softmax(e.upcast(x), dim), e.out_dtype())


def _log_softmax(e, x, dim, half_to_float=False):
    return e.cast(e.log_softmax(e.upcast(x), dim), e.out_dtype())


def _softmax_backward(e, grad, out, dim, input_dtype):
    gy = e.binary(Op.MUL, e.upcast(grad), e.upcast(out))
    s = e.reduce(Op.REDUCE_SUM, gy, dim, keepdims=True)
    return e.cast(e.binary(Op.SUB, gy, e.binary(Op.MUL, e.upcast(out), s)), e.out_dtype())


def _log_softmax_backward(e, grad, out, dim, input_dtype):
    g = e.upcast(grad)
    s = e.reduce(Op.REDUCE_SUM, g, dim, keepdims=True)
    return e.cast(e.binary(Op.SUB, g, e.binary(Op.MUL, e.unary(Op.EXP, e.upcast(out)), s)), e.out_dtype())


def _layer_norm(e, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = list(range(x.rank - len(normalized_shape), x.rank))
    xc = e.upcast(x)
    mean = e.mean(xc, axes, keepdims=True)
    xm = e.binary(Op.SUB, xc, mean)
    rstd = e.unary(Op.RSQRT, e.binary(Op.ADD, e.mean(e.binary(Op.MUL, xm, xm), axes, keepdims=True), float(eps)))
    y = e.binary(Op.MUL, xm, rstd)
    if weight is not None:
        y = e.binary(Op.MUL, y, e.upcast(weight))
    if bias is not None:
        y = e.binary(Op.ADD, y, e.upcast(bias))
    return e.cast(y, x.dtype), mean, rstd


def _layer_norm_backward(e, grad, x, normalized_shape, mean, rstd, weight, bias, output_mask):
    axes = list(range(x.rank - len(normalized_shape), x.rank))
    lead = list(range(x.rank - len(normalized_shape)))
    n = float(np.prod(normalized_shape))
    g, mean, rstd = e.upcast(grad), e.upcast(mean), e.upcast(rstd)
    x_hat = e.binary(Op.MUL, e.binary(Op.SUB, e.upcast(x), mean), rstd)
    gw = g if weight is None else e.binary(Op.MUL, g, e.upcast(weight))
    a = e.reduce(Op.REDUCE_SUM, gw, axes, keepdims=True)
    b = e.reduce(Op.REDUCE_SUM, e.binary(Op.MUL, gw, x_hat), axes, keepdims=True)
    inner = e.binary(Op.SUB, e.binary(Op.SUB, e.binary(Op.MUL, gw, n), a), e.binary(Op.MUL, x_hat, b))
    dx = e.cast(e.binary(Op.MUL, e.binary(Op.DIV, rstd, n), inner), x.dtype) if output_mask[0] else None
    dw = db = None
    if output_mask[1] and weight is not None:
        dw = e.cast(e.reduce(Op.REDUCE_SUM, e.binary(Op.MUL, g, x_hat), lead), weight.dtype)
    if output_mask[2] and bias is not None:
        db = e.cast(e.reduce(Op.REDUCE_SUM, g, lead), bias.dtype)
    return dx, dw, db


def _batch_norm_eval(e, x, weight, bias, running_mean, running_var, momentum, eps):
    """Inference batch norm over channel dim 1 with the running statistics."""
    def per_channel(v):
        return e.reshape(e.upcast(v), [1, x.shape[1]] + [1] * (x.rank - 2))
    xc = e.upcast(x)
    y = e.binary(Op.MUL, e.binary(Op.SUB, xc, per_channel(running_mean)),
                 e.unary(Op.RSQRT, e.binary(Op.ADD, per_channel(running_var), float(eps))))
    if weight is not None:
        y = e.binary(Op.MUL, y, per_channel(weight))
    if bias is not None:
        y = e.binary(Op.ADD, y, per_channel(bias))
    empty = lambda i: e.const(0, e.out_dtype(i), e.out_shape(i))
    return e.cast(y, x.dtype), empty(1), empty(2)


def _native_batch_norm(e, x, weight, bias, running_mean, running_var, training, momentum, eps):
    if training:
        raise e.unsupported("batch norm in training mode (call module.eval())")
    return _batch_norm_eval(e, x, weight, bias, running_mean, running_var, momentum, eps)


# ------------------------------------------------------------------- elementwise backward ops
def _gelu_backward(e, grad, x, approximate="none"):
    g, xc = e.upcast(grad), e.upcast(x)
    if approximate == "tanh":
        beta, kappa = math.sqrt(2 / math.pi), 0.044715
        x_sq = e.binary(Op.MUL, xc, xc)
        inner = e.binary(Op.MUL, beta, e.binary(Op.ADD, xc, e.binary(Op.MUL, kappa, e.binary(Op.MUL, x_sq, xc))))
        t = e.unary(Op.TANH, inner)
        left = e.binary(Op.MUL, 0.5, e.binary(Op.ADD, 1.0, t))
        dinner = e.binary(Op.MUL, beta, e.binary(Op.ADD, 1.0, e.binary(Op.MUL, 3 * kappa, x_sq)))
        right = e.binary(Op.MUL, e.binary(Op.MUL, 0.5, xc),
                         e.binary(Op.MUL, e.binary(Op.SUB, 1.0, e.binary(Op.MUL, t, t)), dinner))
        d = e.binary(Op.ADD, left, right)
    else:
        cdf = e.binary(Op.MUL, 0.5, e.binary(Op.ADD, 1.0, e.unary(Op.ERF, e.binary(Op.MUL, xc, 1 / math.sqrt(2)))))
        pdf = e.binary(Op.MUL, 1 / math.sqrt(2 * math.pi),
                       e.unary(Op.EXP, e.binary(Op.MUL, -0.5, e.binary(Op.MUL, xc, xc))))
        d = e.binary(Op.ADD, cdf, e.binary(Op.MUL, xc, pdf))
    return e.cast(e.binary(Op.MUL, g, d), grad.dtype)


def _tanh_backward(e, grad, y):
    yc = e.upcast(y)
    return e.cast(e.binary(Op.MUL, e.upcast(grad), e.binary(Op.SUB, 1.0, e.binary(Op.MUL, yc, yc))), grad.dtype)


def _sigmoid_backward(e, grad, y):
    yc = e.upcast(y)
    return e.cast(e.binary(Op.MUL, e.upcast(grad), e.binary(Op.MUL, yc, e.binary(Op.SUB, 1.0, yc))), grad.dtype)


def _silu_backward(e, grad, x):
    xc = e.upcast(x)
    s = e.unary(Op.LOGISTIC, xc)
    d = e.binary(Op.MUL, s, e.binary(Op.ADD, 1.0, e.binary(Op.MUL, xc, e.binary(Op.SUB, 1.0, s))))
    return e.cast(e.binary(Op.MUL, e.upcast(grad), d), grad.dtype)


def _threshold_backward(e, grad, x, threshold):
    return e.select(e.arith(Op.LE, x, threshold), e.const(0, grad.dtype), grad)


def _native_dropout(e, x, p, train):
    if train is not False and p > 0:
        raise e.unsupported(f"random dropout (p={p}; call module.eval() or set p=0)")
    return x, e.const(True, DType.bool, x.shape)


# ------------------------------------------------------------------------------------- losses
def _nll_setup(e, x, target, weight, ignore_index):
    """(x as [N, C], safe targets [N], per-row weights [N] with ignored rows 0)."""
    if x.rank > 2:
        raise e.unsupported(f"nll_loss of a rank-{x.rank} input")
    x2 = e.reshape(x, [1, x.shape[0]]) if x.rank == 1 else x
    t = e.reshape(e.cast(target, DType.i64), [x2.shape[0]])
    valid = e.binary(Op.NE, t, e.const(ignore_index, DType.i64))
    t = e.select(valid, t, e.const(0, DType.i64))
    w = e.cast(valid, x.dtype)
    if weight is not None:
        w = e.binary(Op.MUL, w, e.add(Op.GATHER, [e.cast(weight, x.dtype), t], axis=0))
    return x2, t, w


def _nll_loss(e, x, target, weight=None, reduction=1, ignore_index=-100):
    x2, t, w = _nll_setup(e, x, target, weight, ignore_index)
    picked = e.reshape(e.take_along_axis(x2, e.expand_dims(t, 1), 1), [x2.shape[0]])
    losses = e.unary(Op.NEG, e.binary(Op.MUL, picked, w))
    total = e.reduce(Op.REDUCE_SUM, w, None)
    if reduction == 0:
        out = e.reshape(losses, e.out_shape(0))
    elif reduction == 2:
        out = e.reduce(Op.REDUCE_SUM, losses, None)
    else:
        out = e.binary(Op.DIV, e.reduce(Op.REDUCE_SUM, losses, None), total)
    return out, total


def _nll_loss_backward(e, grad, x, target, weight, reduction, ignore_index, total_weight):
    x2, t, w = _nll_setup(e, x, target, weight, ignore_index)
    g = e.cast(grad, x.dtype)
    if reduction == 0:
        g = e.reshape(g, [x2.shape[0]])
    elif reduction == 1:
        g = e.binary(Op.DIV, g, e.cast(total_weight, x.dtype))
    coef = e.unary(Op.NEG, e.binary(Op.MUL, w, g))  # [N]
    hit = e.binary(Op.EQ, e.iota(x2.shape, 1), e.broadcast_to(e.expand_dims(t, 1), x2.shape))
    out = e.select(hit, e.broadcast_to(e.expand_dims(coef, 1), x2.shape), e.const(0, x.dtype))
    return e.reshape(out, x.shape)


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
    """x with the positions idx names replaced by upd, from two scatter-adds and a select."""
    ones = e.const(1, DType.i32, upd.shape)
    hit = e.add(Op.SCATTER, [e.const(0, DType.i32, x.shape), idx, ones], axis=axis, batch_dims=batch_dims)
    vals = e.add(Op.SCATTER, [e.const(0, x.dtype, x.shape), idx, upd], axis=axis, batch_dims=batch_dims)
    return e.select(e.binary(Op.GT, hit, e.const(0, DType.i32)), vals, x)


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
    return e.add(Op.GATHER, [xm, lin], axis=axis)


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
        A._softmax: _softmax, A._log_softmax: _log_softmax, A._softmax_backward_data: _softmax_backward,
        A._log_softmax_backward_data: _log_softmax_backward, A.native_layer_norm: _layer_norm,
        A.native_layer_norm_backward: _layer_norm_backward,
        A._native_batch_norm_legit_no_training: _batch_norm_eval, A.native_batch_norm: _native_batch_norm,
        A.gelu_backward: _gelu_backward, A.tanh_backward: _tanh_backward,
        A.sigmoid_backward: _sigmoid_backward, A.silu_backward: _silu_backward,
        A.threshold_backward: _threshold_backward, A.native_dropout: _native_dropout,
        A.nll_loss_forward: _nll_loss, A.nll_loss_backward: _nll_loss_backward,
        A.embedding: _embedding, A.embedding_dense_backward: _embedding_backward,
        A.index_select: _index_select, A.gather: _gather, A.scatter: _scatter,
        A.scatter_add: _scatter_add, A.scatter_reduce: _scatter_reduce, A.index_add: _index_add,
        A.index: _index, A.index_put: _index_put, A.slice_scatter: _slice_scatter,
        A.select_scatter: _select_scatter,
    }
