"""Rules for reductions, matmuls, nn-level ops (softmax, norms, dropout), losses and the
backward ops core ATen leaves in training graphs. Part of torch_ops.RULES.

Norms, softmax and gelu compute half-float inputs in f32 and round once, as torch's CPU kernels
do.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import DType, Node, Op
from .torch_emitter import HALF, reduce_dims


# ----------------------------------------------------------------------------------- reductions
def _sum(e, x, dim=None, keepdim=False, dtype=None):
    x = e.cast(x, e.out_dtype())
    return e.reduce(Op.REDUCE_SUM, x, reduce_dims(x, dim), keepdim)


def _mean(e, x, dim=None, keepdim=False, dtype=None):
    dt = e.out_dtype()
    return e.cast(e.mean(e.upcast(e.cast(x, dt)), reduce_dims(x, dim), keepdim), dt)


def _reduce(op: Op):
    return lambda e, x, dim=None, keepdim=False: e.reduce(op, x, reduce_dims(x, dim), keepdim)


def _max_min(largest: bool):
    """max.default (all), max.dim (values, indices) and max.other (elementwise)."""
    def rule(e, x, dim=None, keepdim=False):
        if isinstance(dim, Node):
            return e.arith(Op.MAX if largest else Op.MIN, x, dim)
        op = Op.REDUCE_MAX if largest else Op.REDUCE_MIN
        if dim is None:
            return e.reduce(op, x, None)
        return e.reduce(op, x, dim, keepdim), e.argmax(x, dim, keepdim, largest)
    return rule


def _argmax(largest: bool):
    def rule(e, x, dim=None, keepdim=False):
        if dim is None:
            out = e.argmax(e.reshape(x, [-1]), 0, False, largest)
            return e.reshape(out, [1] * x.rank) if keepdim else out
        return e.argmax(x, dim, keepdim, largest)
    return rule


def _any_all(is_any: bool):
    def rule(e, x, dim=None, keepdim=False):
        flag = e.cast(e.cast(x, DType.bool), DType.i32)
        r = e.reduce(Op.REDUCE_MAX if is_any else Op.REDUCE_MIN, flag, reduce_dims(x, dim), keepdim)
        return e.binary(Op.NE, r, e.const(0, DType.i32))
    return rule


def _variance(e, x, dim, correction, keepdim):
    xc = e.upcast(x)
    dims = reduce_dims(x, dim)
    m = e.mean(xc, dims, keepdims=True)
    d = e.binary(Op.SUB, xc, m)
    ss = e.reduce(Op.REDUCE_SUM, e.binary(Op.MUL, d, d), dims, keepdim)
    n = x.size // max(ss.size, 1)  # elements per reduced group
    correction = 1 if correction is None else correction
    return e.binary(Op.DIV, ss, float(max(n - correction, 0))), (m if keepdim else e.reshape(m, ss.shape))


def _var(e, x, dim=None, correction=None, keepdim=False):
    return e.cast(_variance(e, x, dim, correction, keepdim)[0], x.dtype)


def _std(e, x, dim=None, correction=None, keepdim=False):
    return e.cast(e.unary(Op.SQRT, _variance(e, x, dim, correction, keepdim)[0]), x.dtype)


def _var_mean(e, x, dim=None, correction=None, keepdim=False):
    v, m = _variance(e, x, dim, correction, keepdim)
    return e.cast(v, x.dtype), e.cast(m, x.dtype)


def _logsumexp(e, x, dim, keepdim=False):
    xc = e.upcast(e.float_out(x))
    dims = reduce_dims(x, dim)
    m = e.reduce(Op.REDUCE_MAX, xc, dims, keepdims=True)
    m = e.select(e.binary(Op.EQ, e.unary(Op.ABS, m), math.inf), e.const(0.0, m.dtype, m.shape), m)
    s = e.reduce(Op.REDUCE_SUM, e.unary(Op.EXP, e.binary(Op.SUB, xc, m)), dims, keepdims=True)
    out = e.binary(Op.ADD, e.unary(Op.LOG, s), m)
    return e.cast(out if keepdim else e.reshape(out, e.out_shape()), e.out_dtype())


def _cumsum(e, x, dim, dtype=None):
    return e.cumsum(e.cast(x, e.out_dtype()), dim)


def _topk(e, x, k, dim=-1, largest=True, sorted=True):
    return e.top_k(x, k, dim, largest)


def _sort(e, x, dim=-1, descending=False, stable=None):
    return e.sort(x, dim, descending)


def _vector_norm(e, x, ord=2, dim=None, keepdim=False, dtype=None):
    dt = e.out_dtype()
    xc = e.upcast(e.cast(x, dt))
    dims = reduce_dims(x, dim)
    a = e.unary(Op.ABS, xc)
    if ord == math.inf:
        out = e.reduce(Op.REDUCE_MAX, a, dims, keepdim)
    elif ord == -math.inf:
        out = e.reduce(Op.REDUCE_MIN, a, dims, keepdim)
    elif ord == 0:
        out = e.reduce(Op.REDUCE_SUM, e.cast(e.binary(Op.NE, a, 0.0), a.dtype), dims, keepdim)
    elif ord == 1:
        out = e.reduce(Op.REDUCE_SUM, a, dims, keepdim)
    elif ord == 2:
        out = e.unary(Op.SQRT, e.reduce(Op.REDUCE_SUM, e.binary(Op.MUL, a, a), dims, keepdim))
    else:
        p = float(ord)
        out = e.binary(Op.POW, e.reduce(Op.REDUCE_SUM, e.binary(Op.POW, a, p), dims, keepdim), 1.0 / p)
    return e.cast(out, dt)


# ------------------------------------------------------------------------------------- matmuls
def _mm(e, a, b):
    return e.matmul(a, b)


def _addmm(e, bias, a, b, beta=1, alpha=1):
    """bias + a @ b. torch adds a half-float bias to the f32 accumulator and rounds once, so
    half floats take the product in f32 (exact upcasts; a kernel can keep bf16 loads)."""
    dt = e.out_dtype()
    if dt in HALF:
        a, b, bias = e.upcast(a), e.upcast(b), e.upcast(bias)
    out = e.matmul(a, b)
    if alpha != 1:
        out = e.binary(Op.MUL, out, float(alpha) if out.dtype.is_float else alpha)
    if beta != 0:  # torch ignores the bias (even NaNs in it) when beta is 0
        out = e.binary(Op.ADD, bias if beta == 1 else e.binary(Op.MUL, bias, beta), out)
    return e.cast(out, dt)


def _linear(e, x, weight, bias=None):
    out = e.matmul(x, e.transpose(weight, [1, 0]) if weight.rank == 2 else weight)
    return out if bias is None else e.arith(Op.ADD, out, bias)


# ------------------------------------------------------------------------------ softmax, norms
def _softmax(e, x, dim, half_to_float=False):
    return e.cast(e.softmax(e.upcast(x), dim), e.out_dtype())


def _log_softmax(e, x, dim, half_to_float=False):
    dt = e.out_dtype()
    if x.dtype in HALF and dt == x.dtype and dim % x.rank == x.rank - 1:
        # torch's last-dim kernel for half floats rounds the sum of exps, and its log, to the
        # half type before subtracting (other dims compute in f32 and round once)
        xc = e.upcast(x)
        shifted = e.binary(Op.SUB, xc, e.reduce(Op.REDUCE_MAX, xc, dim, keepdims=True))
        total = e.reduce(Op.REDUCE_SUM, e.unary(Op.EXP, shifted), dim, keepdims=True)
        lse = e.upcast(e.cast(e.unary(Op.LOG, e.upcast(e.cast(total, dt))), dt))
        return e.cast(e.binary(Op.SUB, shifted, lse), dt)
    return e.cast(e.log_softmax(e.upcast(x), dim), dt)


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
    """(x as [N, C] in the compute type, safe targets [N], per-row weights [N], ignored rows 0)."""
    if x.rank > 2:
        raise e.unsupported(f"nll_loss of a rank-{x.rank} input")
    x2 = e.upcast(e.reshape(x, [1, x.shape[0]]) if x.rank == 1 else x)
    t = e.reshape(e.cast(target, DType.i64), [x2.shape[0]])
    valid = e.binary(Op.NE, t, e.const(ignore_index, DType.i64))
    t = e.select(valid, t, e.const(0, DType.i64))
    w = e.cast(valid, x2.dtype)
    if weight is not None:
        w = e.binary(Op.MUL, w, e.add(Op.GATHER, [e.cast(weight, x2.dtype), t], axis=0))
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
    return e.cast(out, x.dtype), e.cast(total, x.dtype)


def _nll_loss_backward(e, grad, x, target, weight, reduction, ignore_index, total_weight):
    x2, t, w = _nll_setup(e, x, target, weight, ignore_index)
    g = e.cast(grad, x2.dtype)
    if reduction == 0:
        g = e.reshape(g, [x2.shape[0]])
    elif reduction == 1:
        g = e.binary(Op.DIV, g, e.cast(total_weight, x2.dtype))
    coef = e.unary(Op.NEG, e.binary(Op.MUL, w, g))  # [N]
    hit = e.binary(Op.EQ, e.iota(x2.shape, 1), e.broadcast_to(e.expand_dims(t, 1), x2.shape))
    out = e.select(hit, e.broadcast_to(e.expand_dims(coef, 1), x2.shape), e.const(0, x2.dtype))
    return e.cast(e.reshape(out, x.shape), x.dtype)


def _mse_loss(e, x, y, reduction=1):
    d = e.binary(Op.SUB, e.upcast(x), e.upcast(y))
    sq = e.binary(Op.MUL, d, d)
    out = sq if reduction == 0 else e.reduce(Op.REDUCE_SUM, sq, None) if reduction == 2 else e.mean(sq, None)
    return e.cast(out, e.out_dtype())


def _mse_loss_backward(e, grad, x, y, reduction=1):
    d = e.binary(Op.SUB, e.upcast(x), e.upcast(y))
    scale = 2.0 / x.size if reduction == 1 else 2.0
    return e.cast(e.binary(Op.MUL, e.binary(Op.MUL, d, scale), e.upcast(grad)), e.out_dtype())

def rules(A) -> dict:
    return {
        # reductions and scans
        A.sum: _sum, A.mean: _mean, A.amax: _reduce(Op.REDUCE_MAX), A.amin: _reduce(Op.REDUCE_MIN),
        A.max: _max_min(True), A.min: _max_min(False), A.argmax: _argmax(True), A.argmin: _argmax(False),
        A.any: _any_all(True), A.all: _any_all(False), A.var.correction: _var, A.std.correction: _std,
        A.var_mean.correction: _var_mean, A.logsumexp: _logsumexp, A.cumsum: _cumsum, A.topk: _topk,
        A.sort: _sort, A.linalg_vector_norm: _vector_norm,
        # matmul
        A.mm: _mm, A.bmm: _mm, A.matmul: _mm, A.dot: _mm, A.mv: _mm, A.addmm: _addmm, A.baddbmm: _addmm,
        A.linear: _linear,
        # nn, losses, backward
        A._softmax: _softmax, A._log_softmax: _log_softmax, A._softmax_backward_data: _softmax_backward,
        A._log_softmax_backward_data: _log_softmax_backward, A.native_layer_norm: _layer_norm,
        A.native_layer_norm_backward: _layer_norm_backward,
        A._native_batch_norm_legit_no_training: _batch_norm_eval, A.native_batch_norm: _native_batch_norm,
        A.gelu_backward: _gelu_backward, A.tanh_backward: _tanh_backward,
        A.sigmoid_backward: _sigmoid_backward, A.silu_backward: _silu_backward,
        A.threshold_backward: _threshold_backward, A.native_dropout: _native_dropout,
        A.nll_loss_forward: _nll_loss, A.nll_loss_backward: _nll_loss_backward, A.mse_loss: _mse_loss,
        A.mse_loss_backward: _mse_loss_backward,
    }
