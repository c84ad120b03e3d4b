"""The JAX primitive table: one rule per primitive name, as JAX keeps its own transformation
rules. A rule is `rule(c, *operands, **eqn.params) -> Node | list[Node]`: `c` is the converter
(frontend/jax.py), `c.b` its Emitter, `c.static(node)` a node's value when it is known at
capture time, `c.out_dtype(i)` the IR dtype of the equation's i-th result, and
`raise c.unsupported(why)` the error that names the primitive and the user's line.
Control flow, calls and sharding constraints live in jax.py; everything else is here."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..ir import DType, Node, Op
from ..ir.emitter import promote
from .jax_unit_dims import unit_batch_dot, unsqueezed

RULES: dict[str, Callable] = {}


def rule(*names: str):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn
    return register


def _py(value, dtype: DType):
    """A numpy scalar as the python scalar the IR's scalar attributes hold."""
    value = np.asarray(value).item()
    return bool(value) if dtype is DType.bool else int(value) if dtype.is_int else float(value)


def _clamp(b, x: Node, lo, hi) -> Node:
    return b.binary(Op.MIN, b.binary(Op.MAX, x, lo), hi)


# ---- elementwise ------------------------------------------------------------------------------
_UNARY = {"neg": Op.NEG, "abs": Op.ABS, "sign": Op.SIGN, "exp": Op.EXP, "log": Op.LOG,
          "log1p": Op.LOG1P, "sqrt": Op.SQRT, "rsqrt": Op.RSQRT, "tanh": Op.TANH, "erf": Op.ERF,
          "sin": Op.SIN, "cos": Op.COS, "floor": Op.FLOOR, "ceil": Op.CEIL, "not": Op.NOT}
_BINARY = {"add": Op.ADD, "add_any": Op.ADD, "sub": Op.SUB, "mul": Op.MUL, "div": Op.DIV,
           "rem": Op.REM, "max": Op.MAX, "min": Op.MIN, "and": Op.AND, "or": Op.OR, "xor": Op.XOR,
           "shift_left": Op.SHL, "shift_right_arithmetic": Op.SHR, "eq": Op.EQ, "ne": Op.NE,
           "lt": Op.LT, "le": Op.LE, "gt": Op.GT, "ge": Op.GE}
for _name, _op in _UNARY.items():
    RULES[_name] = lambda c, x, _op=_op, **_: c.b.unary(_op, x)
for _name, _op in _BINARY.items():
    RULES[_name] = lambda c, x, y, _op=_op, **_: c.b.binary(_op, x, y)  # scalars broadcast
for _name in ("copy", "copy_p", "stop_gradient", "optimization_barrier", "device_put"):
    RULES[_name] = lambda c, *xs, **_: list(xs)  # identities
RULES.update({
    "square": lambda c, x, **_: c.b.binary(Op.MUL, x, x),
    "exp2": lambda c, x, **_: c.b.binary(Op.POW, c.b.const(2.0, x.dtype), x),
    "erfc": lambda c, x, **_: c.b.binary(Op.SUB, c.b.const(1.0, x.dtype), c.b.unary(Op.ERF, x)),
    "erf_inv": lambda c, x, **_: c.b.erf_inv(x),
    "is_finite": lambda c, x, **_: c.b.binary(Op.LT, c.b.unary(Op.ABS, x), math.inf),  # inf, NaN: false
    "clamp": lambda c, lo, x, hi, **_: _clamp(c.b, x, lo, hi),
    "convert_element_type": lambda c, x, **_: c.b.cast(x, c.out_dtype(0)),
    "transpose": lambda c, x, *, permutation, **_: c.b.transpose(x, permutation),
    "rev": lambda c, x, *, dimensions, **_: c.b.flip(x, dimensions),
    "concatenate": lambda c, *xs, dimension, **_: c.b.concat(xs, dimension),
})


@rule("logistic")
def _logistic(c, x, **_):
    """On half floats XLA expands logistic to 1 / (1 + exp(-x)), rounding after each step; doing
    the same keeps bf16 results equal to JAX's rather than one rounding more accurate."""
    b = c.b
    if x.dtype.compute == x.dtype:
        return b.unary(Op.LOGISTIC, x)
    one = b.const(1.0, x.dtype)
    return b.binary(Op.DIV, one, b.binary(Op.ADD, one, b.unary(Op.EXP, b.unary(Op.NEG, x))))


@rule("pow")
def _pow(c, x, y, **_):
    if not x.dtype.is_float:
        raise c.unsupported(f"integer base ({x.dtype})")
    return c.b.binary(Op.POW, x, c.b.cast(y, x.dtype))


@rule("integer_pow")
def _integer_pow(c, x, *, y, **_):
    """Square-and-multiply, in the order JAX's own lowering multiplies."""
    b = c.b
    if y == 0:
        return b.const(1, x.dtype, x.shape)
    acc, base, n = None, x, abs(y)
    while n:
        if n & 1:
            acc = base if acc is None else b.binary(Op.MUL, acc, base)
        n >>= 1
        if n:
            base = b.binary(Op.MUL, base, base)
    return b.binary(Op.DIV, b.const(1, x.dtype, x.shape), acc) if y < 0 else acc


@rule("expm1")
def _expm1(c, x, **_):
    """exp(x) - 1 cancels near 0; there 2t/(1-t) with t = tanh(x/2) is accurate."""
    b = c.b
    t = b.unary(Op.TANH, b.binary(Op.MUL, x, 0.5))
    near_zero = b.binary(Op.DIV, b.binary(Op.MUL, t, 2.0), b.binary(Op.SUB, b.const(1.0, x.dtype), t))
    far = b.binary(Op.SUB, b.unary(Op.EXP, x), 1.0)
    return b.select(b.binary(Op.LT, b.unary(Op.ABS, x), 0.5), near_zero, far)


@rule("round")
def _round(c, x, *, rounding_method=0, **_):
    b = c.b
    if int(rounding_method) == 1:  # TO_NEAREST_EVEN: the IR's round
        return b.unary(Op.ROUND, x)
    # AWAY_FROM_ZERO; floor(|x| + 0.5) would round 0.49999997 up, so compare the fraction instead
    mag = b.unary(Op.ABS, x)
    whole = b.unary(Op.FLOOR, mag)
    up = b.cast(b.binary(Op.GE, b.binary(Op.SUB, mag, whole), 0.5), x.dtype)
    return b.binary(Op.MUL, b.unary(Op.SIGN, x), b.binary(Op.ADD, whole, up))


@rule("shift_right_logical")
def _shift_right_logical(c, x, s, **_):
    """Arithmetic shift, then clear the copies of the sign bit (the IR has no unsigned types)."""
    b = c.b
    bits = x.dtype.itemsize * 8
    mask = b.unary(Op.NOT, b.binary(Op.SHL, b.const(-1, x.dtype, x.shape), b.binary(Op.SUB, bits, s)))
    out = b.binary(Op.AND, b.binary(Op.SHR, x, s), mask)
    out = b.select(b.binary(Op.EQ, s, 0), x, out)
    return b.select(b.binary(Op.GE, s, bits), b.const(0, x.dtype), out)


@rule("select_n")
def _select_n(c, pred, *cases, **_):
    b = c.b
    if len(cases) == 1:
        return cases[0]
    if pred.dtype is DType.bool:
        return b.select(pred, cases[1], cases[0])
    out = cases[0]
    for i, case in enumerate(cases[1:], 1):
        out = b.select(b.binary(Op.EQ, pred, i), case, out)
    return out


_FORMATS = {(8, 23): DType.f32, (8, 7): DType.bf16, (5, 10): DType.f16}
_BITS = {fmt: bits for bits, fmt in _FORMATS.items()}


@rule("reduce_precision")
def _reduce_precision(c, x, *, exponent_bits, mantissa_bits, **_):
    """Rounding to a narrower float format is a round trip through that format."""
    e, m = _BITS.get(x.dtype, (99, 99))
    if exponent_bits >= e and mantissa_bits >= m:
        return x
    target = _FORMATS.get((exponent_bits, mantissa_bits))
    if target is None:
        raise c.unsupported(f"a float format with {exponent_bits} exponent and {mantissa_bits} mantissa bits")
    return c.b.cast(c.b.cast(x, target), x.dtype)


# ---- layout -----------------------------------------------------------------------------------
@rule("broadcast_in_dim")
def _broadcast_in_dim(c, x, *dyn, shape, broadcast_dimensions, **_):
    if dyn:
        raise c.unsupported("dynamic shapes")
    if x.shape == tuple(shape):
        return x
    same = unsqueezed(x, shape, broadcast_dimensions)
    if same is not None:
        return same
    return c.b.add(Op.BROADCAST, [x], shape=shape, dims=broadcast_dimensions)


@rule("reshape")
def _reshape(c, x, *dyn, new_sizes, dimensions=None, **_):
    if dyn:
        raise c.unsupported("dynamic shapes")
    if dimensions is not None:  # the old fused transpose-then-reshape form
        x = c.b.transpose(x, dimensions)
    return c.b.reshape(x, new_sizes)


@rule("squeeze")
def _squeeze(c, x, *, dimensions, **_):
    return c.b.reshape(x, [s for d, s in enumerate(x.shape) if d not in {a % x.rank for a in dimensions}])


@rule("iota")
def _iota(c, *dyn, dtype, shape, dimension, **_):
    if dyn:
        raise c.unsupported("dynamic shapes")
    return c.b.iota(shape, dimension, c.out_dtype(0))


@rule("slice")
def _slice(c, x, *, start_indices, limit_indices, strides=None, **_):
    strides = tuple(strides or (1,) * x.rank)
    if tuple(start_indices) == (0,) * x.rank and tuple(limit_indices) == x.shape and strides == (1,) * x.rank:
        return x
    return c.b.add(Op.SLICE, [x], start=start_indices, limit=limit_indices, stride=strides)


@rule("split")
def _split(c, x, *, sizes, axis, **_):
    outs, start = [], 0
    for size in sizes:
        outs.append(c.b.slice(x, axis, start, start + int(size)))
        start += int(size)
    return outs


def _pad_dim(b, x: Node, axis: int, low: int, high: int, value) -> Node:
    if not low and not high:
        return x
    lows, highs = [0] * x.rank, [0] * x.rank
    lows[axis], highs[axis] = low, high
    return b.add(Op.PAD, [x], low=lows, high=highs, value=value)


def _pad_all(b, x: Node, config, value) -> Node:
    """lax.pad with a static value: interior padding, then edges; negative edges are slices."""
    for d, (_, _, interior) in enumerate(config):
        n = x.shape[d]
        if interior and n > 1:  # [.., n, ..] -> [.., n, 1 + interior, ..] -> [.., n(1 + interior), ..]
            x = b.reshape(x, x.shape[:d + 1] + (1,) + x.shape[d + 1:])
            x = _pad_dim(b, x, d + 1, 0, interior, value)
            x = b.reshape(x, x.shape[:d] + (n * (1 + interior),) + x.shape[d + 2:])
            x = b.slice(x, d, 0, n + (n - 1) * interior)
    lows = [max(lo, 0) for lo, _, _ in config]
    highs = [max(hi, 0) for _, hi, _ in config]
    if any(lows) or any(highs):
        x = b.add(Op.PAD, [x], low=lows, high=highs, value=value)
    for d, (lo, hi, _) in enumerate(config):
        if lo < 0 or hi < 0:
            x = b.slice(x, d, max(-lo, 0), x.shape[d] - max(-hi, 0))
    return x


@rule("pad")
def _pad(c, x, value, *, padding_config, **_):
    b = c.b
    v = c.static(value)
    if v is not None:
        return _pad_all(b, x, padding_config, _py(v, x.dtype))
    # a traced pad value: pad a mask the same way, then select the value where the mask is off
    out = _pad_all(b, x, padding_config, _py(0, x.dtype))
    inside = _pad_all(b, b.const(True, DType.bool, x.shape), padding_config, False)
    return b.select(inside, out, value)


# ---- reductions and scans ---------------------------------------------------------------------
for _name, _op in (("reduce_sum", Op.REDUCE_SUM), ("reduce_max", Op.REDUCE_MAX), ("reduce_min", Op.REDUCE_MIN)):
    RULES[_name] = lambda c, x, *, axes, _op=_op, **_: c.b.reduce(_op, x, list(axes))


@rule("reduce_and", "reduce_or")
def _reduce_logical(c, x, *, axes, **_):
    if x.dtype is not DType.bool:
        raise c.unsupported(f"bitwise reduction of {x.dtype}")
    op = Op.REDUCE_MIN if c.eqn.primitive.name == "reduce_and" else Op.REDUCE_MAX
    return c.b.reduce(op, x, list(axes))


@rule("argmax", "argmin")
def _argmax(c, x, *, axes, **_):
    return c.b.argmax(x, axes[0], largest=c.eqn.primitive.name == "argmax", dtype=c.out_dtype(0))


@rule("cumsum")
def _cumsum(c, x, *, axis, reverse=False, **_):
    b = c.b
    if reverse:
        return b.flip(b.cumsum(b.flip(x, [axis]), axis), [axis])
    return b.cumsum(x, axis)


def _prefix_scan(b, x: Node, axis: int, op: Op, identity) -> Node:
    """Inclusive prefix of an associative op in log2(n) rounds: x = op(x, x shifted by k)."""
    n, k = x.shape[axis], 1
    while k < n:
        shifted = b.slice(_pad_dim(b, x, axis, k, 0, identity), axis, 0, n)
        x = b.binary(op, x, shifted)
        k *= 2
    return x


def _identity_of(op: Op, dtype: DType):
    if op is Op.MUL:
        return _py(1, dtype)
    largest = op is Op.MAX
    if dtype.is_float:
        return -math.inf if largest else math.inf
    if dtype is DType.bool:
        return not largest
    return int(np.iinfo(dtype.np).min if largest else np.iinfo(dtype.np).max)


@rule("cummax", "cummin", "cumprod")
def _cumulative(c, x, *, axis, reverse=False, **_):
    b = c.b
    op = {"cummax": Op.MAX, "cummin": Op.MIN, "cumprod": Op.MUL}[c.eqn.primitive.name]
    axis %= x.rank
    if reverse:
        x = b.flip(x, [axis])
    out = _prefix_scan(b, x, axis, op, _identity_of(op, x.dtype))
    return b.flip(out, [axis]) if reverse else out


@rule("reduce_prod")
def _reduce_prod(c, x, *, axes, **_):
    """Pairwise products, halving each axis per round (the IR has no product reduction)."""
    b = c.b
    one = _py(1, x.dtype)
    for axis in sorted(axes):
        while x.shape[axis] > 1:
            n = x.shape[axis]
            if n % 2:
                x = _pad_dim(b, x, axis, 0, 1, one)
                n += 1
            x = b.binary(Op.MUL, b.slice(x, axis, 0, n, 2), b.slice(x, axis, 1, n, 2))
    return b.reshape(x, [s for d, s in enumerate(x.shape) if d not in set(axes)])


@rule("tile")
def _tile(c, x, *, reps, **_):
    """Broadcast to [r0, d0, r1, d1, ...], then merge each pair."""
    shape = [s for r, d in zip(reps, x.shape) for s in (r, d)]
    tiled = c.b.add(Op.BROADCAST, [x], shape=shape, dims=list(range(1, 2 * x.rank, 2)))
    return c.b.reshape(tiled, [r * d for r, d in zip(reps, x.shape)])


@rule("top_k")
def _top_k(c, x, *, k, axis=-1, **_):
    values, indices = c.b.top_k(x, int(k), axis)
    return [values, c.b.cast(indices, c.out_dtype(1))]


@rule("sort")
def _sort(c, *xs, dimension, num_keys=1, **_):
    """Stable sort by the first operand (lax.sort is stable when asked; stable is always right)."""
    b = c.b
    if num_keys != 1:
        from .jax_vision_ops import lexsort
        order = lexsort(b, list(xs[:num_keys]), dimension)
        return [b.take_along_axis(x, order, dimension) for x in xs]
    values, order = b.sort(xs[0], dimension)
    return [values] + [b.take_along_axis(x, order, dimension) for x in xs[1:]]


# ---- contraction ------------------------------------------------------------------------------
@rule("dot_general")
def _dot_general(c, x, y, *, dimension_numbers, **_):
    b = c.b
    (lc, rc), (lb, rb) = dimension_numbers
    dt, out_dt = promote(x.dtype, y.dtype), c.out_dtype(0)
    # a wider preferred_element_type accumulates in it (bf16 products are exact in f32, as XLA's)
    if out_dt.is_float == dt.is_float and out_dt.itemsize > dt.itemsize:
        dt = out_dt
    out = unit_batch_dot(b, x, y, dt, lc, rc, lb, rb)
    if out is not None:
        return b.cast(out, out_dt)
    out = b.add(Op.DOT_GENERAL, [b.cast(x, dt), b.cast(y, dt)], lhs_batch=lb, rhs_batch=rb,
                lhs_contract=lc, rhs_contract=rc)
    return b.cast(out, out_dt)


# ---- dynamic slicing --------------------------------------------------------------------------
@rule("dynamic_slice")
def _dynamic_slice(c, x, *starts, slice_sizes, **_):
    """Known starts are slices; traced ones gather start + iota (starts clamp so the slice fits)."""
    b = c.b
    if len(starts) != x.rank:
        raise c.unsupported("dynamic shapes")
    for d, (s, k) in enumerate(zip(starts, slice_sizes)):
        n, v = x.shape[d], c.static(s)
        if v is not None:
            start = int(np.clip(int(v), 0, n - k))
            x = b.slice(x, d, start, start + k)
        else:
            idx = b.binary(Op.ADD, b.iota((k,), 0, s.dtype), _clamp(b, s, 0, n - k))
            x = b.add(Op.GATHER, [x, idx], axis=d)
    return x


@rule("dynamic_update_slice")
def _dynamic_update_slice(c, x, upd, *starts, **_):
    """Spread the update over x's shape (pad for known starts, gather for traced ones) together
    with a mask of where it lands, then select."""
    b = c.b
    mask = b.const(True, DType.bool, upd.shape)
    zero = _py(0, upd.dtype)
    for d, s in enumerate(starts):
        n, k, v = x.shape[d], upd.shape[d], c.static(s)
        if v is not None:
            lo = int(np.clip(int(v), 0, n - k))
            upd, mask = _pad_dim(b, upd, d, lo, n - k - lo, zero), _pad_dim(b, mask, d, lo, n - k - lo, False)
        else:
            s = _clamp(b, s, 0, n - k)
            pos = b.iota((n,), 0, s.dtype)
            src = _clamp(b, b.binary(Op.SUB, pos, s), 0, k - 1)  # which update row lands at pos
            upd, mask = b.add(Op.GATHER, [upd, src], axis=d), b.add(Op.GATHER, [mask, src], axis=d)
            inside = b.binary(Op.AND, b.binary(Op.GE, pos, s), b.binary(Op.LT, pos, b.binary(Op.ADD, s, k)))
            mask = b.binary(Op.AND, mask, b.add(Op.BROADCAST, [inside], shape=mask.shape, dims=[d]))
    if mask.op is Op.CONSTANT:  # the update covers all of x
        return upd
    return b.select(mask, upd, x)


# ---- gather and scatter -----------------------------------------------------------------------
# JAX's gather/scatter name operand dims three ways: batching dims (paired with index batching
# dims), indexed dims (start_index_map / scatter_dims_to_operand_dims, one element wide) and
# window dims taken whole. The IR's gather takes one axis after leading batch dims, so the
# operand is transposed to [batching, indexed, rest], the indexed dims are merged into one, and
# the index vector becomes one linear index; the result is then laid out as JAX lays it out.

def _mode(c, mode) -> str:
    name = getattr(mode, "name", str(mode)).upper()
    if name not in ("CLIP", "FILL_OR_DROP", "PROMISE_IN_BOUNDS"):
        raise c.unsupported(f"mode {name}")
    return name


def _components(b, idx: Node) -> list[Node]:
    """The index vector (idx's last dim) as one index array per entry. A concatenate that built
    the vector is looked through, so that a constant entry stays recognisably constant."""
    comps = []
    for k in range(idx.shape[-1]):
        part, j = idx, k
        while part.op is Op.CONCATENATE and part.attrs["axis"] == part.rank - 1:
            for operand in part.inputs:
                if j < operand.shape[-1]:
                    part = operand
                    break
                j -= operand.shape[-1]
        comps.append(b.reshape(b.slice(part, -1, j, j + 1), part.shape[:-1]))
    return comps


def _peel_windows(c, comps: list, sim: list, width) -> tuple[list, list, list]:
    """Indexed dims with windows wider than one element and one known start for every index
    (x[1:, idx] makes these) are plain slices: returns [(dim, start, width)] and what is left."""
    peeled, left_comps, left_sim = [], [], []
    for comp, d in zip(comps, sim):
        if width(d) == 1:
            left_comps.append(comp)
            left_sim.append(d)
            continue
        v = c.static(comp)
        if v is None or (v.size and (v != v.flat[0]).any()):
            raise c.unsupported("windows wider than one element along an indexed dim, at traced starts")
        peeled.append((d, int(v.flat[0]) if v.size else 0, width(d)))
    if not left_sim:
        raise c.unsupported("an index vector that indexes no single-element dim")
    return peeled, left_comps, left_sim


def _linearize(c, x: Node, comps: list, ob: list, ib: list, sim: list, clamp: bool):
    """(x as [batching, merged indexed, rest], its perm, linear index as [index batching, other
    index dims], those dims' order, in-bounds mask in the same layout)."""
    b = c.b
    rest = [d for d in range(x.rank) if d not in ob and d not in sim]
    perm = ob + sim + rest
    sizes = [x.shape[d] for d in sim]
    xt = b.reshape(b.transpose(x, perm), [x.shape[d] for d in ob] + [math.prod(sizes)] + [x.shape[d] for d in rest])
    in_bounds = None
    for comp, n in zip(comps, sizes):
        ok = b.binary(Op.AND, b.binary(Op.GE, comp, 0), b.binary(Op.LT, comp, n))
        in_bounds = ok if in_bounds is None else b.binary(Op.AND, in_bounds, ok)
    if clamp:
        comps = [_clamp(b, comp, 0, n - 1) for comp, n in zip(comps, sizes)]
    lin, stride = comps[-1], sizes[-1]
    for comp, n in zip(comps[-2::-1], sizes[-2::-1]):
        lin = b.binary(Op.ADD, b.binary(Op.MUL, comp, stride), lin)
        stride *= n
    order = ib + [j for j in range(lin.rank) if j not in ib]
    return xt, perm, b.transpose(lin, order), order, b.transpose(in_bounds, order)


def _static_in_bounds(c, x: Node, comps: list, sim: list) -> bool:
    values = [c.static(comp) for comp in comps]
    return all(v is not None and ((v >= 0) & (v < x.shape[d])).all() for v, d in zip(values, sim))


@rule("gather")
def _gather(c, x, idx, *, dimension_numbers, slice_sizes, mode, fill_value=None, **_):
    b, dn = c.b, dimension_numbers
    mode = _mode(c, mode)
    ob, ib = list(dn.operand_batching_dims), list(dn.start_indices_batching_dims)
    collapsed, ip = set(dn.collapsed_slice_dims), idx.shape[:-1]
    if fill_value is None:
        dt = x.dtype
        fill_value = math.nan if dt.is_float else True if dt is DType.bool else np.iinfo(dt.np).min
    peeled, comps, sim = _peel_windows(c, _components(b, idx), list(dn.start_index_map), lambda d: slice_sizes[d])
    for d, start, w in peeled:
        if mode == "FILL_OR_DROP" and not 0 <= start <= x.shape[d] - w:  # every window is out of range
            return b.const(_py(fill_value, x.dtype), x.dtype, c.eqn.outvars[0].aval.shape)
        start = min(max(start, 0), x.shape[d] - w)
        x = b.slice(x, d, start, start + w)
    rest = [d for d in range(x.rank) if d not in ob and d not in sim]
    for d in rest:  # windows along unindexed dims start at 0
        x = b.slice(x, d, 0, slice_sizes[d])
    fill = mode == "FILL_OR_DROP" and not _static_in_bounds(c, x, comps, sim)
    # the IR's gather clamps one index; a linear index over several dims clamps each first
    xt, _, lin, order, in_bounds = _linearize(c, x, comps, ob, ib, sim, clamp=len(sim) > 1 and not fill)
    out = b.add(Op.GATHER, [xt, lin], axis=len(ob), batch_dims=len(ob))
    # out is [index dims in `order`, rest]; JAX drops collapsed dims and keeps indexed ones as 1s
    labels = [("i", j) for j in order] + [("o", d) for d in rest if d not in collapsed]
    labels += [("o", d) for d in sim if d not in collapsed]
    out = b.reshape(out, [ip[l[1]] if l[0] == "i" else slice_sizes[l[1]] for l in labels])
    window = iter(d for d in range(x.rank) if d not in collapsed and d not in ob)
    index = iter(range(len(ip)))
    target = [("o", next(window)) if pos in dn.offset_dims else ("i", next(index))
              for pos in range(len(labels))]
    out = b.transpose(out, [labels.index(t) for t in target])
    if fill:  # FILL_OR_DROP: an out-of-range index reads fill_value
        in_bounds = b.transpose(in_bounds, list(np.argsort(order)))  # back to index order
        mask = b.add(Op.BROADCAST, [in_bounds], shape=out.shape, dims=[target.index(("i", j)) for j in range(len(ip))])
        out = b.select(mask, out, b.const(_py(fill_value, x.dtype), x.dtype))
    return out


def _drop_shadowed(c, lin: Node, nb: int) -> Node:
    """Mark (-1, dropped) each update that a later one overwrites: pairwise compares of the
    linear indices within each batch entry, so only for modest index counts."""
    b = c.b
    batch, n = lin.shape[:nb], math.prod(lin.shape[nb:])
    if math.prod(batch) * n * n > 1 << 24:
        raise c.unsupported(f"setting {n} possibly repeated traced indices (pass unique_indices=True "
                            "when they cannot repeat)")
    flat = b.reshape(lin, batch + (n,))
    grid = batch + (n, n)
    same = b.binary(Op.EQ, b.broadcast_to(b.expand_dims(flat, -1), grid), b.broadcast_to(b.expand_dims(flat, -2), grid))
    later = b.binary(Op.LT, b.iota(grid, -2), b.iota(grid, -1))  # [.., i, j]: j comes after i
    shadowed = b.reduce(Op.REDUCE_MAX, b.binary(Op.AND, same, later), -1)
    return b.select(b.reshape(shadowed, lin.shape), b.const(-1, lin.dtype), lin)


def _scatter(c, x, idx, upd, dn, mode, kind: str, unique: bool = False):
    b = c.b
    mode = _mode(c, mode)
    ob, ib = list(dn.operand_batching_dims), list(dn.scatter_indices_batching_dims)
    inserted, ip = set(dn.inserted_window_dims), idx.shape[:-1]
    # updates: window dims at update_window_dims, index dims elsewhere (as gather's output)
    window = iter(d for d in range(x.rank) if d not in inserted and d not in ob)
    index = iter(range(len(ip)))
    labels = [("o", next(window)) if pos in dn.update_window_dims else ("i", next(index))
              for pos in range(upd.rank)]
    width = {l[1]: upd.shape[p] for p, l in enumerate(labels) if l[0] == "o"}
    peeled, comps, sim = _peel_windows(c, _components(b, idx), list(dn.scatter_dims_to_operand_dims),
                                       lambda d: width.get(d, 1))
    whole, box = x, []  # wide windows at known starts: scatter into that block of x
    for d, start, w in peeled:
        n = x.shape[d]
        if mode != "CLIP" and not 0 <= start <= n - w:  # every update is out of range: dropped
            return whole
        start = min(max(start, 0), n - w)
        x = b.slice(x, d, start, start + w)
        box.append((d, start, n - start - w))
    rest = [d for d in range(x.rank) if d not in ob and d not in sim]
    # canonical updates: [index dims in `order`, rest dims], rest windows padded to full size
    keep = [p for p, l in enumerate(labels) if not (l[0] == "o" and l[1] in sim)]
    labels = [labels[p] for p in keep] + [("o", d) for d in rest if d in inserted]
    upd = b.reshape(upd, [upd.shape[p] for p in keep] + [1] * sum(d in inserted for d in rest))
    clip = mode == "CLIP"
    xt, perm, lin, order, in_bounds = _linearize(c, x, comps, ob, ib, sim, clamp=clip)
    if not clip and len(sim) > 1:  # drop an update when any of its indices is out of range
        lin = b.select(in_bounds, lin, b.const(-1, lin.dtype))
    target = [("i", j) for j in order] + [("o", d) for d in rest]
    upd = b.transpose(upd, [labels.index(t) for t in target])
    high = [0] * len(order) + [x.shape[d] - width.get(d, 1) for d in rest]
    spread = lambda u, zero: b.add(Op.PAD, [u], low=[0] * u.rank, high=high, value=zero) if any(high) else u
    scatter = lambda base, u: b.add(Op.SCATTER, [base, lin, u], axis=len(ob), batch_dims=len(ob))
    zero = _py(0, x.dtype)
    if kind == "add":
        out = scatter(xt, spread(upd, zero))
    elif kind == "sub":
        out = scatter(xt, spread(b.unary(Op.NEG, upd), zero))
    elif kind in ("mul", "min", "max"):
        from .jax_vision_ops import scatter_combine
        out = scatter_combine(b, xt, lin, upd, len(ob), kind, spread)
    else:  # set: each element takes the last update that lands on it, or keeps x's value
        if not unique:
            lin = _drop_shadowed(c, lin, len(ob))
        vals = scatter(b.const(zero, xt.dtype, xt.shape), spread(upd, zero))
        hits = scatter(b.const(0, DType.i32, xt.shape), spread(b.const(1, DType.i32, upd.shape), 0))
        out = b.select(b.binary(Op.GT, hits, 0), vals, xt)
    out = b.transpose(b.reshape(out, [x.shape[d] for d in perm]), list(np.argsort(perm)))
    if box:  # put the block back into the whole operand
        lows, highs = [0] * x.rank, [0] * x.rank
        for d, low, high in box:
            lows[d], highs[d] = low, high
        inside = b.add(Op.PAD, [b.const(True, DType.bool, out.shape)], low=lows, high=highs, value=False)
        out = b.select(inside, b.add(Op.PAD, [out], low=lows, high=highs, value=zero), whole)
    return out


@rule("scatter-add", "scatter_add", "scatter-sub", "scatter_sub", "scatter", "scatter-mul", "scatter_mul",
      "scatter-min", "scatter_min", "scatter-max", "scatter_max")
def _scatter_rule(c, x, idx, upd, *, dimension_numbers, mode, unique_indices=False, **_):
    """x.at[idx].add / .subtract / .set; for .set a repeated index takes its last update, as
    XLA on CPU applies them in order."""
    kind = {"scatter": "set", "scatter-sub": "sub", "scatter_sub": "sub"}.get(c.eqn.primitive.name, "add")
    kind = c.eqn.primitive.name[8:] if c.eqn.primitive.name[8:] in ("mul", "min", "max") else kind
    return _scatter(c, x, idx, upd, dimension_numbers, mode, kind, unique_indices)
