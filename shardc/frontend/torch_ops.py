"""The torch op table: one rule per core ATen op, mapping it onto the closed IR op set.

A rule is `rule(e, *args, **kwargs)` with the aten schema's arguments (FX nodes already replaced
by IR nodes) and returns an IR node, or a tuple/list of them for multi-output ops. `e` is a
TorchEmitter (torch_emitter.py), whose `e.val` is torch's own example output of the op, so rules
read their result dtype and shape instead of re-deriving torch's rules.

RULES below is the one table, keyed by aten overload packet (or overload, where overloads
differ). Elementwise, creation and bookkeeping rules live here; layout and indexing rules in
torch_layout.py, reductions, matmuls, nn ops, losses and backward ops in torch_nn.py, each
listing its entries in a `rules(aten)` fragment that RULES merges.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ir import DType, Node, Op
from . import torch_layout, torch_moe_ops, torch_nn, torch_special_ops, torch_vision_ops
from .torch_constrain import constraint_rule
from .torch_emitter import HALF
from .torch_pipeline_split import pipeline_split_rule


# ---------------------------------------------------------------------------------- elementwise
def _unary(op: Op):
    return lambda e, x: e.unary(op, x)


def _float_unary(op: Op):
    """exp, log, tanh, ...: integer inputs compute in the float result dtype."""
    return lambda e, x: e.unary(op, e.float_out(x))


def _binary(op: Op):
    return lambda e, a, b: e.arith(op, a, b)


def _add(e, a, b, alpha=1, op=Op.ADD):
    if alpha == 1 or not isinstance(b, Node):
        return e.arith(op, a, b if alpha == 1 else b * alpha)
    dt = e.out_dtype()
    if dt in HALF:  # torch: a + b * alpha fused in f32, alpha rounded to the half type
        alpha = float(np.array(alpha, dtype=dt.np).astype(np.float32))
        out = e.binary(op, e.to(a, DType.f32), e.binary(Op.MUL, e.to(b, DType.f32), alpha))
        return e.cast(out, dt)
    return e.arith(op, a, e.arith(Op.MUL, b, alpha, dt), dt)


def _sub(e, a, b, alpha=1):
    return _add(e, a, b, alpha, Op.SUB)


def _rsub(e, a, b, alpha=1):
    return _sub(e, b, a, alpha)


def _div(e, a, b, rounding_mode=None):
    dt = e.out_dtype()  # true division of ints is float32
    if rounding_mode == "floor" and dt.is_int:
        return e.floor_div(e.to(a, dt), e.to(b, dt))
    q = e.arith(Op.DIV, a, b, dt)  # ints: the IR's div truncates, as rounding_mode="trunc"
    if rounding_mode == "floor":
        return e.unary(Op.FLOOR, q)
    return _trunc(e, q) if rounding_mode == "trunc" else q


def _trunc(e, x):
    return x if not x.dtype.is_float else e.select(
        e.binary(Op.LT, x, 0.0), e.unary(Op.CEIL, x), e.unary(Op.FLOOR, x))


def _remainder(e, a, b):
    dt = e.result_type(a, b)
    return e.py_rem(e.to(a, dt), e.to(b, dt))


def _floor_divide(e, a, b):
    dt = e.result_type(a, b)
    return e.floor_div(e.to(a, dt), e.to(b, dt))


def _pow(e, a, b):
    """torch's pow kernel special-cases small exponents with multiplies in the tensor's dtype
    (x**3 rounds twice in bf16, once in f16); other exponents take one powf with the exponent
    rounded to the tensor's dtype."""
    dt = e.out_dtype()
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        x = e.cast(a, dt)
        if b == 1:
            return x
        if b == 2:
            return e.binary(Op.MUL, x, x)
        if b in (3, -2) and dt is DType.f16:  # f16 takes these in f32 (bf16 rounds each step)
            x = e.upcast(x)
        if b == 3:
            return e.cast(e.binary(Op.MUL, e.binary(Op.MUL, x, x), x), dt)
        if b == 0.5:
            return e.unary(Op.SQRT, x)
        if b == -0.5:
            return e.unary(Op.RSQRT, x)
        if b == -1:
            return e.arith(Op.DIV, 1.0, x)
        if b == -2:
            return e.cast(e.arith(Op.DIV, 1.0, e.binary(Op.MUL, x, x)), dt)
        if dt.is_int:
            if b < 0 or b != int(b):
                raise e.unsupported(f"integer power with exponent {b}")
            return _int_pow(e, x, int(b))
        return e.arith(Op.POW, x, float(b))
    if dt.is_int:
        raise e.unsupported("integer power with a tensor exponent")
    return e.arith(Op.POW, a, b, dt)


def _int_pow(e, x, n: int):
    out, base = e.const(1, x.dtype, x.shape), x
    while n:
        if n & 1:
            out = e.binary(Op.MUL, out, base)
        n >>= 1
        if n:
            base = e.binary(Op.MUL, base, base)
    return out


def _reciprocal(e, x):
    return e.arith(Op.DIV, 1.0, e.float_out(x))


def _sigmoid(e, x):
    return e.unary(Op.LOGISTIC, e.float_out(x))


def _silu(e, x):
    xc = e.upcast(x)
    return e.cast(e.binary(Op.MUL, xc, e.unary(Op.LOGISTIC, xc)), x.dtype)


def _gelu(e, x, approximate="none"):
    xc = e.upcast(x)
    if approximate == "tanh":
        inner = e.binary(Op.MUL, math.sqrt(2 / math.pi),
                         e.binary(Op.ADD, xc, e.binary(Op.MUL, 0.044715, _cube(e, xc))))
        cdf = e.binary(Op.MUL, 0.5, e.binary(Op.ADD, 1.0, e.unary(Op.TANH, inner)))
    else:
        cdf = e.binary(Op.MUL, 0.5, e.binary(Op.ADD, 1.0, e.unary(Op.ERF, e.binary(Op.MUL, xc, 1 / math.sqrt(2)))))
    return e.cast(e.binary(Op.MUL, xc, cdf), x.dtype)


def _cube(e, x):
    return e.binary(Op.MUL, e.binary(Op.MUL, x, x), x)


def _relu(e, x):
    return e.binary(Op.MAX, x, e.const(0, x.dtype))


def _leaky_relu(e, x, negative_slope=0.01):
    return e.select(e.binary(Op.GT, x, e.const(0, x.dtype)), x, e.arith(Op.MUL, x, negative_slope))


def _elu(e, x, alpha=1.0, scale=1.0, input_scale=1.0):
    xc = e.upcast(x)
    expm1 = e.binary(Op.SUB, e.unary(Op.EXP, e.binary(Op.MUL, xc, float(input_scale))), 1.0)
    neg = e.binary(Op.MUL, float(alpha * scale), expm1)
    return e.cast(e.select(e.binary(Op.GT, xc, 0.0), e.binary(Op.MUL, xc, float(scale)), neg), x.dtype)


def _softplus(e, x, beta=1, threshold=20):
    xc = e.upcast(x)
    bx = e.binary(Op.MUL, xc, float(beta))
    soft = e.binary(Op.DIV, e.unary(Op.LOG1P, e.unary(Op.EXP, bx)), float(beta))
    return e.cast(e.select(e.binary(Op.GT, bx, float(threshold)), xc, soft), x.dtype)


def _clamp(e, x, min=None, max=None):
    dt = e.out_dtype()
    x = e.cast(x, dt)
    if min is not None:
        x = e.binary(Op.MAX, x, e.to(min, dt))
    if max is not None:
        x = e.binary(Op.MIN, x, e.to(max, dt))
    return x


def _where(e, cond, a=None, b=None):
    if a is None:
        raise e.unsupported("where(cond) (nonzero: a data-dependent shape)")
    dt = e.out_dtype()
    return e.select(e.cast(cond, DType.bool), e.to(a, dt), e.to(b, dt))


def _masked_fill(e, x, mask, value):
    return e.select(e.cast(mask, DType.bool), e.to(value, x.dtype), x)


def _logical(op: Op):
    def rule(e, a, b):
        return e.binary(op, e.to(a, DType.bool), e.to(b, DType.bool))
    return rule


def _logical_not(e, x):
    return e.unary(Op.NOT, e.cast(x, DType.bool))


def _round(e, x, decimals=0):
    if decimals == 0:
        return e.unary(Op.ROUND, x)
    scale = 10.0 ** decimals
    return e.arith(Op.DIV, e.unary(Op.ROUND, e.arith(Op.MUL, x, scale)), scale)


def _isnan(e, x):
    return e.binary(Op.NE, x, x)


def _isinf(e, x):
    return e.binary(Op.EQ, e.unary(Op.ABS, x), e.const(math.inf, x.dtype)) if x.dtype.is_float \
        else e.const(False, DType.bool, x.shape)


def _exp_base(base: float):
    return lambda e, x: e.unary(Op.EXP, e.arith(Op.MUL, e.float_out(x), math.log(base)))


def _log_base(base: float):
    return lambda e, x: e.arith(Op.DIV, e.unary(Op.LOG, e.float_out(x)), math.log(base))


def _expm1(e, x):
    return e.arith(Op.SUB, e.unary(Op.EXP, e.float_out(x)), 1.0)


def _to_dtype(e, x, *args, **kwargs):
    """_to_copy, to, type_as, convert_element_type: a cast to torch's result dtype."""
    return e.cast(x, e.out_dtype())


def _identity(e, x, *args, **kwargs):
    """clone, alias, detach, contiguous, lift_fresh_copy: values, not memory."""
    return x


def _copy(e, dst, src, non_blocking=False):
    return e.broadcast_to(e.to(src, dst.dtype), dst.shape)


# ------------------------------------------------------------------------------------- creation
def _fill(value_at: int | None, default=None):
    """full, zeros, ones, empty, *_like, new_*, scalar_tensor: a splat of torch's result type."""
    def rule(e, *args, **kwargs):
        value = default if value_at is None else args[value_at] if len(args) > value_at else kwargs["fill_value"]
        dt, shape = e.out_dtype(), e.out_shape()
        if isinstance(value, Node):  # fill.Tensor
            return e.broadcast_to(e.cast(value, dt), shape)
        return e.const(value, dt, shape)
    return rule


def _arange(e, *args, **kwargs):
    start, step = (args[0], args[2] if len(args) > 2 else 1) if len(args) > 1 else (0, 1)
    dt, (n,) = e.out_dtype(), e.out_shape()
    cdt = DType.f32 if dt in HALF else DType.i64 if dt.is_int else dt
    out = e.cast(e.iota((n,), 0), cdt)
    if step != 1:
        out = e.binary(Op.MUL, out, e.const(step, cdt))
    if start != 0:
        out = e.binary(Op.ADD, out, e.const(start, cdt))
    return e.cast(out, dt)


# --------------------------------------------------------------------------------- bookkeeping
def _nothing(e, *args, **kwargs):
    """Asserts and shape-constraint markers: no value."""
    return None


def _sym_size(e, x, dim):
    return x.shape[dim]


def _sym_numel(e, x):
    return x.size


def _random(e, *args, **kwargs):
    raise e.unsupported("random number generation (the graph must be deterministic)")


# ------------------------------------------------------------------------------------ the table
def _build_rules():
    A = torch.ops.aten
    rules = {
        # elementwise arithmetic
        A.add: _add, A.sub: _sub, A.rsub: _rsub, A.mul: _binary(Op.MUL), A.div: _div,
        A.true_divide: _div, A.floor_divide: _floor_divide, A.remainder: _remainder,
        A.fmod: _binary(Op.REM), A.pow: _pow, A.maximum: _binary(Op.MAX), A.minimum: _binary(Op.MIN),
        A.neg: _unary(Op.NEG), A.abs: _unary(Op.ABS), A.sign: _unary(Op.SIGN),
        A.exp: _float_unary(Op.EXP), A.log: _float_unary(Op.LOG), A.log1p: _float_unary(Op.LOG1P),
        A.sqrt: _float_unary(Op.SQRT), A.rsqrt: _float_unary(Op.RSQRT), A.tanh: _float_unary(Op.TANH),
        A.erf: _float_unary(Op.ERF), A.sin: _float_unary(Op.SIN), A.cos: _float_unary(Op.COS),
        A.floor: _unary(Op.FLOOR), A.ceil: _unary(Op.CEIL), A.round: _round, A.trunc: _trunc,
        A.exp2: _exp_base(2.0), A.log2: _log_base(2.0), A.log10: _log_base(10.0), A.expm1: _expm1,
        A.reciprocal: _reciprocal, A.sigmoid: _sigmoid, A.silu: _silu, A.gelu: _gelu, A.relu: _relu,
        A.leaky_relu: _leaky_relu, A.elu: _elu, A.softplus: _softplus,
        A.hardtanh: lambda e, x, lo=-1.0, hi=1.0: _clamp(e, x, lo, hi),
        A.clamp: _clamp, A.clamp_min: lambda e, x, m: _clamp(e, x, m, None),
        A.clamp_max: lambda e, x, m: _clamp(e, x, None, m),
        A.erfinv: lambda e, x: e.erf_inv(e.float_out(x)), A.isnan: _isnan, A.isinf: _isinf,
        # compare, select, logic
        A.eq: _binary(Op.EQ), A.ne: _binary(Op.NE), A.lt: _binary(Op.LT), A.le: _binary(Op.LE),
        A.gt: _binary(Op.GT), A.ge: _binary(Op.GE), A.where: _where, A.masked_fill: _masked_fill,
        A.logical_and: _logical(Op.AND), A.logical_or: _logical(Op.OR), A.logical_xor: _logical(Op.XOR),
        A.logical_not: _logical_not, A.bitwise_and: _binary(Op.AND), A.bitwise_or: _binary(Op.OR),
        A.bitwise_xor: _binary(Op.XOR), A.bitwise_not: _unary(Op.NOT),
        A.bitwise_left_shift: _binary(Op.SHL), A.bitwise_right_shift: _binary(Op.SHR),
        A.__lshift__: _binary(Op.SHL), A.__rshift__: _binary(Op.SHR), A.__and__: _binary(Op.AND),
        A.__or__: _binary(Op.OR), A.__xor__: _binary(Op.XOR),
        # dtype and identity
        A._to_copy: _to_dtype, A.to: _to_dtype, A.type_as: _to_dtype, A.clone: _identity,
        A.alias: _identity, A.detach: _identity, A.contiguous: _identity, A.lift_fresh_copy: _identity,
        A.lift_fresh: _identity, A.copy: _copy, torch.ops.prims.convert_element_type: _to_dtype,
        # creation
        A.full: _fill(1), A.full_like: _fill(1), A.new_full: _fill(2), A.scalar_tensor: _fill(0),
        A.fill: _fill(1), A.zeros: _fill(None, 0), A.zeros_like: _fill(None, 0),
        A.new_zeros: _fill(None, 0), A.zero: _fill(None, 0), A.ones: _fill(None, 1),
        A.ones_like: _fill(None, 1), A.new_ones: _fill(None, 1), A.empty: _fill(None, 0),
        A.empty_like: _fill(None, 0), A.empty_strided: _fill(None, 0), A.empty_permuted: _fill(None, 0),
        A.new_empty: _fill(None, 0), A.new_empty_strided: _fill(None, 0), A.arange: _arange,
        # bookkeeping
        A._assert_tensor_metadata: _nothing, A._assert_scalar: _nothing, A._assert_async: _nothing,
        A.sym_constrain_range: _nothing, A.sym_constrain_range_for_size: _nothing,
        A._functional_sym_constrain_range: _nothing, A._functional_sym_constrain_range_for_size: _nothing,
        A.sym_size.int: _sym_size, A.sym_numel: _sym_numel,
        A.rand: _random, A.rand_like: _random, A.randn: _random, A.randn_like: _random,
        A.randint: _random, A.bernoulli: _random, A.uniform: _random, A.normal: _random,
    }
    rules[torch.ops.shardc.constrain] = constraint_rule
    rules[torch.ops.shardc.pipeline_split] = pipeline_split_rule
    rules.update(torch_layout.rules(A))
    rules.update(torch_nn.rules(A))
    rules.update(torch_moe_ops.rules(A))
    rules.update(torch_vision_ops.rules(A, torch_layout.rules(A)[A.scatter_reduce]))
    rules.update(torch_special_ops.rules(A, rules[A.scatter_reduce], rules[A.index_put]))
    # functionalized graphs may name view ops view_copy, permute_copy, ...: same values
    for name in ("view", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "slice",
                 "select", "alias", "split", "split_with_sizes", "unbind"):
        rules[getattr(A, name + "_copy")] = rules[getattr(A, name)]
    return rules


RULES = _build_rules()

# Ops torch.export/make_fx should keep whole rather than decompose: their rules compute the way
# torch's eager CPU kernels do (half floats in f32 inside, rounded once), where core ATen's
# decompositions round after every step; training graphs then agree with eager torch.
KEEP_WHOLE = frozenset(getattr(torch.ops.aten, name) for name in (
    "_softmax_backward_data", "_log_softmax_backward_data", "native_layer_norm_backward",
    "gelu_backward", "silu", "silu_backward", "sigmoid_backward", "tanh_backward",
    "threshold_backward", "embedding_dense_backward", "nll_loss_forward", "nll_loss_backward",
    "mse_loss", "mse_loss_backward"))


def lookup(target):
    """The rule for an aten OpOverload: by overload first (aten.var.correction), then by packet."""
    rule = RULES.get(target)
    if rule is None and hasattr(target, "overloadpacket"):
        rule = RULES.get(target.overloadpacket)
    return rule
