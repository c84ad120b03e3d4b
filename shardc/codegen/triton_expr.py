"""IR node → Triton expression at a symbolic index: the code every Triton template's holes hold.

`ExprEmitter.value(node, idx)` returns a Triton variable holding `node`'s value at `idx` (one
`Ix` per dim of `node`), writing the lines that compute it. Materialized tensors are loaded
(upcast to f32 after the load: the interpreter computes bf16 on raw bits); layout ops rewrite the
index; elementwise ops combine operands at the same index; a reduction sums the tile's column axis;
gather loads at a computed index. Values are cached per (node, index), so a subexpression shared by
two roots is computed once. Anything the current kernel cannot compute raises `CannotFuse`, which
makes the planner materialize it instead.
"""
from __future__ import annotations

import contextlib
import math
import re

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import DType, Node, Op
from ..ir.evaluate import EVAL
from ..ir.ops import BINARY, COMPARE, ELEMENTWISE, REDUCE, UNARY
from .emitted import KernelValue, literal
from . import fused_triton, masked_blocks, masked_loops
from .fusion import CannotFuse
from .indexing import Ix, flatten, reshape_index, unflatten


TL_STORAGE = {DType.f32: "tl.float32", DType.f16: "tl.float16", DType.bf16: "tl.bfloat16",
              DType.i32: "tl.int32", DType.i64: "tl.int64", DType.bool: "tl.int1"}
# arithmetic type: half floats compute in f32 (upcast after load, cast back before store)
TL_COMPUTE = {**TL_STORAGE, DType.f16: "tl.float32", DType.bf16: "tl.float32"}


def round_half(text: str, dtype: DType) -> str:
    """f32 rounded to the nearest `dtype` value, kept in f32. bf16 rounds with integer ops: the
    interpreter's f32→bf16 conversion truncates (a GPU rounds to nearest even, as this does)."""
    if dtype is DType.bf16:
        return f"_round_bf16({text})"
    return f"({text}).to(tl.float16).to(tl.float32)"


class Val(KernelValue):
    """A value in the kernel: Triton text (a variable or a literal), tile deps, IR dtype."""

    __slots__ = ("deps",)

    def __init__(self, text: str, deps, dtype: DType, const=None):
        self.text, self.deps, self.dtype, self.const = text, frozenset(deps), dtype, const


_UNARY_TEXT = {
    Op.NEG: "-{0}", Op.ABS: "tl.abs({0})", Op.EXP: "tl.exp({0})", Op.LOG: "tl.log({0})",
    Op.LOG1P: "tl.log(1.0 + {0})", Op.SQRT: "tl.sqrt({0})", Op.RSQRT: "tl.rsqrt({0})",
    # no tanh in tl (libdevice does not run in the interpreter): 2σ(2x) - 1
    Op.TANH: "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)", Op.LOGISTIC: "tl.sigmoid({0})",
    Op.ERF: "tl.erf({0})", Op.SIN: "tl.sin({0})", Op.COS: "tl.cos({0})",
    Op.FLOOR: "tl.floor({0})", Op.CEIL: "tl.ceil({0})",
}
_BINARY_TEXT = {
    Op.ADD: "({0} + {1})", Op.SUB: "({0} - {1})", Op.MUL: "({0} * {1})", Op.REM: "({0} % {1})",
    Op.MAX: "tl.maximum({0}, {1})", Op.MIN: "tl.minimum({0}, {1})",
    Op.AND: "({0} & {1})", Op.OR: "({0} | {1})", Op.XOR: "({0} ^ {1})",
    Op.SHL: "({0} << {1})", Op.SHR: "({0} >> {1})",
    Op.EQ: "({0} == {1})", Op.NE: "({0} != {1})", Op.LT: "({0} < {1})", Op.LE: "({0} <= {1})",
    Op.GT: "({0} > {1})", Op.GE: "({0} >= {1})",
}


class Tile:
    """A kernel's tile variables: name → (mask variable, position in the 2-D tile, block size)."""

    def __init__(self, **axes: tuple[str, int, str]):
        self.axes = axes

    def mask(self, deps) -> str | None:
        terms = [self.axes[v][0] for v in sorted(deps) if v in self.axes]
        return " & ".join(terms) if terms else None

    def shape(self, deps) -> str:
        shape = ["1", "1"]
        for v in deps:
            if v in self.axes:
                shape[self.axes[v][1]] = self.axes[v][2]
        return f"[{shape[0]}, {shape[1]}]"


class Block:
    def __init__(self):
        self.lines: list[str] = []
        self.cache: dict = {}
        self.loop = None  # the narrowed loop (masked_blocks.Bounds) this block is the body of


class ExprEmitter:
    """Writes Triton lines computing IR nodes at symbolic indices inside one kernel."""

    def __init__(self, tile: Tile, buffers: dict[Node, str], scalars: dict[Node, str] | None = None,
                 bound: dict | None = None, reduce_axis: tuple[str, int] | None = None,
                 hoist=None, loop_reduce: tuple[str, str] | None = None, online: dict | None = None):
        self.tile = tile
        self.buffers = buffers          # materialized node → pointer argument name
        self.scalars = scalars or {}    # axis_index node → scalar argument name
        self.bound = bound or {}        # node → fn(idx) -> Val (e.g. a matmul's accumulator)
        self.reduce_axis = reduce_axis  # (column variable, its extent) in row-reduction kernels
        # tile variables defined before any loop: a value indexed by these alone is computed
        # once, in the outermost block (hoisted out of loops: a norm's row statistics)
        self.hoist = frozenset(hoist) if hoist is not None else None
        # (loop variable, block constexpr): reductions run as their own loop over the reduced
        # elements in chunks (rows longer than one tile; row statistics inside a matmul)
        self.loop_reduce = loop_reduce
        # looped reductions Σexp(y - max y) ↔ max y computed in one loop (fused_flash.online_pairs)
        self.online = {**(online or {}), **{m: s for s, m in (online or {}).items()}}
        self.local: frozenset = frozenset()  # values of one loop iteration: never hoisted
        self.blocks = [Block()]
        self.count = 0
        self.computed: set[Node] = set()  # nodes whose values this kernel computes (not loads)
        # causal blocks skipped (codegen/masked_blocks.py): the supports of the graph's values, the
        # tile variables' ranges in a program (text → masked_loops.Range), and each dot the
        # kernel computes with the narrowed loops around it (dot FLOPs executed vs dense)
        self.masks = masked_blocks.Analysis()
        self.ranges: dict = {}
        self.sites: list = []

    def loops(self) -> tuple:
        """The narrowed loops around the block being written (outermost first)."""
        return tuple(b.loop for b in self.blocks if b.loop is not None)

    def narrow(self, sup, idx, loop_names: dict, var: str, extent: int, block: str):
        """Bounds of a loop over `var` (0..extent, `block` at a time) whose summands are the
        identity outside support `sup` of a value read at `idx` (texts in `loop_names` name the
        loop's variable; the kernel's tile variables name themselves). None: the full loop."""
        names = {t: t for t in self.ranges} | {t: var for t in loop_names}
        return masked_loops.loop_bounds(masked_blocks.on_tile(sup, idx, names), var, extent, block, self.ranges)

    # ---------------------------------------------------------------------------- plumbing
    @property
    def lines(self) -> list[str]:
        return self.blocks[-1].lines

    @contextlib.contextmanager
    def block(self):
        """A nested code block (a loop body): its values are not visible after it closes."""
        b = Block()
        self.blocks.append(b)
        try:
            yield b
        finally:
            self.blocks.pop()

    def emit(self, text: str, deps, dtype: DType, prefix: str = "v") -> Val:
        self.count += 1
        name = f"{prefix}{self.count}"
        self.lines.append(f"{name} = {text}")
        return Val(name, deps, dtype)

    def full(self, v: Val, deps) -> str:
        """`v` broadcast to the tile shape of `deps` (Python literals and row values alike)."""
        deps = frozenset(deps) | v.deps
        if not deps - v.deps and v.const is None:
            return v.text
        shape = self.tile.shape(deps)
        zero = f"tl.zeros({shape}, {TL_COMPUTE[v.dtype] if v.dtype is not DType.bool else 'tl.int32'})"
        if v.dtype is DType.bool:
            return f"(({v.text}) + {zero} != 0)" if v.const is None else f"({zero} + {int(bool(v.const))} != 0)"
        return f"({v.text} + {zero})"

    # ------------------------------------------------------------------------------ values
    def value(self, node: Node, idx: tuple, masks: tuple = ()) -> Val:
        key = (node, tuple(i.text for i in idx), tuple(m.text for m in masks))
        for b in reversed(self.blocks):
            if key in b.cache:
                return b.cache[key]
        if (self.hoist is not None and len(self.blocks) > 1 and all(i.deps <= self.hoist for i in idx)
                and all(m.deps <= self.hoist for m in masks) and node not in self.local):
            saved = self.blocks
            self.blocks = saved[:1]
            try:
                v = self._compute(node, tuple(idx), masks)
                self.blocks[0].cache[key] = v
            finally:
                self.blocks = saved
            return v
        v = self._compute(node, tuple(idx), masks)
        self.blocks[-1].cache[key] = v
        return v

    def _compute(self, n: Node, idx: tuple, masks: tuple) -> Val:
        if n in self.bound:
            return self.bound[n](idx)
        if n in self.buffers:
            return self.load(n, idx, masks)
        if n in self.scalars:
            return Val(self.scalars[n], (), n.dtype)
        op = n.op
        if op is Op.CONSTANT:
            if isinstance(n.attrs["value"], np.ndarray):
                raise CannotFuse(f"{n.describe()}: array constants are kernel inputs", n)
            v = np.asarray(n.attrs["value"]).astype(n.dtype.np)
            return Val(literal(v, n.dtype), (), n.dtype, const=v)
        if op not in _INDEX_OPS and op not in ELEMENTWISE:
            raise CannotFuse(f"{n.describe()} is not computed inside this kernel", n)
        self.computed.add(n)
        if op in ELEMENTWISE:
            v = self._elementwise(n, [self.value(i, idx, masks) for i in n.inputs])
        else:
            v = _INDEX_OPS[op](self, n, idx, masks)
        if n.dtype in (DType.f16, DType.bf16) and v.const is None and op not in _EXACT_IN_HALF:
            # round where the program stores a half value (as the oracle and torch eager do)
            v = self.emit(round_half(v.text, n.dtype), v.deps, n.dtype)
        return v

    def load(self, n: Node, idx: tuple, masks: tuple = ()) -> Val:
        ptr = self.buffers[n]
        off = flatten(idx, n.shape)
        deps = set(off.deps)
        for m in masks:
            deps |= m.deps
        # a scalar condition joins a block mask as a block (the interpreter refuses block & scalar)
        terms = [f"((tl.zeros({self.tile.shape(deps)}, tl.int32) + ({m.text}).to(tl.int32)) != 0)"
                 if deps and not m.deps else m.text for m in masks]
        mask = " & ".join(t for t in [self.tile.mask(off.deps)] + terms if t)
        addr = f"{ptr} + {off.text}" if off.text != "0" else ptr
        if off.deps != frozenset(deps):  # the mask is wider than the address: broadcast the address
            addr = f"{addr} + tl.zeros({self.tile.shape(deps)}, tl.int32)"
        text = f"tl.load({addr}, mask={mask}, other=0)" if mask else f"tl.load({addr})"
        if n.dtype in (DType.f16, DType.bf16):
            text += ".to(tl.float32)"
        return self.emit(text, deps, n.dtype, "x")

    def store_text(self, n: Node, ptr: str, idx: tuple, v: Val, when: str | None = None) -> str:
        """`tl.store` of `v` as element `idx` of the contiguous output `n` (only where the scalar
        condition `when` holds, if given)."""
        off = flatten(idx, n.shape)
        deps = off.deps | v.deps
        addr = f"{ptr} + {off.text}" if off.text != "0" else ptr
        if off.deps != deps:
            addr = f"{addr} + tl.zeros({self.tile.shape(deps)}, tl.int32)"
        val = self.full(v, deps)
        if when and not deps:  # a one-element store under a block condition: store a [1, 1] block
            addr = f"{addr} + tl.zeros([1, 1], tl.int32)"
            val = f"(tl.zeros([1, 1], {TL_COMPUTE[n.dtype]}) + ({val}))"
        if n.dtype in (DType.f16, DType.bf16):
            val = f"({val}).to({TL_STORAGE[n.dtype]})"
        mask = " & ".join(t for t in (self.tile.mask(deps), when) if t)
        return f"tl.store({addr}, {val}, mask={mask})" if mask else f"tl.store({addr}, {val})"

    # ------------------------------------------------------------------------- elementwise
    def _elementwise(self, n: Node, args: list[Val]) -> Val:
        if all(a.const is not None for a in args):  # fold on the host, exactly as the oracle does
            with np.errstate(all="ignore"):
                v = np.asarray(EVAL[n.op](n, *[np.asarray(a.const).astype(
                    np.float32 if a.dtype in (DType.f16, DType.bf16) else a.dtype.np) for a in args]))
            v = v.astype(n.dtype.np)
            return Val(literal(v, n.dtype), (), n.dtype, const=v)
        deps = frozenset().union(*(a.deps for a in args))
        t = [a.text for a in args]
        src = n.inputs[0].dtype
        op = n.op
        if op is Op.CAST:
            return self._cast(args[0], n.dtype)
        if op is Op.SELECT:
            return self.emit(f"tl.where({t[0]}, {t[1]}, {t[2]})", deps, n.dtype)
        if op in _UNARY_TEXT and (src.is_float or op in (Op.NEG, Op.ABS)):
            return self.emit(_UNARY_TEXT[op].format(*t), deps, n.dtype)
        if op is Op.NOT:
            return self.emit(f"({t[0]} == 0)" if src is DType.bool else f"(~{t[0]})", deps, n.dtype)
        if op is Op.SIGN:
            one, zero = ("1.0", "0.0") if src.is_float else ("1", "0")
            return self.emit(f"tl.where({t[0]} > 0, {one}, tl.where({t[0]} < 0, -{one}, {t[0]} * 0))", deps, n.dtype)
        if op is Op.ROUND:  # half to even, as numpy
            f = self.emit(f"tl.floor({t[0]})", deps, n.dtype)
            return self.emit(f"tl.where({t[0]} - {f} > 0.5, {f} + 1.0, tl.where({t[0]} - {f} < 0.5, {f}, "
                             f"{f} + ({f} - 2.0 * tl.floor({f} * 0.5))))", deps, n.dtype)
        if op is Op.DIV:
            if src.is_float:
                return self.emit(f"({t[0]} / {t[1]})", deps, n.dtype)
            safe = self.emit(f"tl.where({t[1]} == 0, 1, {t[1]})", deps, n.dtype)
            return self.emit(f"tl.where({t[1]} == 0, -1, {t[0]} // {safe})", deps, n.dtype)
        if op is Op.POW:
            if not src.is_float:
                raise UnsupportedOpError(f"{n.describe()}: integer pow has no Triton kernel")
            mag = self.emit(f"tl.exp({t[1]} * tl.log(tl.abs({t[0]})))", deps, n.dtype)
            odd = f"({t[1]} - 2.0 * tl.floor({t[1]} * 0.5) == 1.0)"
            neg = f"tl.where({t[1]} == tl.floor({t[1]}), tl.where({odd}, -{mag}, {mag}), float(\"nan\"))"
            return self.emit(f"tl.where({t[1]} == 0, 1.0, tl.where({t[0]} < 0, {neg}, {mag}))", deps, n.dtype)
        if op in (Op.MAX, Op.MIN) and src is DType.bool:
            return self.emit(f"({t[0]} {'|' if op is Op.MAX else '&'} {t[1]})", deps, n.dtype)
        if op in _BINARY_TEXT:
            return self.emit(_BINARY_TEXT[op].format(*t), deps, n.dtype)
        raise UnsupportedOpError(f"{n.describe()}: no Triton lowering for {op.value} on {src}")

    def _cast(self, a: Val, to: DType) -> Val:
        src = a.dtype
        if to is DType.bool:
            return self.emit(f"({a.text} != 0)", a.deps, to)
        text = a.text if TL_COMPUTE[src] == TL_COMPUTE[to] else f"{a.text}.to({TL_COMPUTE[to]})"
        if to in (DType.f16, DType.bf16) and src is not to:  # round as the stored type would
            text = round_half(text, to)
        if text == a.text:
            return Val(a.text, a.deps, to, a.const)
        return self.emit(text, a.deps, to)

    # ------------------------------------------------------------------- index-changing ops
    def _iota(self, n: Node, idx, masks) -> Val:
        i = idx[n.attrs["dimension"]]
        if i.const is not None:
            v = np.asarray(i.const).astype(n.dtype.np)
            return Val(literal(v, n.dtype), (), n.dtype, const=v)
        return self.emit(f"({i.text}).to({TL_COMPUTE[n.dtype]})", i.deps, n.dtype)

    def _broadcast(self, n: Node, idx, masks) -> Val:
        x = n.inputs[0]
        dims = n.attrs["dims"]
        sub = tuple(idx[d] if x.shape[i] == n.shape[d] else Ix(0) for i, d in enumerate(dims))
        return self.value(x, sub, masks)

    def _transpose(self, n: Node, idx, masks) -> Val:
        perm = n.attrs["perm"]
        sub = [Ix(0)] * len(perm)
        for i, p in enumerate(perm):
            sub[p] = idx[i]
        return self.value(n.inputs[0], tuple(sub), masks)

    def _slice(self, n: Node, idx, masks) -> Val:
        a = n.attrs
        sub = tuple(i * st + s for i, s, st in zip(idx, a["start"], a["stride"]))
        return self.value(n.inputs[0], sub, masks)

    def _reshape(self, n: Node, idx, masks) -> Val:
        return self.value(n.inputs[0], reshape_index(idx, n.shape, n.inputs[0].shape), masks)

    def _pad(self, n: Node, idx, masks) -> Val:
        x = n.inputs[0]
        sub = tuple(i - lo for i, lo in zip(idx, n.attrs["low"]))
        conds = [f"({s.text} >= 0) & ({s.text} < {x.shape[d]})" for d, s in enumerate(sub)
                 if (n.attrs["low"][d] or n.attrs["high"][d]) and s.const is None]
        pad = Val(literal(n.attrs["value"], n.dtype), (), n.dtype, const=n.attrs["value"])
        if any(s.const is not None and not 0 <= s.const < x.shape[d] for d, s in enumerate(sub)):
            return pad
        if not conds:
            return self.value(x, sub, masks)
        deps = frozenset().union(*(s.deps for s in sub))
        valid = self.emit(" & ".join(conds), deps, DType.bool, "m")
        v = self.value(x, sub, masks + (valid,))
        return self.emit(f"tl.where({valid}, {v}, {pad})", deps | v.deps, n.dtype)

    def _concatenate(self, n: Node, idx, masks) -> Val:
        ax = n.attrs["axis"]
        i = idx[ax]
        pieces, off = [], 0
        for x in n.inputs:
            pieces.append((x, off))
            off += x.shape[ax]
        if i.const is not None:
            x, o = next((x, o) for x, o in pieces if o <= i.const < o + x.shape[ax])
            return self.value(x, idx[:ax] + (i - o,) + idx[ax + 1:], masks)
        result = None
        for x, o in reversed(pieces):
            sub = idx[:ax] + (i - o,) + idx[ax + 1:]
            if result is None:
                result = self.value(x, sub, masks)
                continue
            cond = self.emit(f"({i.text} >= {o}) & ({i.text} < {o + x.shape[ax]})", i.deps, DType.bool, "m")
            v = self.value(x, sub, masks + (cond,))
            result = self.emit(f"tl.where({cond}, {v}, {result})", cond.deps | v.deps | result.deps, n.dtype)
        return result

    def _gather(self, n: Node, idx, masks) -> Val:
        x, ind = n.inputs
        axis, b = n.attrs["axis"], n.attrs.get("batch_dims", 0)
        ni = ind.rank - b
        j = self.value(ind, idx[:b] + idx[axis:axis + ni], masks)
        hi = x.shape[axis] - 1
        if j.const is not None:
            jx = Ix(min(max(int(j.const), 0), hi))
        else:  # out-of-range indices clamp, as XLA's gather
            text = f"tl.minimum(tl.maximum({j.text}, 0), {hi})"
            inner = self.blocks[1:]
            if inner and self.hoist is not None and j.deps <= self.hoist and not self._defined_in(inner, j.text):
                saved = self.blocks  # the index is loop-invariant: clamp it before the loops
                self.blocks = saved[:1]
                try:
                    jc = self.emit(text, j.deps, ind.dtype, "g")
                finally:
                    self.blocks = saved
            else:
                jc = self.emit(text, j.deps, ind.dtype, "g")
                if inner:  # the clamp lives in this loop: what it indexes must not be hoisted above it
                    saved_hoist, self.hoist = self.hoist, None
                    try:
                        return self.value(x, idx[:axis] + (Ix(jc.text, jc.deps),) + idx[axis + ni:], masks)
                    finally:
                        self.hoist = saved_hoist
            jx = Ix(jc.text, jc.deps)
        return self.value(x, idx[:axis] + (jx,) + idx[axis + ni:], masks)

    @staticmethod
    def _defined_in(blocks, text: str) -> bool:
        """Whether `text` names a variable assigned in one of `blocks`."""
        names = set(re.findall(r"[A-Za-z_]\w*", text))
        return any(line.split(" = ", 1)[0] in names for b in blocks for line in b.lines)

    def _reduce(self, n: Node, idx, masks) -> Val:
        x = n.inputs[0]
        if x.dtype is n.dtype and all(x.shape[a] == 1 for a in n.attrs["axes"]):  # over size-1 dims: a reshape
            kept = iter(idx)
            return self.value(x, tuple(Ix(0) if d in n.attrs["axes"] else next(kept) for d in range(x.rank)), masks)
        if self.reduce_axis is None:
            if self.loop_reduce is not None:
                return self._reduce_loop(n, idx, masks)
            raise CannotFuse(f"{n.describe()}: no reduction axis in this kernel", n)
        col, extent = self.reduce_axis
        deps = frozenset().union(*(i.deps for i in idx))
        if col in deps:
            raise CannotFuse(f"{n.describe()}: its result is needed along the reduced axis", n)
        x = n.inputs[0]
        axes = n.attrs["axes"]
        red_shape = [x.shape[a] for a in axes]
        if math.prod(red_shape) != extent:
            raise CannotFuse(f"{n.describe()}: reduces {math.prod(red_shape)} elements, the kernel {extent}", n)
        red = iter(unflatten(Ix(col, {col}), red_shape))
        kept = iter(idx)
        sub = tuple(next(red) if d in axes else next(kept) for d in range(x.rank))
        v = self.value(x, sub, masks)
        tile_deps = deps | {col} | {a for a, (_, pos, _) in self.tile.axes.items() if pos == 0}
        full = self.full(v, tile_deps)
        if x.dtype is DType.bool:
            full = f"({full}).to(tl.int32)"
        if n.op is Op.REDUCE_SUM:
            neutral, fn = "0", "tl.sum"
        elif n.op is Op.REDUCE_MAX:
            neutral, fn = _max_neutral(x.dtype), "tl.max"
        else:
            neutral, fn = _min_neutral(x.dtype), "tl.min"
        text = f"{fn}(tl.where({self.tile.axes[col][0]}, {full}, {neutral}), axis=1)[:, None]"
        if x.dtype is DType.bool:
            text = f"({text} != 0)"
        rows = {a for a, (_, pos, _) in self.tile.axes.items() if pos == 0}
        return self.emit(text, deps | rows, n.dtype, "r")

    def _loop_over_row(self, var: str, block, extent, mask: str, bounds, body):
        """`for` over a row's blocks (narrowed to `bounds` where masked blocks are skipped),
        with the block's index and mask, then `body`'s lines."""
        start, end = (bounds.start_text(), bounds.end_text()) if bounds else ("0", extent)
        self.lines.append(f"for {var}0 in range({start}, {end}, {block}):")
        self.lines.append(f"    {var} = {var}0 + tl.arange(0, {block})[None, :]")
        self.lines.append(f"    {mask} = {var} < {extent}")
        self.lines.extend("    " + l for l in body.lines)

    def _reduce_loop(self, n: Node, idx, masks) -> Val:
        """A reduction as its own loop over the reduced elements, `block` at a time: its result
        is a column of the tile (one value per row it is indexed by)."""
        var, block = self.loop_reduce
        deps = frozenset().union(*(i.deps for i in idx), *(m.deps for m in masks))
        if self.hoist is None or not deps <= self.hoist or any(self.tile.axes[v][1] != 0 for v in deps):
            raise CannotFuse(f"{n.describe()}: its result is needed at an index that changes inside a loop", n)
        partner = self.online.get(n)
        key = (partner, tuple(i.text for i in idx), tuple(m.text for m in masks))
        if partner is not None and not any(key in b.cache for b in self.blocks):
            got = self._online_loop(n, partner, idx, masks, deps)
            if got is not None:
                return got
        x = n.inputs[0]
        axes = n.attrs["axes"]
        red_shape = [x.shape[a] for a in axes]
        extent = math.prod(red_shape)
        red = iter(unflatten(Ix(var, {var}), red_shape))
        kept = iter(idx)
        sub = tuple(next(red) if d in axes else next(kept) for d in range(x.rank))
        sup = masked_blocks.reduce_support(self.masks, n.op, x)
        bounds = self.narrow(sup, sub, {var}, var, extent, block)
        with self.block() as body:
            body.loop = bounds
            v = self.value(x, sub, masks)
            full = self.full(v, deps | {var})
        if x.dtype is DType.bool:
            full = f"({full}).to(tl.int32)"
            acc_t = "tl.int32"
        else:
            acc_t = TL_COMPUTE[x.dtype]
        if n.op is Op.REDUCE_SUM:
            neutral, fn, combine = "0", "tl.sum", "{acc} + {part}"
        elif n.op is Op.REDUCE_MAX:
            neutral = _max_neutral(x.dtype)
            fn, combine = "tl.max", "tl.maximum({acc}, {part})"
        else:
            neutral = _min_neutral(x.dtype)
            fn, combine = "tl.min", "tl.minimum({acc}, {part})"
        self.count += 1
        acc = f"r{self.count}"
        mask = self.tile.axes[var][0]
        part = f"{fn}(tl.where({mask}, {full}, {neutral}), axis=1)[:, None]"
        self.lines.append(f"{acc} = tl.full({self.tile.shape(deps)}, {neutral}, {acc_t})")
        self._loop_over_row(var, block, extent, mask, bounds, body)
        self.lines.append(f"    {acc} = {combine.format(acc=acc, part=part)}")
        if x.dtype is DType.bool:
            return self.emit(f"({acc} != 0)", deps, n.dtype, "r")
        return Val(acc, deps, n.dtype)


    def _online_loop(self, n: Node, partner: Node, idx, masks, deps) -> Val | None:
        """S = Σ exp(y - g(max y)) and M = max y (n and its partner) in one loop over the row, y
        built once per block: a running max m, and a running sum rescaled by exp(g(m_old) -
        g(m_new)) as m grows (the online softmax's statistics). M's value is cached beside S's.
        None where S reads M at another index than its own row, or g(M) varies along the row:
        the two loops are emitted instead."""
        s, m = (n, partner) if n.op is Op.REDUCE_SUM else (partner, n)
        var, block = self.loop_reduce
        x, axes = m.inputs[0], m.attrs["axes"]
        extent = math.prod(x.shape[a] for a in axes)
        red = iter(unflatten(Ix(var, {var}), [x.shape[a] for a in axes]))
        kept = iter(idx)
        sub = tuple(next(red) if d in axes else next(kept) for d in range(x.rank))
        self.count += 1
        c = self.count
        m_acc, m_new, l_acc = f"r{c}m", f"r{c}mn", f"r{c}s"
        want, other_row = tuple(i.text for i in idx), []

        def running(name):
            def at(ix):
                if tuple(i.text for i in ix) != want:
                    other_row.append(ix)
                return Val(name, deps, m.dtype)
            return at
        mask = self.tile.axes[var][0]
        shift = through_exp_sub(s).inputs[1]  # g(M), broadcast along the row
        saved_bound, saved_local = dict(self.bound), self.local
        sup = masked_blocks.union(masked_blocks.reduce_support(self.masks, Op.REDUCE_MAX, x),
                                  masked_blocks.reduce_support(self.masks, Op.REDUCE_SUM, s.inputs[0]))
        bounds = self.narrow(sup, sub, {var}, var, extent, block)  # causal blocks skipped
        with self.block() as body:
            body.loop = bounds
            y = self.full(self.value(x, sub, masks), deps | {var})
            body.lines.append(f"{m_new} = tl.maximum({m_acc}, tl.max(tl.where({mask}, {y}, -float(\"inf\")), axis=1)[:, None])")
            self.local = saved_local | _reaching(s.inputs[0], m, self.buffers)
            try:
                g = []
                for name in (m_acc, m_new):  # g(m_old), g(m_new); then S's terms at m_new
                    with self.block() as part:
                        self.bound[m] = running(name)
                        g.append(self.value(shift, sub, masks))
                        if name == m_new:
                            e = self.full(self.value(s.inputs[0], sub, masks), deps | {var})
                    body.lines.extend(part.lines)
            finally:
                self.bound, self.local = saved_bound, saved_local
        if other_row or any(not v.deps <= deps for v in g):
            return None
        self.lines.append(f"{m_acc} = tl.full({self.tile.shape(deps)}, -float(\"inf\"), tl.float32)")
        self.lines.append(f"{l_acc} = tl.zeros({self.tile.shape(deps)}, tl.float32)")
        self._loop_over_row(var, block, extent, mask, bounds, body)
        # while a row's max is -inf its sum may hold exp(-inf - -inf) = nan: dropped once it is not
        self.lines.append(f"    {l_acc} = tl.where({m_acc} == -float(\"inf\"), 0.0, {l_acc} * tl.exp({g[0].text} - {g[1].text}))"
                          f" + tl.sum(tl.where({mask}, {e}, 0.0), axis=1)[:, None]")
        self.lines.append(f"    {m_acc} = {m_new}")
        vm, vs = Val(m_acc, deps, m.dtype), Val(l_acc, deps, s.dtype)
        if s is not n and s.dtype in (DType.f16, DType.bf16):  # (n itself is rounded by _compute)
            vs = self.emit(round_half(l_acc, s.dtype), deps, s.dtype)
        self.blocks[-1].cache[(partner, want, tuple(k.text for k in masks))] = vs if s is partner else vm
        self.computed |= {m, s}
        return vm if n is m else vs


def through_exp_sub(s: Node) -> Node:
    """The sub of Σ cast(exp(cast(sub))) (fused_flash.online_pairs' pattern)."""
    from .prologue import through
    return through(through(s.inputs[0], {Op.CAST}).inputs[0], {Op.CAST})


def _reaching(top: Node, target: Node, loaded) -> frozenset:
    """The nodes of `top`'s upstream inside the kernel (up to the `loaded` buffers) that are
    computed from `target` (target included)."""
    memo: dict = {}
    stack = [top]
    while stack:
        x = stack[-1]
        if x in memo:
            stack.pop()
            continue
        if x is target or not x.inputs or x in loaded:
            memo[x] = x is target
            stack.pop()
            continue
        todo = [i for i in x.inputs if i not in memo]
        if todo:
            stack.extend(todo)
            continue
        memo[x] = any(memo[i] for i in x.inputs)
        stack.pop()
    return frozenset(x for x, hit in memo.items() if hit)


def _max_neutral(dt: DType) -> str:
    if dt.is_float:
        return '-float("inf")'
    return str(np.iinfo(np.int64 if dt is DType.i64 else np.int32).min) if dt.is_int else "0"


def _min_neutral(dt: DType) -> str:
    if dt.is_float:
        return 'float("inf")'
    return str(np.iinfo(np.int64 if dt is DType.i64 else np.int32).max) if dt.is_int else "1"


_INDEX_OPS = {
    Op.IOTA: ExprEmitter._iota, Op.BROADCAST: ExprEmitter._broadcast, Op.TRANSPOSE: ExprEmitter._transpose,
    Op.SLICE: ExprEmitter._slice, Op.RESHAPE: ExprEmitter._reshape, Op.PAD: ExprEmitter._pad,
    Op.CONCATENATE: ExprEmitter._concatenate, Op.GATHER: ExprEmitter._gather,
    **{op: ExprEmitter._reduce for op in REDUCE},
}
_INDEX_OPS[Op.DOT_GENERAL] = fused_triton.tile_dot  # only recomputed dots reach a value rule
_INDEX_OPS[Op.SCATTER] = fused_triton.onehot_scatter  # only one-hot scatters are inlined
# ops whose result is representable in the operands' half type: no rounding needed
_EXACT_IN_HALF = frozenset({Op.CAST, Op.SELECT, Op.MAX, Op.MIN, Op.NEG, Op.ABS, Op.SIGN, Op.FLOOR, Op.CEIL,
                            Op.ROUND, Op.IOTA, Op.BROADCAST, Op.TRANSPOSE, Op.SLICE, Op.RESHAPE, Op.PAD,
                            Op.CONCATENATE, Op.GATHER, Op.REDUCE_MAX, Op.REDUCE_MIN})
INLINABLE = ELEMENTWISE | set(_INDEX_OPS) | {Op.CONSTANT, Op.AXIS_INDEX}
assert UNARY | BINARY | COMPARE <= ELEMENTWISE
