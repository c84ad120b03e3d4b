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
from .emitter import promote

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
          "log1p": Op.LOG1P, "sqrt": Op.SQRT, "rsqrt": Op.RSQRT, "tanh": Op.TANH, "erf": Op.ERF, "sin": Op.SIN, "cos": Op.COS,
          "floor": Op.FLOOR, "ceil": Op.CEIL, "not": Op.NOT}
_BINARY = {"add": Op.ADD, "add_any": Op.ADD, "sub": Op.SUB, "mul": Op.MUL, "div": Op.DIV,
           "rem": Op.REM, "max": Op.MAX, "min": Op.MIN, "and": Op.AND, "or": Op.OR, "xor": Op.XOR,
           "shift_left": Op.SHL, "shift_right_arithmetic": Op.SHR, "eq": Op.EQ, "ne": Op.NE,
           "lt": Op.LT, "le": Op.LE, "gt": Op.GT, "ge": Op.GE}
for _name, _op in _UNARY.items():
    RULES[_name] = lambda c, x, _op=_op, **_: c.b.unary(_op, x)
for _name, _op in _BINARY.items():
    RULES[_name] = lambda c, x, y, _op=_op, **_: c.b.binary(_op, x, y)  # scalars broadcast


@rule("copy", "copy_p", "stop_gradient", "optimization_barrier", "device_put")
def _identity(c, *xs, **_):
    return list(xs)


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


@rule("square")
def _square(c, x, **_):
    return c.b.binary(Op.MUL, x, x)


@rule("exp2")
def _exp2(c, x, **_):
    return c.b.binary(Op.POW, c.b.const(2.0, x.dtype), x)


@rule("expm1")
def _expm1(c, x, **_):
    """exp(x) - 1 cancels near 0; there 2t/(1-t) with t = tanh(x/2) is accurate."""
    b = c.b
    t = b.unary(Op.TANH, b.binary(Op.MUL, x, 0.5))
    near_zero = b.binary(Op.DIV, b.binary(Op.MUL, t, 2.0), b.binary(Op.SUB, b.const(1.0, x.dtype), t))
    far = b.binary(Op.SUB, b.unary(Op.EXP, x), 1.0)
    return b.select(b.binary(Op.LT, b.unary(Op.ABS, x), 0.5), near_zero, far)


@rule("tan")
def _tan(c, x, **_):
    return c.b.binary(Op.DIV, c.b.unary(Op.SIN, x), c.b.unary(Op.COS, x))


@rule("cbrt")
def _cbrt(c, x, **_):
    b = c.b
    return b.binary(Op.MUL, b.unary(Op.SIGN, x), b.binary(Op.POW, b.unary(Op.ABS, x), 1.0 / 3.0))


@rule("erfc")
def _erfc(c, x, **_):
    return c.b.binary(Op.SUB, c.b.const(1.0, x.dtype), c.b.unary(Op.ERF, x))


@rule("erf_inv")
def _erf_inv(c, x, **_):
    return c.b.erf_inv(x)


@rule("is_finite")
def _is_finite(c, x, **_):
    return c.b.binary(Op.LT, c.b.unary(Op.ABS, x), math.inf)  # false for inf and NaN


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


@rule("clamp")
def _clamp_rule(c, lo, x, hi, **_):
    return _clamp(c.b, x, lo, hi)


@rule("convert_element_type")
def _convert(c, x, **_):
    return c.b.cast(x, c.out_dtype(0))


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


@rule("transpose")
def _transpose(c, x, *, permutation, **_):
    return c.b.transpose(x, permutation)


@rule("rev")
def _rev(c, x, *, dimensions, **_):
    return c.b.flip(x, dimensions)


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


@rule("concatenate")
def _concatenate(c, *xs, dimension, **_):
    return c.b.concat(xs, dimension)


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


@rule("cummax", "cummin")
def _cum_extreme(c, x, *, axis, reverse=False, **_):
    """out[i] = max(x[:i+1]) over an [i, j] grid of the axis: exact, n² work."""
    b = c.b
    largest = c.eqn.primitive.name == "cummax"
    axis %= x.rank
    if reverse:
        x = b.flip(x, [axis])
    n = x.shape[axis]
    grid = x.shape[:axis] + (n, n) + x.shape[axis + 1:]  # dim axis is i, axis + 1 is j
    xj = b.broadcast_to(b.expand_dims(x, axis), grid)
    if x.dtype.is_float:
        fill = -math.inf if largest else math.inf
    elif x.dtype is DType.bool:
        fill = not largest
    else:
        fill = int(np.iinfo(x.dtype.np).min if largest else np.iinfo(x.dtype.np).max)
    upto = b.binary(Op.LE, b.iota(grid, axis + 1), b.iota(grid, axis))
    out = b.reduce(Op.REDUCE_MAX if largest else Op.REDUCE_MIN,
                   b.select(upto, xj, b.const(fill, x.dtype)), axis + 1)
    return b.flip(out, [axis]) if reverse else out


@rule("top_k")
def _top_k(c, x, *, k, axis=-1, **_):
    values, indices = c.b.top_k(x, int(k), axis)
    return [values, c.b.cast(indices, c.out_dtype(1))]


@rule("sort")
def _sort(c, *xs, dimension, num_keys=1, **_):
    """Stable sort by the first operand (lax.sort is stable when asked; stable is always right)."""
    if num_keys != 1:
        raise c.unsupported(f"sorting by {num_keys} keys")
    b = c.b
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


def _linearize(c, x: Node, idx: Node, ob: list, ib: list, sim: list, clamp: bool):
    """(x as [batching, merged indexed, rest], its perm, linear index as [index batching, other
    index dims], those dims' order, in-bounds mask in the same layout)."""
    b = c.b
    if not sim:
        raise c.unsupported("an index vector of length 0")
    rest = [d for d in range(x.rank) if d not in ob and d not in sim]
    perm = ob + sim + rest
    sizes = [x.shape[d] for d in sim]
    xt = b.reshape(b.transpose(x, perm), [x.shape[d] for d in ob] + [math.prod(sizes)] + [x.shape[d] for d in rest])
    ip = idx.shape[:-1]  # the index vector is the last dim
    comps = [b.reshape(b.slice(idx, -1, k, k + 1), ip) for k in range(len(sim))]
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
    order = ib + [j for j in range(len(ip)) if j not in ib]
    return xt, perm, b.transpose(lin, order), order, b.transpose(in_bounds, order)


def _static_in_bounds(c, x: Node, idx: Node, sim: list) -> bool:
    v = c.static(idx)
    return v is not None and all(((v[..., k] >= 0) & (v[..., k] < x.shape[d])).all() for k, d in enumerate(sim))


@rule("gather")
def _gather(c, x, idx, *, dimension_numbers, slice_sizes, mode, fill_value=None, **_):
    b, dn = c.b, dimension_numbers
    mode = _mode(c, mode)
    ob, ib = list(dn.operand_batching_dims), list(dn.start_indices_batching_dims)
    sim, collapsed = list(dn.start_index_map), set(dn.collapsed_slice_dims)
    if any(slice_sizes[d] != 1 for d in sim):
        raise c.unsupported("gathering windows wider than one element along an indexed dim")
    rest = [d for d in range(x.rank) if d not in ob and d not in sim]
    for d in rest:  # windows along unindexed dims start at 0
        x = b.slice(x, d, 0, slice_sizes[d])
    fill = mode == "FILL_OR_DROP" and not _static_in_bounds(c, x, idx, sim)
    # the IR's gather clamps one index; a linear index over several dims clamps each first
    xt, _, lin, order, in_bounds = _linearize(c, x, idx, ob, ib, sim, clamp=len(sim) > 1 and not fill)
    out = b.add(Op.GATHER, [xt, lin], axis=len(ob), batch_dims=len(ob))
    # out is [index dims in `order`, rest]; JAX drops collapsed dims and keeps indexed ones as 1s
    ip = idx.shape[:-1]
    labels = [("i", j) for j in order] + [("o", d) for d in rest if d not in collapsed]
    labels += [("o", d) for d in sim if d not in collapsed]
    out = b.reshape(out, [ip[l[1]] if l[0] == "i" else slice_sizes[l[1]] for l in labels])
    window = iter(d for d in range(x.rank) if d not in collapsed and d not in ob)
    index = iter(range(len(ip)))
    target = [("o", next(window)) if pos in dn.offset_dims else ("i", next(index))
              for pos in range(len(labels))]
    out = b.transpose(out, [labels.index(t) for t in target])
    if fill:  # FILL_OR_DROP: an out-of-range index reads fill_value
        if fill_value is None:
            dt = x.dtype
            fill_value = math.nan if dt.is_float else True if dt is DType.bool else np.iinfo(dt.np).min
        in_bounds = b.transpose(in_bounds, list(np.argsort(order)))  # back to index order
        mask = b.add(Op.BROADCAST, [in_bounds], shape=out.shape, dims=[target.index(("i", j)) for j in range(len(ip))])
        out = b.select(mask, out, b.const(_py(fill_value, x.dtype), x.dtype))
    return out


def _scatter(c, x, idx, upd, dn, mode, kind: str):
    b = c.b
    mode = _mode(c, mode)
    ob, ib = list(dn.operand_batching_dims), list(dn.scatter_indices_batching_dims)
    sim, inserted = list(dn.scatter_dims_to_operand_dims), set(dn.inserted_window_dims)
    ip = idx.shape[:-1]
    # updates: window dims at update_window_dims, index dims elsewhere (as gather's output)
    window = iter(d for d in range(x.rank) if d not in inserted and d not in ob)
    index = iter(range(len(ip)))
    labels = [("o", next(window)) if pos in dn.update_window_dims else ("i", next(index))
              for pos in range(upd.rank)]
    width = {l[1]: upd.shape[p] for p, l in enumerate(labels) if l[0] == "o"}
    if any(width.get(d, 1) != 1 for d in sim):
        raise c.unsupported("scattering windows wider than one element along an indexed dim")
    rest = [d for d in range(x.rank) if d not in ob and d not in sim]
    # canonical updates: [index dims in `order`, rest dims], rest windows padded to full size
    keep = [p for p, l in enumerate(labels) if not (l[0] == "o" and l[1] in sim)]
    labels = [labels[p] for p in keep] + [("o", d) for d in rest if d in inserted]
    upd = b.reshape(upd, [upd.shape[p] for p in keep] + [1] * sum(d in inserted for d in rest))
    clip = mode == "CLIP"
    xt, perm, lin, order, in_bounds = _linearize(c, x, idx, ob, ib, sim, clamp=clip)
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
    else:  # set: where some update lands, their sum (one update, unless indices repeat)
        vals = scatter(b.const(zero, xt.dtype, xt.shape), spread(upd, zero))
        hits = scatter(b.const(0, DType.i32, xt.shape), spread(b.const(1, DType.i32, upd.shape), 0))
        out = b.select(b.binary(Op.GT, hits, 0), vals, xt)
    out = b.reshape(out, [x.shape[d] for d in perm])
    return b.transpose(out, list(np.argsort(perm)))


@rule("scatter-add", "scatter_add")
def _scatter_add(c, x, idx, upd, *, dimension_numbers, mode, **_):
    return _scatter(c, x, idx, upd, dimension_numbers, mode, "add")


@rule("scatter-sub", "scatter_sub")
def _scatter_sub(c, x, idx, upd, *, dimension_numbers, mode, **_):
    return _scatter(c, x, idx, upd, dimension_numbers, mode, "sub")


@rule("scatter")
def _scatter_set(c, x, idx, upd, *, dimension_numbers, mode, **_):
    """x.at[idx].set(u). Where indices repeat, JAX leaves the winner unspecified; here they sum."""
    return _scatter(c, x, idx, upd, dimension_numbers, mode, "set")
