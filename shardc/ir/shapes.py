"""Shape and dtype rules: one entry per op. Each checks its operands and attributes and
returns the result's (shape, dtype); the builder and the verifier both call `infer`."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import IRError
from .dtypes import DType
from .ops import BINARY, COLLECTIVES, COMPARE, FLOAT_ONLY, INT_OR_BOOL_ONLY, UNARY, Op

Shape = tuple[int, ...]


class _Ctx:
    def __init__(self, op, inputs, attrs, shape, dtype, mesh_axes):
        self.op, self.inputs, self.attrs = op, inputs, attrs
        self.shape, self.dtype, self.mesh_axes = shape, dtype, mesh_axes

    def fail(self, msg: str):
        ops = ", ".join(f"{i.dtype}{list(i.shape)}" for i in self.inputs)
        raise IRError(f"{self.op.value}({ops}): {msg}")

    def need(self, cond, msg: str):
        if not cond:
            self.fail(msg)

    def ints(self, key: str, default=None) -> tuple[int, ...]:
        v = self.attrs.get(key, default)
        if v is None:
            self.fail(f"missing attribute {key!r}")
        try:
            v = tuple(int(x) for x in v)
        except TypeError:
            self.fail(f"attribute {key!r} must be a list of ints, got {v!r}")
        self.attrs[key] = v
        return v

    def axis(self, key: str, rank: int) -> int:
        v = self.attrs.get(key)
        self.need(isinstance(v, (int, np.integer)) and 0 <= v < rank,
                  f"attribute {key}={v!r} must be a dim in [0, {rank})")
        self.attrs[key] = int(v)
        return int(v)

    def mesh_group(self) -> int:
        axes = self.attrs.get("axes")
        self.need(isinstance(axes, (tuple, list)) and axes and all(isinstance(a, str) for a in axes),
                  f"attribute axes={axes!r} must be a non-empty list of mesh axis names")
        self.attrs["axes"] = tuple(axes)
        missing = [a for a in axes if a not in self.mesh_axes]
        self.need(not missing, f"mesh axes {missing} not in the graph's mesh {self.mesh_axes}")
        self.need(len(set(axes)) == len(axes), f"mesh axis repeated in {axes}")
        return int(np.prod([self.mesh_axes[a] for a in axes]))


def reshape_groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pairs (src dims, dst dims) of consecutive dims whose sizes multiply to the same product."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(src):
            gi.append(i); pi *= src[i]; i += 1
        if j < len(dst):
            gj.append(j); pj *= dst[j]; j += 1
        while pi != pj:
            if pi < pj:
                gi.append(i); pi *= src[i]; i += 1
            else:
                gj.append(j); pj *= dst[j]; j += 1
        groups.append((gi, gj))
    return groups


def _same_operands(c: _Ctx, n: int):
    c.need(len(c.inputs) == n, f"takes {n} operands, got {len(c.inputs)}")
    if n > 1:
        s, d = c.inputs[0].shape, c.inputs[0].dtype
        c.need(all(i.shape == s for i in c.inputs), "operand shapes differ (broadcast explicitly)")
        c.need(all(i.dtype == d for i in c.inputs), "operand dtypes differ (cast explicitly)")


def _elementwise(c: _Ctx):
    n = 1 if c.op in UNARY else 2
    _same_operands(c, n)
    d = c.inputs[0].dtype
    if c.op in FLOAT_ONLY:
        c.need(d.is_float, f"needs float operands, got {d}")
    if c.op in INT_OR_BOOL_ONLY:
        c.need(d.is_int or d is DType.bool, f"needs integer or bool operands, got {d}")
    if c.op in (Op.SHL, Op.SHR):
        c.need(d.is_int, f"needs integer operands, got {d}")
    return c.inputs[0].shape, (DType.bool if c.op in COMPARE else d)


def _select(c: _Ctx):
    c.need(len(c.inputs) == 3, "takes (pred, on_true, on_false)")
    p, t, f = c.inputs
    c.need(p.dtype is DType.bool, f"predicate must be bool, got {p.dtype}")
    c.need(p.shape == t.shape == f.shape, "operand shapes differ (broadcast explicitly)")
    c.need(t.dtype == f.dtype, "branch dtypes differ")
    return t.shape, t.dtype


def _cast(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand")
    to = c.attrs.get("to")
    c.need(isinstance(to, DType), f"attribute to={to!r} must be a dtype")
    return c.inputs[0].shape, to


def _leaf(c: _Ctx):
    c.need(not c.inputs, "takes no operands")
    c.need(c.shape is not None and c.dtype is not None, "needs an explicit shape and dtype")
    shape = tuple(int(s) for s in c.shape)
    c.need(all(s >= 0 for s in shape), f"negative dim in {shape}")
    if c.op is Op.CONSTANT:
        v = c.attrs.get("value")
        if isinstance(v, np.ndarray):
            c.need(v.shape == shape, f"value has shape {v.shape}, declared {shape}")
        else:
            c.need(isinstance(v, (int, float, bool)), f"value must be a scalar or array, got {type(v)}")
    if c.op is Op.IOTA:
        c.axis("dimension", len(shape))
        c.need(c.dtype is not DType.bool, "iota cannot be bool")
    return shape, c.dtype


def _broadcast(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand")
    x = c.inputs[0]
    shape = c.ints("shape")
    dims = c.ints("dims")
    c.need(len(dims) == x.rank, f"dims {dims} must map each of the operand's {x.rank} dims")
    c.need(all(0 <= d < len(shape) for d in dims) and list(dims) == sorted(set(dims)),
           f"dims {dims} must be increasing dims of the result {shape}")
    for i, d in enumerate(dims):
        c.need(x.shape[i] in (1, shape[d]), f"operand dim {i} (size {x.shape[i]}) cannot broadcast to {shape[d]}")
    return shape, x.dtype


def _reshape(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand")
    shape = c.ints("shape")
    c.need(int(np.prod(shape)) == c.inputs[0].size, f"cannot reshape to {list(shape)}: sizes differ")
    return shape, c.inputs[0].dtype


def _transpose(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand")
    x = c.inputs[0]
    perm = c.ints("perm")
    c.need(sorted(perm) == list(range(x.rank)), f"perm {perm} is not a permutation of {x.rank} dims")
    return tuple(x.shape[p] for p in perm), x.dtype


def _slice(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand")
    x = c.inputs[0]
    start, limit = c.ints("start"), c.ints("limit")
    stride = c.ints("stride", (1,) * x.rank)
    c.need(len(start) == len(limit) == len(stride) == x.rank, "start/limit/stride need one entry per dim")
    out = []
    for d, (s, l, st) in enumerate(zip(start, limit, stride)):
        c.need(0 <= s <= l <= x.shape[d] and st >= 1, f"bad slice {s}:{l}:{st} of dim {d} (size {x.shape[d]})")
        out.append((l - s + st - 1) // st)
    return tuple(out), x.dtype


def _concatenate(c: _Ctx):
    c.need(len(c.inputs) >= 1, "takes at least one operand")
    x = c.inputs[0]
    ax = c.axis("axis", x.rank)
    for i in c.inputs:
        c.need(i.dtype == x.dtype and i.rank == x.rank, "operands differ in dtype or rank")
        c.need(all(i.shape[d] == x.shape[d] for d in range(x.rank) if d != ax), "operands differ off the axis")
    shape = list(x.shape)
    shape[ax] = sum(i.shape[ax] for i in c.inputs)
    return tuple(shape), x.dtype


def _pad(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand (the pad value is an attribute)")
    x = c.inputs[0]
    low, high = c.ints("low"), c.ints("high")
    c.need(len(low) == len(high) == x.rank, "low/high need one entry per dim")
    c.need(isinstance(c.attrs.get("value"), (int, float, bool)), "attribute value must be a scalar")
    shape = tuple(s + l + h for s, l, h in zip(x.shape, low, high))
    c.need(all(s >= 0 for s in shape), f"negative padding gives {shape}")
    return shape, x.dtype


def _gather_dims(c: _Ctx, x, idx):
    axis = c.axis("axis", x.rank)
    b = int(c.attrs.setdefault("batch_dims", 0))
    c.need(0 <= b <= axis and b <= idx.rank, f"batch_dims={b} must be <= axis and the indices' rank")
    c.need(x.shape[:b] == idx.shape[:b], f"leading {b} batch dims of operand and indices differ")
    c.need(idx.dtype.is_int, f"indices must be integers, got {idx.dtype}")
    return x.shape[:axis] + idx.shape[b:] + x.shape[axis + 1:]


def _gather(c: _Ctx):
    """out[b.., pre.., i.., post..] = x[b.., pre.., idx[b.., i..], post..] (take with batch dims)."""
    c.need(len(c.inputs) == 2, "takes (operand, indices)")
    x, idx = c.inputs
    return _gather_dims(c, x, idx), x.dtype


def _scatter(c: _Ctx):
    """The adjoint of gather: out = x; out[.., idx[..], ..] += updates (duplicates accumulate)."""
    c.need(len(c.inputs) == 3, "takes (operand, indices, updates)")
    x, idx, upd = c.inputs
    want = _gather_dims(c, x, idx)
    c.need(upd.shape == want and upd.dtype == x.dtype, f"updates must be {x.dtype}{list(want)}")
    return x.shape, x.dtype


def _reduce(c: _Ctx):
    c.need(len(c.inputs) == 1, "takes one operand")
    x = c.inputs[0]
    axes = c.ints("axes")
    c.need(all(0 <= a < x.rank for a in axes) and len(set(axes)) == len(axes), f"bad axes {axes}")
    c.attrs["axes"] = tuple(sorted(axes))
    return tuple(s for d, s in enumerate(x.shape) if d not in axes), x.dtype


def _dot_general(c: _Ctx):
    """Result dims: batch, then lhs free, then rhs free (XLA's order)."""
    c.need(len(c.inputs) == 2, "takes (lhs, rhs)")
    a, b = c.inputs
    c.need(a.dtype == b.dtype, "operand dtypes differ (cast explicitly)")
    c.need(a.dtype is not DType.bool, "bool operands")
    lb, rb = c.ints("lhs_batch", ()), c.ints("rhs_batch", ())
    lc, rc = c.ints("lhs_contract"), c.ints("rhs_contract")
    c.need(len(lb) == len(rb) and len(lc) == len(rc), "batch/contract dim lists differ in length")
    for dims, x in ((lb + lc, a), (rb + rc, b)):
        c.need(len(set(dims)) == len(dims) and all(0 <= d < x.rank for d in dims), f"bad dims {dims}")
    for l, r in zip(lb + lc, rb + rc):
        c.need(a.shape[l] == b.shape[r], f"lhs dim {l} (size {a.shape[l]}) != rhs dim {r} (size {b.shape[r]})")
    lfree = [d for d in range(a.rank) if d not in lb + lc]
    rfree = [d for d in range(b.rank) if d not in rb + rc]
    return tuple([a.shape[d] for d in lb] + [a.shape[d] for d in lfree] + [b.shape[d] for d in rfree]), a.dtype


def _ragged_dot(c: _Ctx):
    """Grouped matmul (jax.lax.ragged_dot, torch._grouped_mm): `sizes` [g] cuts a dim into
    contiguous groups whose sizes are values. mode "rows": lhs [m, k] rows in groups, rhs [gl, k, n]
    one matrix per group → [m, n] (rows past the groups are 0). mode "contract": lhs [m, k] and
    rhs [k, n] with k in groups → [gl, m, n] (a weight gradient). An optional scalar
    `group_offset` o makes the op cover groups o..o+gl of the g (expert-parallel local op)."""
    c.need(len(c.inputs) in (3, 4), "takes (lhs, rhs, group_sizes[, group_offset])")
    a, b, sizes = c.inputs[:3]
    mode = c.attrs.setdefault("mode", "rows")
    c.need(a.dtype == b.dtype and a.dtype.is_float, f"lhs/rhs must be the same float dtype, got {a.dtype}, {b.dtype}")
    c.need(sizes.rank == 1 and sizes.dtype.is_int, f"group_sizes must be a 1-d int array, got {sizes.dtype}{list(sizes.shape)}")
    if len(c.inputs) == 4:
        c.need(c.inputs[3].rank == 0 and c.inputs[3].dtype.is_int, "group_offset must be an int scalar")
    c.need(a.rank == 2, f"lhs must be [m, k], got {list(a.shape)}")
    g = sizes.shape[0]
    if mode == "rows":
        c.need(b.rank == 3 and b.shape[1] == a.shape[1], f"rows mode: rhs must be [groups, {a.shape[1]}, n], got {list(b.shape)}")
        c.need(b.shape[0] == g or (len(c.inputs) == 4 and b.shape[0] <= g),
               f"rhs has {b.shape[0]} groups, group_sizes {g}")
        return (a.shape[0], b.shape[2]), a.dtype
    c.need(mode == "contract", f"mode must be 'rows' or 'contract', got {mode!r}")
    c.need(b.rank == 2 and b.shape[0] == a.shape[1], f"contract mode: rhs must be [{a.shape[1]}, n], got {list(b.shape)}")
    gl = int(c.attrs.setdefault("groups", g))
    c.need(0 < gl <= g and (gl == g or len(c.inputs) == 4), f"groups={gl} must be the {g} groups (or fewer with an offset)")
    return (gl, a.shape[0], b.shape[1]), a.dtype


def _axis_index(c: _Ctx):
    c.need(not c.inputs, "takes no operands")
    ax = c.attrs.get("axis")
    c.need(ax in c.mesh_axes, f"axis {ax!r} not in the graph's mesh {c.mesh_axes}")
    return (), DType.i32


def _collective(c: _Ctx):
    if c.op is Op.RAGGED_ALL_TO_ALL:
        return _ragged_all_to_all(c)
    c.need(len(c.inputs) == 1, "takes one operand")
    x = c.inputs[0]
    n = c.mesh_group()
    shape = list(x.shape)
    if c.op is Op.ALL_REDUCE:
        c.need(c.attrs.setdefault("reduce", "sum") in ("sum", "max", "min"), "reduce must be sum, max or min")
    elif c.op is Op.ALL_GATHER:
        shape[c.axis("dim", x.rank)] *= n
    elif c.op is Op.REDUCE_SCATTER:
        d = c.axis("dim", x.rank)
        c.need(shape[d] % n == 0, f"dim {d} (size {shape[d]}) does not divide over {n} devices")
        shape[d] //= n
    elif c.op is Op.ALL_TO_ALL:
        s, k = c.axis("split_dim", x.rank), c.axis("concat_dim", x.rank)
        c.need(shape[s] % n == 0, f"split dim {s} (size {shape[s]}) does not divide over {n} devices")
        shape[s] //= n
        shape[k] *= n
    elif c.op is Op.COLLECTIVE_PERMUTE:
        pairs = tuple((int(a), int(b)) for a, b in c.attrs.get("pairs", ()))
        c.attrs["pairs"] = pairs
        c.need(all(0 <= a < n and 0 <= b < n for a, b in pairs), f"pairs {pairs} out of range for {n} devices")
        c.need(len({b for _, b in pairs}) == len(pairs), "two sources send to one target")
    return tuple(shape), x.dtype


def _ragged_all_to_all(c: _Ctx):
    """Each device's x [N, ...] holds, in group-rank order, one contiguous row segment per peer
    (send_sizes [P], values); peer j's result [rows, ...] is the segments sent to it, in sender
    order, then zeros: a statically sized buffer holding value-sized segments."""
    c.need(len(c.inputs) == 2, "takes (operand, send_sizes)")
    x, sizes = c.inputs
    n = c.mesh_group()
    c.need(x.rank >= 1, "operand needs a row dim")
    c.need(sizes.shape == (n,) and sizes.dtype.is_int, f"send_sizes must be int[{n}], got {sizes.dtype}{list(sizes.shape)}")
    rows = c.attrs.setdefault("rows", x.shape[0])
    c.need(isinstance(rows, (int, np.integer)) and rows >= 0, f"rows={rows!r} must be a size")
    c.attrs["rows"] = int(rows)
    return (int(rows),) + x.shape[1:], x.dtype


RULES: dict[Op, Callable[[_Ctx], tuple]] = {
    Op.PARAMETER: _leaf, Op.CONSTANT: _leaf, Op.IOTA: _leaf,
    **{op: _elementwise for op in UNARY | BINARY | COMPARE},
    Op.SELECT: _select, Op.CAST: _cast,
    Op.BROADCAST: _broadcast, Op.RESHAPE: _reshape, Op.TRANSPOSE: _transpose, Op.SLICE: _slice,
    Op.CONCATENATE: _concatenate, Op.PAD: _pad, Op.GATHER: _gather, Op.SCATTER: _scatter,
    Op.REDUCE_SUM: _reduce, Op.REDUCE_MAX: _reduce, Op.REDUCE_MIN: _reduce,
    Op.DOT_GENERAL: _dot_general, Op.RAGGED_DOT: _ragged_dot, Op.AXIS_INDEX: _axis_index,
    **{op: _collective for op in COLLECTIVES},
}


def infer(op: Op, inputs, attrs: dict, shape=None, dtype=None, mesh_axes=None) -> tuple[Shape, DType]:
    """(shape, dtype) of `op(inputs){attrs}`; normalizes attrs in place; raises IRError when ill-formed."""
    rule = RULES.get(op)
    if rule is None:
        raise IRError(f"op {op.value} has no shape rule")
    c = _Ctx(op, inputs, attrs, shape, dtype, mesh_axes or {})
    out_shape, out_dtype = rule(c)
    return tuple(int(s) for s in out_shape), out_dtype
