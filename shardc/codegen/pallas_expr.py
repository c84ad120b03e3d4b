"""IR nodes → jax.numpy code on blocks: what every Pallas kernel's body is made of.

The Triton emitter works in index space (each value is an expression at a symbolic element index);
Pallas works on blocks, so this emitter works in value space: each IR node of a fusion group
becomes one jnp/lax expression on the *block* of that node that the current grid step holds.
Which dims of which node are split across the grid is decided by `DimClasses`: a union-find
over (node, dim) pairs, joined where an op's factor rule (partition/rules.py) gives two dims the
same factor (elementwise ops, broadcasts of full dims, transposes, 1:1 reshape groups, untouched
dims of slices / pads / concatenates, the kept dims of reductions, gather / scatter batch and
window dims, a dot_general's batch, free and contracting dims). Dims an op needs whole (reduced
dims, sliced or padded dims, a gather's indexed axis, a reshape that merges or splits a dim) are
marked whole: a class holding one of them is never tiled. A class holding two dims of one node is
never tiled either (one value, one block). Everything else is a legal grid axis.

Values compute in f32 for bf16/f16 (upcast after load, rounded to the half type after each op
that the oracle rounds, cast before store), i64 computes as i32 (TPUs have no 64-bit vectors;
kernel inputs are range-checked at launch), bool as bool.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import DType, Node, Op
from ..ir.evaluate import EVAL
from ..ir.ops import ELEMENTWISE, REDUCE
from ..partition.rules import rule_for
from . import fused_pallas
from .emitted import KernelValue
from .emitted import literal as shared_literal
from .fusion import CannotFuse

JNP_STORAGE = {DType.f32: "jnp.float32", DType.f16: "jnp.float16", DType.bf16: "jnp.bfloat16",
               DType.i32: "jnp.int32", DType.i64: "jnp.int32", DType.bool: "jnp.bool_"}
JNP_COMPUTE = {**JNP_STORAGE, DType.f16: "jnp.float32", DType.bf16: "jnp.float32"}
HALF = (DType.f16, DType.bf16)
I32 = np.iinfo(np.int32)


# ------------------------------------------------------------------------------ dim classes
class DimClasses:
    """Union-find over (node, dim): which dims move together across the grid."""

    def __init__(self):
        self.parent: dict = {}
        self.whole: set = set()

    def find(self, k):
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb

    def need_whole(self, k):
        self.find(k)
        self.whole.add(k)

    def classes(self) -> dict:
        out: dict = {}
        for k in list(self.parent):
            out.setdefault(self.find(k), []).append(k)
        return out

    def tileable(self, members) -> bool:
        if any(m in self.whole for m in members):
            return False
        nodes = [n for n, _ in members]
        if len(set(nodes)) != len(nodes):
            return False
        return len({n.shape[d] for n, d in members}) == 1 and members[0][0].shape[members[0][1]] > 1


def constrain(dc: DimClasses, n: Node, accumulates: bool = False) -> None:
    """Record how `n` (computed in the kernel) relates its dims to its operands' dims, as its
    factor rule (partition/rules.py) has it: dims that are one factor move together. A dim is
    whole where the kernel needs all of it: a dim of several factors (a reshape that merges or
    splits, a block slice or concatenate) and every dim sharing one of those factors, a factor
    sharding must keep whole too, a reduction factor (unless the kernel `accumulates` over its
    grid axis: a matmul's K), and a result dim no operand has (a slice's, pad's or concatenate's
    cut), unless the op makes any block of its result itself (broadcast, iota). A scatter's
    table rows may be tiled: its one-hot compares the block's global row indices."""
    rule = rule_for(n)
    places: dict[int, list] = {}
    whole = set(rule.replicated) | (set() if accumulates else set(rule.reduction))
    for x, dims in zip([*n.inputs, n], rule.tensors()):
        for d, fs in enumerate(dims):
            dc.find((x, d))
            for f in fs:
                places.setdefault(f, []).append((x, d))
            if len(fs) > 1:
                whole.update(fs)
    if not rule.splits_result:
        whole |= {f for fs in rule.result for f in fs} - {f for t in rule.operands for fs in t for f in fs}
    for f, dims in places.items():
        for k in dims[1:]:
            dc.union(dims[0], k)
        if f in whole:
            for k in dims:
                dc.need_whole(k)



# ------------------------------------------------------------------------------- values
class Val(KernelValue):
    """A value in the kernel: Python text, its block shape, IR dtype, and a host constant."""

    __slots__ = ("shape",)

    def __init__(self, text: str, shape, dtype: DType, const=None):
        self.text, self.shape, self.dtype, self.const = text, tuple(shape), dtype, const


def literal(v, dtype: DType) -> str:
    """The shared literal, refusing integers beyond 32 bits (TPU kernels compute i64 as i32)."""
    if dtype.is_int and dtype is not DType.bool and not I32.min <= int(v) <= I32.max:
        raise UnsupportedOpError(f"constant {int(v)} of type {dtype} does not fit a 32-bit integer: "
                                 "pallas kernels compute i64 as i32 (TPUs have no 64-bit vectors)")
    return shared_literal(v, dtype)


_UNARY = {
    Op.NEG: "-{0}", Op.ABS: "jnp.abs({0})", Op.EXP: "jnp.exp({0})", Op.LOG: "jnp.log({0})",
    Op.LOG1P: "jnp.log1p({0})", Op.SQRT: "jnp.sqrt({0})", Op.RSQRT: "lax.rsqrt({0})",
    Op.TANH: "jnp.tanh({0})", Op.LOGISTIC: "jax.nn.sigmoid({0})", Op.ERF: "lax.erf({0})",
    Op.SIN: "jnp.sin({0})", Op.COS: "jnp.cos({0})", Op.FLOOR: "jnp.floor({0})", Op.CEIL: "jnp.ceil({0})",
    Op.ROUND: "jnp.round({0})",
    # (jnp.sign lowers through a TPU-generation query that export without a TPU cannot answer)
    Op.SIGN: "jnp.where({0} > 0, 1, jnp.where({0} < 0, -1, {0} * 0))",
}
_BINARY = {
    Op.ADD: "({0} + {1})", Op.SUB: "({0} - {1})", Op.MUL: "({0} * {1})",
    Op.MAX: "jnp.maximum({0}, {1})", Op.MIN: "jnp.minimum({0}, {1})",
    Op.AND: "({0} & {1})", Op.OR: "({0} | {1})", Op.XOR: "({0} ^ {1})",
    Op.SHL: "lax.shift_left({0}, {1})", Op.SHR: "lax.shift_right_arithmetic({0}, {1})",
    Op.EQ: "({0} == {1})", Op.NE: "({0} != {1})", Op.LT: "({0} < {1})", Op.LE: "({0} <= {1})",
    Op.GT: "({0} > {1})", Op.GE: "({0} >= {1})",
}
# results representable in the operands' half type: no rounding needed (as triton_expr)
EXACT_IN_HALF = frozenset({Op.CAST, Op.SELECT, Op.MAX, Op.MIN, Op.NEG, Op.ABS, Op.SIGN, Op.FLOOR, Op.CEIL,
                           Op.ROUND, Op.IOTA, Op.BROADCAST, Op.TRANSPOSE, Op.SLICE, Op.RESHAPE, Op.PAD,
                           Op.CONCATENATE, Op.GATHER, Op.REDUCE_MAX, Op.REDUCE_MIN})


def round_half(text: str, dtype: DType) -> str:
    return f"{text}.astype({JNP_STORAGE[dtype]}).astype(jnp.float32)"


class ValueEmitter:
    """Writes jnp lines computing IR nodes on the current grid step's blocks.

    `block(node)` gives a node's block shape; `loads[node]` the ref holding a materialized
    node's block; `tiles[(node, d)]` → (grid axis, block) for tiled dims (iota offsets);
    `scalars[node]` the text of an axis_index value; `bound[node]` a precomputed Val."""

    program_id = "pl.program_id({})"  # the grid place's axis (a multi-tensor launch's member: its own)

    def __init__(self, block, loads: dict, tiles: dict, scalars: dict):
        self.block, self.loads, self.tiles, self.scalars = block, loads, tiles, scalars
        self.bound: dict[Node, Val] = {}
        self.lines: list[str] = []
        self.count = 0

    def emit(self, text: str, shape, dtype: DType, prefix: str = "v") -> Val:
        self.count += 1
        name = f"{prefix}{self.count}"
        self.lines.append(f"{name} = {text}")
        return Val(name, shape, dtype)

    def array(self, v: Val, shape=None) -> str:
        """`v` as an array of `shape` (default its own): literals become jnp.full."""
        shape = tuple(v.shape if shape is None else shape)
        if v.const is not None:
            return f"jnp.full({shape}, {v.text}, {JNP_COMPUTE[v.dtype]})"
        if v.shape != shape:
            return f"jnp.broadcast_to({v.text}, {shape})"
        return v.text

    def value(self, n: Node) -> Val:
        if n not in self.bound:
            self.bound[n] = self._compute(n)
        return self.bound[n]

    def _compute(self, n: Node) -> Val:
        shape = self.block(n)
        if n in self.loads:
            text = f"{self.loads[n]}[...]"
            if n.dtype in HALF:
                text += ".astype(jnp.float32)"
            return self.emit(f"{text}.reshape({shape})", shape, n.dtype, "x")
        if n in self.scalars:
            return self.emit(self.scalars[n], (), n.dtype, "s")
        op = n.op
        if op is Op.CONSTANT:
            if isinstance(n.attrs["value"], np.ndarray):
                raise CannotFuse(f"{n.describe()}: array constants are kernel inputs", n)
            v = np.asarray(n.attrs["value"]).astype(n.dtype.np)
            return Val(literal(v, n.dtype), shape, n.dtype, const=v)
        if op in ELEMENTWISE:
            v = self._elementwise(n, [self.value(i) for i in n.inputs], shape)
        elif op in _OPS:
            v = _OPS[op](self, n, shape)
        else:
            raise CannotFuse(f"{n.describe()} is not computed inside this kernel", n)
        if n.dtype in HALF and v.const is None and op not in EXACT_IN_HALF:
            v = self.emit(round_half(v.text, n.dtype), v.shape, n.dtype)
        return v

    # ------------------------------------------------------------------------- elementwise
    def _elementwise(self, n: Node, args: list[Val], shape) -> Val:
        if all(a.const is not None for a in args):  # fold on the host, exactly as the oracle does
            with np.errstate(all="ignore"):
                v = np.asarray(EVAL[n.op](n, *[np.asarray(a.const).astype(
                    np.float32 if a.dtype in HALF else a.dtype.np) for a in args]))
            v = v.astype(n.dtype.np)
            return Val(literal(v, n.dtype), shape, n.dtype, const=v)
        t = [a.text for a in args]
        src = n.inputs[0].dtype
        op = n.op
        if op is Op.CAST:
            return self._cast(args[0], n.dtype)
        if op is Op.SELECT:
            return self.emit(f"jnp.where({t[0]}, {t[1]}, {t[2]})", shape, n.dtype)
        if op is Op.NOT:
            return self.emit(f"jnp.logical_not({t[0]})" if src is DType.bool else f"jnp.invert({t[0]})",
                             shape, n.dtype)
        if op in _UNARY and (src.is_float or op in (Op.NEG, Op.ABS, Op.SIGN)):
            return self.emit(_UNARY[op].format(*t), shape, n.dtype)
        if op is Op.DIV:
            if src.is_float:
                return self.emit(f"({t[0]} / {t[1]})", shape, n.dtype)
            safe = self.emit(f"jnp.where({t[1]} == 0, 1, {t[1]})", args[1].shape, n.dtype)
            return self.emit(f"jnp.where({t[1]} == 0, -1, lax.div({self.array(args[0], shape)}, "
                             f"{self.array(safe, shape)}))", shape, n.dtype)
        if op is Op.REM:
            if src.is_float:
                return self.emit(f"lax.rem({self.array(args[0], shape)}, {self.array(args[1], shape)})",
                                 shape, n.dtype)
            safe = self.emit(f"jnp.where({t[1]} == 0, 1, {t[1]})", args[1].shape, n.dtype)
            return self.emit(f"jnp.where({t[1]} == 0, 0, lax.rem({self.array(args[0], shape)}, "
                             f"{self.array(safe, shape)}))", shape, n.dtype)
        if op is Op.POW:
            if not src.is_float:
                raise UnsupportedOpError(f"{n.describe()}: integer pow has no pallas kernel")
            return self.emit(f"lax.pow({self.array(args[0], shape)}, {self.array(args[1], shape)})",
                             shape, n.dtype)
        if op in (Op.MAX, Op.MIN) and src is DType.bool:
            return self.emit(f"({t[0]} {'|' if op is Op.MAX else '&'} {t[1]})", shape, n.dtype)
        if op in (Op.SHL, Op.SHR):
            return self.emit(_BINARY[op].format(self.array(args[0], shape), self.array(args[1], shape)),
                             shape, n.dtype)
        if op in _BINARY:
            return self.emit(_BINARY[op].format(*t), shape, n.dtype)
        raise UnsupportedOpError(f"{n.describe()}: no pallas lowering for {op.value} on {src}")

    def _cast(self, a: Val, to: DType) -> Val:
        if to is DType.bool:
            return self.emit(f"({a.text} != 0)", a.shape, to)
        same = JNP_COMPUTE[a.dtype] == JNP_COMPUTE[to]
        text = a.text if same else f"{a.text}.astype({JNP_COMPUTE[to]})"
        if to in HALF and a.dtype is not to:  # round as the stored type would
            text = round_half(text, to)
        if text == a.text:
            return Val(a.text, a.shape, to, a.const)
        return self.emit(text, a.shape, to)

    # ---------------------------------------------------------------------- structural ops
    def _iota(self, n: Node, shape) -> Val:
        d = n.attrs["dimension"]
        text = f"lax.broadcasted_iota(jnp.int32, {shape}, {d})"
        if (n, d) in self.tiles:
            axis, blk = self.tiles[(n, d)]
            text = f"({text} + {self.program_id.format(axis)} * {blk})"
        if n.dtype is not DType.i32 and n.dtype is not DType.i64:
            text = f"{text}.astype({JNP_COMPUTE[n.dtype]})"
        return self.emit(text, shape, n.dtype)

    def _broadcast(self, n: Node, shape) -> Val:
        x = self.value(n.inputs[0])
        if x.const is not None:
            return Val(x.text, shape, n.dtype, x.const)
        expand = [1] * n.rank
        for i, d in enumerate(n.attrs["dims"]):
            expand[d] = x.shape[i]
        return self.emit(f"jnp.broadcast_to({x.text}.reshape({tuple(expand)}), {shape})", shape, n.dtype)

    def _transpose(self, n: Node, shape) -> Val:
        x = self.value(n.inputs[0])
        if x.const is not None:
            return Val(x.text, shape, n.dtype, x.const)
        return self.emit(f"jnp.transpose({x.text}, {tuple(n.attrs['perm'])})", shape, n.dtype)

    def _reshape(self, n: Node, shape) -> Val:
        x = self.value(n.inputs[0])
        if x.const is not None:
            return Val(x.text, shape, n.dtype, x.const)
        return self.emit(f"{x.text}.reshape({shape})", shape, n.dtype)

    def _slice(self, n: Node, shape) -> Val:
        x = self.value(n.inputs[0])
        if x.const is not None:
            return Val(x.text, shape, n.dtype, x.const)
        a = n.attrs  # a tiled dim is sliced whole (start 0, stride 1): its block is kept as is
        # unit strides first; a strided dim (Mosaic has no strided vector slices) takes its window
        # [start, start + n·stride), padded to length, as (n, stride) and keeps column 0
        unit = [st == 1 for st in a["stride"]]
        start = tuple(s if u else 0 for s, u in zip(a["start"], unit))
        limit = tuple(s + b if u else dim for s, b, u, dim in zip(a["start"], shape, unit, x.shape))
        v = x
        if start != (0,) * n.rank or limit != x.shape:
            v = self.emit(f"lax.slice({x.text}, {start}, {limit})", tuple(l - s for s, l in zip(start, limit)), n.dtype)
        for d, (s, st, b) in enumerate(zip(a["start"], a["stride"], shape)):
            if st == 1:
                continue
            dims = list(v.shape)
            hi = min(dims[d], s + b * st)
            t = f"lax.slice_in_dim({v.text}, {s}, {hi}, axis={d})"
            if hi - s < b * st:
                cfg = tuple((0, b * st - (hi - s) if i == d else 0, 0) for i in range(n.rank))
                t = f"lax.pad({t}, jnp.zeros((), {t}.dtype), {cfg})"
            split = tuple(dims[:d] + [b, st] + dims[d + 1:])
            dims[d] = b
            v = self.emit(f"lax.index_in_dim({t}.reshape({split}), 0, axis={d + 1}, keepdims=False)",
                          tuple(dims), n.dtype)
        return v

    def _pad(self, n: Node, shape) -> Val:
        x = self.value(n.inputs[0])
        pad = literal(n.attrs["value"], n.dtype)
        cfg = tuple((int(lo), int(hi), 0) for lo, hi in zip(n.attrs["low"], n.attrs["high"]))
        return self.emit(f"lax.pad({self.array(x)}, jnp.asarray({pad}, {JNP_COMPUTE[n.dtype]}), {cfg})",
                         shape, n.dtype)

    def _concatenate(self, n: Node, shape) -> Val:
        parts = [self.array(self.value(x)) for x in n.inputs]
        return self.emit(f"jnp.concatenate([{', '.join(parts)}], axis={n.attrs['axis']})", shape, n.dtype)

    def _reduce(self, n: Node, shape) -> Val:
        x = self.value(n.inputs[0])
        axes = tuple(n.attrs["axes"])
        fn = {Op.REDUCE_SUM: "jnp.sum", Op.REDUCE_MAX: "jnp.max", Op.REDUCE_MIN: "jnp.min"}[n.op]
        if n.dtype is DType.bool:
            fn = {Op.REDUCE_SUM: "jnp.any", Op.REDUCE_MAX: "jnp.any", Op.REDUCE_MIN: "jnp.all"}[n.op]
        return self.emit(f"{fn}({self.array(x)}, axis={axes})", shape, n.dtype, "r")

    def _onehot(self, ind: Node, axis: int, b: int, size: int, x_rank: int, clamp: bool, tile=None):
        """(one-hot text, its rank layout) of `ind` over an axis of `size`: shape
        ind[:b] + 1s for x[b:axis] + ind[b:] + (size,) + 1s for x[axis+1:]. `tile`: (grid axis,
        block) where the axis is tiled: the one-hot covers this block's rows (global indices)."""
        j = self.value(ind)
        jt = self.array(j)
        if clamp:
            jt = f"jnp.clip({jt}, 0, {size - 1})"
        ni = ind.rank - b
        jshape = j.shape[:b] + (1,) * (axis - b) + j.shape[b:] + (1,) + (1,) * (x_rank - axis - 1)
        ishape = (1,) * (axis + ni) + (tile[1] if tile else size,) + (1,) * (x_rank - axis - 1)
        iota = f"lax.broadcasted_iota(jnp.int32, {ishape}, {axis + ni})"
        if tile:
            iota = f"({iota} + pl.program_id({tile[0]}) * {tile[1]})"
        return f"({jt}.reshape({jshape}) == {iota})", ni

    def _gather(self, n: Node, shape) -> Val:
        """take(x, clip(ind), axis) as a one-hot select-and-sum over the axis: exact for every
        dtype, and a vector op a TPU runs (its cost is out × axis size; embedding tables this
        way suit small vocabularies)."""
        xn, ind = n.inputs
        axis, b = n.attrs["axis"], n.attrs.get("batch_dims", 0)
        x = self.value(xn)
        oh, ni = self._onehot(ind, axis, b, xn.shape[axis], xn.rank, clamp=True, tile=self.tiles.get((xn, axis)))
        xs = x.shape[:axis] + (1,) * ni + x.shape[axis:]
        xt = f"{self.array(x)}.reshape({xs})"
        if n.dtype is DType.bool:
            return self.emit(f"jnp.any({oh} & {xt}, axis={axis + ni})", shape, n.dtype)
        return self.emit(f"jnp.sum(jnp.where({oh}, {xt}, 0), axis={axis + ni})", shape, n.dtype)

    def _scatter(self, n: Node, shape) -> Val:
        """x + Σ updates at their indices (out-of-range indices dropped), accumulated in f32 for
        half floats and rounded once, as the oracle does; a block of table rows takes the updates
        whose indices fall in it."""
        xn, ind, upd = n.inputs
        if xn.dtype is DType.bool:
            raise UnsupportedOpError(f"{n.describe()}: bool scatter (logical or) has no pallas kernel")
        axis, b = n.attrs["axis"], n.attrs.get("batch_dims", 0)
        x, u = self.value(xn), self.value(upd)
        oh, ni = self._onehot(ind, axis, b, xn.shape[axis], xn.rank, clamp=False, tile=self.tiles.get((n, axis)))
        us = u.shape[:axis + ni] + (1,) + u.shape[axis + ni:]
        contrib = f"jnp.sum(jnp.where({oh}, {self.array(u)}.reshape({us}), 0), axis={tuple(range(axis, axis + ni))})"
        return self.emit(f"({self.array(x)} + {contrib})", shape, n.dtype)


_OPS = {
    Op.IOTA: ValueEmitter._iota, Op.BROADCAST: ValueEmitter._broadcast, Op.TRANSPOSE: ValueEmitter._transpose,
    Op.RESHAPE: ValueEmitter._reshape, Op.SLICE: ValueEmitter._slice, Op.PAD: ValueEmitter._pad,
    Op.CONCATENATE: ValueEmitter._concatenate, Op.GATHER: ValueEmitter._gather, Op.SCATTER: ValueEmitter._scatter,
    **{op: ValueEmitter._reduce for op in REDUCE},
    Op.DOT_GENERAL: fused_pallas.dot_value,  # only recomputed dots reach a value rule
}
