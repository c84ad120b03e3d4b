"""The torch op table: one rule per core ATen op, mapping it onto the closed IR op set.

A rule is `rule(e, *args, **kwargs)` with the aten schema's arguments (FX nodes already replaced
by IR nodes) and returns an IR node, or a tuple/list of them for multi-output ops. `e` is a
TorchEmitter: the shared Emitter plus torch's type promotion and the op's example output (`e.val`,
torch's own result metadata), which gives every rule its result dtype and shape for free.
Elementwise, layout, reduction and creation rules live here; nn-level ops, backward ops and
indexing live in torch_nn.py. RULES at the bottom is the one table for both.
"""
from __future__ import annotations

import functools
import math

import torch

from ..errors import UnsupportedOpError
from ..ir import DType, Node, Op
from .emitter import Emitter

HALF = (DType.bf16, DType.f16)
TORCH_TO_IR = {torch.float32: DType.f32, torch.float16: DType.f16, torch.bfloat16: DType.bf16,
               torch.int32: DType.i32, torch.int64: DType.i64, torch.bool: DType.bool}
IR_TO_TORCH = {v: k for k, v in TORCH_TO_IR.items()}


class TorchEmitter(Emitter):
    """Emitter + torch semantics for the op being mapped (its name, source line, example output)."""

    op_name = "?"   # "aten.add.Tensor"
    val = None      # torch's example output of the op: FakeTensor, or a tuple of them

    # ---- messages and torch's view of the op --------------------------------------------------
    def unsupported(self, what: str) -> UnsupportedOpError:
        at = f" at {self.source}" if self.source else ""
        return UnsupportedOpError(f"{self.op_name}{at}: {what} is not supported by shardc")

    def dtype(self, td) -> DType:
        if td not in TORCH_TO_IR:
            hint = " (use float32 or bfloat16)" if td == torch.float64 else ""
            raise self.unsupported(f"dtype {td}{hint}")
        return TORCH_TO_IR[td]

    def out_dtype(self, i: int | None = None) -> DType:
        return self.dtype((self.val if i is None else self.val[i]).dtype)

    def out_shape(self, i: int | None = None) -> tuple[int, ...]:
        return tuple(int(s) for s in (self.val if i is None else self.val[i]).shape)

    # ---- torch type promotion -----------------------------------------------------------------
    def to(self, v, dt: DType) -> Node:
        """A node or python scalar as a node of dtype dt."""
        return self.cast(v, dt) if isinstance(v, Node) else self.const(v, dt)

    def result_type(self, a, b) -> DType:
        """torch.result_type of two operands (nodes or python scalars)."""
        return _result_type(_promo_key(a), _promo_key(b))

    def arith(self, op: Op, a, b, dt: DType | None = None) -> Node:
        """Binary op in torch's result dtype. A half tensor with a python float scalar computes in
        f32 and rounds once, as torch does (it never rounds the scalar to the half type)."""
        dt = dt or self.result_type(a, b)
        out = self.binary(op, self.to(a, self.compute_dtype(dt, a, b)), self.to(b, self.compute_dtype(dt, a, b)))
        return self.cast(out, dt) if op not in _COMPARE else out

    def compare(self, op: Op, a, b) -> Node:
        return self.arith(op, a, b)

    @staticmethod
    def compute_dtype(dt: DType, *operands) -> DType:
        if dt in HALF and any(isinstance(v, float) for v in operands):
            return DType.f32
        return dt

    def upcast(self, x: Node) -> Node:
        """Half floats computed in f32, as torch's CPU kernels do for norms, softmax and gelu."""
        return self.cast(x, DType.f32) if x.dtype in HALF else x

    def float_out(self, x: Node) -> Node:
        """x cast to the op's (floating) result dtype: exp(int tensor) is float32 in torch."""
        return self.cast(x, self.out_dtype())


_COMPARE = {Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE}


def _promo_key(v):
    if isinstance(v, Node):
        return ("t", v.dtype, v.rank == 0)
    return ("py", type(v))


@functools.lru_cache(maxsize=None)
def _result_type(ka, kb) -> DType:
    def standin(k):
        if k[0] == "t":
            return torch.empty(() if k[2] else (1,), dtype=IR_TO_TORCH[k[1]], device="meta")
        return {bool: True, int: 1, float: 1.0}.get(k[1], 1.0)
    a, b = standin(ka), standin(kb)
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        a = torch.tensor(a)
    return TORCH_TO_IR.get(torch.result_type(a, b), DType.f32)


def _dims(x: Node, dim) -> list[int] | None:
    """torch's reduction dims: None or [] mean all dims."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return None
    return [d % max(x.rank, 1) for d in ([dim] if isinstance(dim, int) else dim)]


# ---------------------------------------------------------------------------------- elementwise
def _unary(op: Op):
    return lambda e, x: e.unary(op, x)


def _float_unary(op: Op):
    """exp, log, tanh, ...: integer inputs compute in the float result dtype."""
    return lambda e, x: e.unary(op, e.float_out(x))


def _binary(op: Op):
    return lambda e, a, b: e.arith(op, a, b)


def _add(e, a, b, alpha=1):
    return e.arith(Op.ADD, a, b if alpha == 1 else e.arith(Op.MUL, b, alpha))


def _sub(e, a, b, alpha=1):
    return e.arith(Op.SUB, a, b if alpha == 1 else e.arith(Op.MUL, b, alpha))


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
    (x**3 rounds twice in bf16); other exponents take one powf."""
    dt = e.out_dtype()
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        x = e.cast(a, dt)
        if b == 1:
            return x
        if b == 2:
            return e.binary(Op.MUL, x, x)
        if b == 3:
            return e.binary(Op.MUL, e.binary(Op.MUL, x, x), x)
        if b == 0.5:
            return e.unary(Op.SQRT, x)
        if b == -0.5:
            return e.unary(Op.RSQRT, x)
        if b == -1:
            return e.arith(Op.DIV, 1.0, x)
        if b == -2:
            return e.arith(Op.DIV, 1.0, e.binary(Op.MUL, x, x))
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


# ----------------------------------------------------------------------------------- reductions
def _sum(e, x, dim=None, keepdim=False, dtype=None):
    x = e.cast(x, e.out_dtype())
    return e.reduce(Op.REDUCE_SUM, x, _dims(x, dim), keepdim)


def _mean(e, x, dim=None, keepdim=False, dtype=None):
    dt = e.out_dtype()
    return e.cast(e.mean(e.upcast(e.cast(x, dt)), _dims(x, dim), keepdim), dt)


def _reduce(op: Op):
    return lambda e, x, dim=None, keepdim=False: e.reduce(op, x, _dims(x, dim), keepdim)


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
        r = e.reduce(Op.REDUCE_MAX if is_any else Op.REDUCE_MIN, flag, _dims(x, dim), keepdim)
        return e.binary(Op.NE, r, e.const(0, DType.i32))
    return rule


def _variance(e, x, dim, correction, keepdim):
    xc = e.upcast(x)
    dims = _dims(x, dim)
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
    dims = _dims(x, dim)
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
    dims = _dims(x, dim)
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
    from . import torch_nn as nn
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
        A.leaky_relu: _leaky_relu, A.elu: _elu, A.softplus: _softplus, A.hardtanh: lambda e, x, lo=-1.0, hi=1.0: _clamp(e, x, lo, hi),
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
        # layout
        A.view: _view, A._unsafe_view: _view, A.reshape: _view, A.permute: _permute,
        A.transpose: _transpose, A.t: _t, A.expand: _expand, A.unsqueeze: _unsqueeze,
        A.squeeze: _squeeze, A.slice: _slice, A.select: _select, A.narrow: _narrow, A.cat: _cat,
        A.stack: _stack, A.split: _split, A.split_with_sizes: _split_with_sizes, A.chunk: _chunk,
        A.unbind: _unbind, A.constant_pad_nd: _constant_pad_nd, A.repeat: _repeat, A.flip: _flip,
        A.roll: _roll, A.tril: _tri(False), A.triu: _tri(True),
        # creation
        A.full: _fill(1), A.full_like: _fill(1), A.new_full: _fill(2), A.scalar_tensor: _fill(0),
        A.fill: _fill(1), A.zeros: _fill(None, 0), A.zeros_like: _fill(None, 0),
        A.new_zeros: _fill(None, 0), A.zero: _fill(None, 0), A.ones: _fill(None, 1),
        A.ones_like: _fill(None, 1), A.new_ones: _fill(None, 1), A.empty: _fill(None, 0),
        A.empty_like: _fill(None, 0), A.empty_strided: _fill(None, 0), A.empty_permuted: _fill(None, 0),
        A.new_empty: _fill(None, 0), A.new_empty_strided: _fill(None, 0), A.arange: _arange,
        # reductions and scans
        A.sum: _sum, A.mean: _mean, A.amax: _reduce(Op.REDUCE_MAX), A.amin: _reduce(Op.REDUCE_MIN),
        A.max: _max_min(True), A.min: _max_min(False), A.argmax: _argmax(True), A.argmin: _argmax(False),
        A.any: _any_all(True), A.all: _any_all(False), A.var.correction: _var, A.std.correction: _std,
        A.var_mean.correction: _var_mean, A.logsumexp: _logsumexp, A.cumsum: _cumsum, A.topk: _topk,
        A.sort: _sort, A.linalg_vector_norm: _vector_norm,
        # matmul
        A.mm: _mm, A.bmm: _mm, A.matmul: _mm, A.dot: _mm, A.mv: _mm, A.addmm: _addmm, A.baddbmm: _addmm,
        A.linear: _linear,
        # bookkeeping
        A._assert_tensor_metadata: _nothing, A._assert_scalar: _nothing, A._assert_async: _nothing,
        A.sym_constrain_range: _nothing, A.sym_constrain_range_for_size: _nothing,
        A._functional_sym_constrain_range: _nothing, A._functional_sym_constrain_range_for_size: _nothing,
        A.sym_size.int: _sym_size, A.sym_numel: _sym_numel,
        A.rand: _random, A.rand_like: _random, A.randn: _random, A.randn_like: _random,
        A.randint: _random, A.bernoulli: _random, A.uniform: _random, A.normal: _random,
    }
    rules.update(nn.rules(A))
    # functionalized graphs may name view ops view_copy, permute_copy, ...: same values
    for name in ("view", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "slice",
                 "select", "alias", "split", "split_with_sizes", "unbind"):
        rules[getattr(A, name + "_copy")] = rules[getattr(A, name)]
    return rules


RULES = _build_rules()


def lookup(target):
    """The rule for an aten OpOverload: by overload first (aten.var.correction), then by packet."""
    rule = RULES.get(target)
    if rule is None and hasattr(target, "overloadpacket"):
        rule = RULES.get(target.overloadpacket)
    return rule
