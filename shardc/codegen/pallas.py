"""Pallas (TPU) source for each fusion group: one `pl.pallas_call` per group, written as text into
the kernel cache and imported from there, as the Triton path does.

The fusion planner is shared with Triton; this emitter answers its `feasible` question and writes
the kernels. Kernel bodies are jax.numpy code on blocks (codegen/pallas_expr.py); the grid and
BlockSpecs come from the group's dim classes (which dims of which values move together): the
classes of the group's outputs are tiled, largest legal TPU blocks first (last two block dims a
multiple of (8 or 16, 128) or the whole dim), within a VMEM budget; reduction axes (a matmul's K,
attention's key/value axis) are tiled last in the grid and accumulate in f32 VMEM scratch. A dim
that cannot be tiled (reduced, sliced, padded, gathered along, merged by a reshape) stays whole
in every block, so every group the planner makes can be emitted; tiny shapes run as one block.
Each kernel records its VMEM footprint (codegen/vmem.py) and compiles with vmem_limit_bytes where
that exceeds the target TPU's default scoped limit; a group that fits no core is refused
(CannotFuse: the planner splits it) and, where nothing is left to split, a shardc.Error. A kernel
over the default limit is also tried with its dots' right operands computed from their own copies
of what the left operands read (`pallas_fit.own_operands`: RoPE tables), and the smaller is kept.

Kinds: pointwise / reduction (ROWS template), matmul (dot_general + prologue + epilogue, MATMUL),
attention (flash attention with online softmax, ATTENTION; where q and k come from one buffer or
share a computed value and the whole block would overflow the budget, the key side reads its own
copy, the buffer passed twice, so queries and keys tile apart), scatter (a ROWS kernel whose anchor is
a one-hot select-and-sum scatter-add: a documented reference-style kernel, exact, sized for small
tables). Layout ops are index arithmetic inside blocks (reshape/transpose/slice of block values);
a reshape of a stored value is a ViewStep (no kernel). What cannot be generated raises
UnsupportedOpError naming the op (bool dot_general, bool scatter, integer pow, i64 constants
beyond 32 bits)."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import re

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import DType, Node, Op
from ..kernels import pallas_templates as tpl
from . import fused_multi, grouped, masked_blocks, masked_loops, weight_grad
from .emitted import EmittedKernel
from .fused_recompute import onehot_scatter
from .fusion import CannotFuse, FusionGroup
from .pallas_expr import HALF, JNP_COMPUTE, JNP_STORAGE, DimClasses, Val, ValueEmitter, constrain, round_half
from . import pallas_fit, pallas_vocab, vmem
from .vmem import VmemUse


def key_text() -> str:
    """What besides the group's IR decides the generated text (cache key salt)."""
    hw = vmem.target()
    return f"pallas vmem_budget={tpl.VMEM_BUDGET} tpu={hw.name if hw else 'none'}"


_VMEM_BUDGET: contextvars.ContextVar = contextvars.ContextVar("shardc_pallas_vmem_budget", default=None)


@contextlib.contextmanager
def vmem_budget(nbytes: int):
    """Emit kernels whose blocks are chosen within `nbytes` of VMEM instead of tpl.VMEM_BUDGET
    (the autotuner's Pallas block-shape space, codegen/autotune_space.py)."""
    token = _VMEM_BUDGET.set(int(nbytes))
    try:
        yield
    finally:
        _VMEM_BUDGET.reset(token)


def _indent(lines: list[str], n: int) -> str:
    pad = " " * n
    return "\n".join(pad + l for l in lines) if lines else pad + "pass"


def _itemsize(n: Node) -> int:
    return {DType.f32: 4, DType.f16: 2, DType.bf16: 2, DType.i32: 4, DType.i64: 4, DType.bool: 4}[n.dtype]


def _laid_out(n: Node) -> int:
    """How many leading dims of buffer `n` its kernel view keeps: trailing size-1 dims of a rank-3+
    buffer are dropped (down to 2), since Mosaic lays the last dim out in 128 lanes and a
    [r, c, 1] block would take 128 times its bytes of VMEM."""
    k = n.rank
    while k > 2 and n.shape[k - 1] == 1:
        k -= 1
    return k


_JNP_ITEMSIZE = {"jnp.float32": 4, "jnp.int32": 4, "jnp.bfloat16": 2, "jnp.float16": 2}


class _Builder:
    """Shared state of one kernel: dim classes, chosen tiling, buffer names, source assembly."""

    def __init__(self, grp: FusionGroup, name: str, kind: str):
        self.grp, self.name, self.kind = grp, name, kind
        self.inputs, self.outputs = list(grp.inputs), list(grp.roots)
        axis_nodes = [n for n in grp.nodes if n.op is Op.AXIS_INDEX]
        self.axes = sorted({n.attrs["axis"] for n in axis_nodes})
        self.scalars = {n: f"ax_{n.attrs['axis']}_ref[0]" for n in axis_nodes}
        self.loads = {x: f"in{i}_ref" for i, x in enumerate(self.inputs)}
        self.dc = DimClasses()
        self.tiles: dict = {}
        self.grid: list = []  # (size, block, semantics)
        self.column: set = set()  # rank-1 buffers stored as (n, 1): tiled by blocks of 8, not 128
        self.clamp: dict = {}  # reduction axis → its inputs' block index (causal blocks skipped: _skip)
        for n in self.inputs + self.outputs:
            for d in range(n.rank):
                self.dc.find((n, d))

    def constrain(self, nodes, accumulating: tuple = ()):
        """The dim classes of the nodes the kernel computes (`accumulating`: the dots whose
        contraction the kernel sums over its grid)."""
        for n in nodes:
            if n.op is not Op.AXIS_INDEX and n not in self.loads:
                constrain(self.dc, n, accumulates=n in accumulating)

    def block(self, n: Node) -> tuple:
        return tuple(self.tiles[(n, d)][1] if (n, d) in self.tiles else n.shape[d] for d in range(n.rank))

    def _promote(self, n: Node, shape) -> tuple:
        """A buffer's shape in the kernel: rank 0 and 1 promoted to 2-D (a view): (1, n) rows, or
        (n, 1) columns where the dim is tiled by blocks that are not multiples of 128; trailing
        size-1 dims of higher ranks dropped (down to 2-D)."""
        if n.rank == 0:
            return (1, 1)
        if n.rank == 1:
            return (shape[0], 1) if n in self.column else (1, shape[0])
        return tuple(shape[:_laid_out(n)])

    def storage_block(self, n: Node) -> tuple:
        return self._promote(n, self.block(n))

    def storage_shape(self, n: Node) -> tuple:
        return self._promote(n, n.shape)

    def tile(self, candidates: list, scratch_bytes=lambda block: 0, allowed=lambda members: True,
             arbitrary: set = frozenset(), caps=None, pad_arbitrary: bool = False):
        """Choose the grid: candidates are (node, dim, semantics) in priority order; a class
        holding a dim of `arbitrary` is tiled as an "arbitrary" (accumulating) axis; caps:
        {(node, dim): the largest block its class may take}. A dim no legal block divides is
        tiled in padded blocks (a cdiv grid, the last block overhanging) where it is parallel
        (what is read past the end only reaches outputs past the end, which are dropped), and
        where it accumulates if `pad_arbitrary` (the caller masks the overhang: `edge_mask`)."""
        classes = self.dc.classes()
        chosen, seen = [], set()
        buffers = set(self.inputs) | set(self.outputs)
        for n, d, sem in candidates:
            root = self.dc.find((n, d))
            if root in seen:
                continue
            seen.add(root)
            members = classes[root]
            if not self.dc.tileable(members) or not allowed(members):
                continue
            size = n.shape[d]
            pos = [(_laid_out(x) - 1 - dx if x.rank > 1 else -1, _itemsize(x)) for x, dx in members if x in buffers]
            legal = tpl.legal_blocks(size, pos)
            sem = "arbitrary" if arbitrary & set(members) else sem
            if legal == [size] and (sem == "parallel" or pad_arbitrary):  # no divisor: an edge block overhangs
                legal += tpl.padded_blocks(size, pos)
            cap = min((c for m, c in (caps or {}).items() if m in members), default=size)
            legal = [x for x in legal if x <= cap] or legal[-1:]
            if legal[-1] < size:
                chosen.append((members, size, legal, sem))
        index = {m: i for i, (members, *_ ) in enumerate(chosen) for m in members}

        def nbytes(blocks):  # the kernel's VMEM footprint at these blocks (codegen/vmem.py)
            at = lambda n: tuple(blocks[index[(n, d)]] if (n, d) in index else n.shape[d] for d in range(n.rank))
            return VmemUse(tuple((self._promote(x, at(x)), _itemsize(x)) for x in buffers)).nbytes \
                + scratch_bytes(at)

        budget = _VMEM_BUDGET.get() or tpl.VMEM_BUDGET
        blocks = tpl.choose_blocks([(legal[0], legal) for _, size, legal, _ in chosen], nbytes, budget)
        tiled = [(c, b) for c, b in zip(chosen, blocks) if b < c[1]]
        tiled.sort(key=lambda t: t[0][3] == "arbitrary")  # reduction axes last
        for axis, ((members, size, _, sem), b) in enumerate(tiled):
            self.grid.append((size, b, sem))
            for m in members:
                self.tiles[m] = (axis, b)
                if m[0] in buffers and m[0].rank == 1 and b % 128:
                    self.column.add(m[0])

    def steps(self, axis: int) -> int:
        size, blk, _ = self.grid[axis]
        return -(-size // blk)

    def first_last(self, axes) -> tuple[str, str]:
        """The tests of the first and the last step along grid `axes` (an accumulation's init
        and its finish)."""
        first = " & ".join(f"(pl.program_id({a}) == 0)" for a in axes) or "True"
        last = " & ".join(f"(pl.program_id({a}) == {self.steps(a) - 1})" for a in axes) or "True"
        return first, last

    def padded(self, axis: int) -> bool:
        size, blk, _ = self.grid[axis]
        return size % blk != 0

    def axis_of(self, n: Node, d: int):
        return self.tiles[(n, d)][0] if (n, d) in self.tiles else None

    def emitter(self) -> ValueEmitter:
        return ValueEmitter(self.block, self.loads, self.tiles, self.scalars)

    def store(self, em: ValueEmitter, r: Node, i: int) -> str:
        v = em.value(r)
        return (f"out{i}_ref[...] = {em.array(v, self.block(r))}.reshape({self.storage_block(r)})"
                f".astype({JNP_STORAGE[r.dtype]})")

    def params(self, scratch: list[str]) -> str:
        names = [f"ax_{a}_ref" for a in self.axes] + [f"in{i}_ref" for i in range(len(self.inputs))]
        names += [f"out{i}_ref" for i in range(len(self.outputs))] + scratch
        return ", ".join(names)

    def spec(self, n: Node, pid: str | None = None) -> str:
        """n's BlockSpec; `pid`: the text of the grid place's tuple at multi-tensor step t
        (fused_multi.py), where the kernel's grid is not its own."""
        idx = [self.axis_of(n, d) for d in range(n.rank)]
        if n.rank == 0:
            idx = [None, None]
        elif n.rank == 1:
            idx = idx + [None] if n in self.column else [None] + idx
        idx = idx[:len(self.storage_block(n))]
        g = ", ".join(f"g{i}" for i in range(len(self.grid)))
        clamp = self.clamp if n in self.loads and pid is None else {}  # (causal blocks skipped: _skip)
        ix = ", ".join("0" if a is None else clamp.get(a, f"g{a}") if pid is None else f"{pid}[{a}]" for a in idx)
        head = f"lambda {g + ', ' if g else ''}*_" if pid is None else "lambda t, *_"
        return f"pl.BlockSpec({self.storage_block(n)}, {head}: ({ix},))"

    def finish(self, body: str, scratch: list[tuple], sites=()) -> EmittedKernel:
        """The kernel: `body` and the pallas_call around it; scratch: (shape, jnp dtype) buffers;
        sites: (dot, masked_loops.Fraction of the grid steps computing it)."""
        grp = self.grp
        use = VmemUse(tuple((self.storage_block(x), _itemsize(x)) for x in self.inputs + self.outputs),
                      tuple((shape, _JNP_ITEMSIZE[dt]) for shape, dt in scratch))
        limit = vmem.limit_bytes(use)
        ops = ", ".join(f"%{n.op.value}" + (f" {n.name!r}" if n.name else "") for n in grp.nodes)
        head = tpl.PRELUDE.format(kind=self.kind, name=self.name, reason=grp.reason.replace("\n", " "),
                                  ops=ops[:2000])
        grid = tuple(self.steps(a) for a in range(len(self.grid))) or (1,)
        sem = tuple(s for _, _, s in self.grid) or ("arbitrary",)
        call = tpl.CALL.format(
            name=self.name, nscalar=len(self.axes), grid=grid, semantics=sem,
            in_shapes=", ".join(str(self.storage_shape(x)) for x in self.inputs),
            out_shapes=", ".join(str(self.storage_shape(r)) for r in self.outputs),
            out_shape=", ".join(f"jax.ShapeDtypeStruct({self.storage_shape(r)}, {JNP_STORAGE[r.dtype]})"
                                for r in self.outputs),
            in_specs=", ".join(self.spec(x) for x in self.inputs),
            out_specs=", ".join(self.spec(r) for r in self.outputs),
            scratch=", ".join(f"pltpu.VMEM({shape}, {dt})" for shape, dt in scratch),
            limit="" if limit is None else f", vmem_limit_bytes={limit}")
        return EmittedKernel(self.name, self.kind, head + body + call, self.inputs, self.outputs, self.axes,
                             grid=grid, vmem=use, dot_sites=[(n, (f,)) for n, f in sites])


def _check_dtypes(grp: FusionGroup):
    for n in grp.nodes:
        if n.op is Op.DOT_GENERAL and n.inputs[0].dtype is DType.bool:
            raise UnsupportedOpError(f"{n.describe()}: bool dot_general has no pallas kernel")
        if n.op is Op.SCATTER and n is not grp.anchor and not onehot_scatter(n):
            raise CannotFuse(f"{n.describe()} needs its own kernel", n)


# ------------------------------------------------------------------------------- rows / scatter
def emit_rows(grp: FusionGroup, name: str) -> EmittedKernel:
    """Pointwise chains, row reductions and scatter-adds: tile the outputs' row dims (largest
    output first, leading dims first); reduced dims stay whole in the block, except the rows of a
    float sum whose readers in the kernel only shrink it further (a norm backward's dγ/dβ beside its
    dx, and the SGD update of γ/β after them; a loss): those rows are tiled as an "arbitrary" grid
    axis, each step adds its block's partial sum to an f32 VMEM accumulator, and what is computed
    from the sums is computed and stored at the last step (the matmul template's K loop)."""
    b, acc, late = _row_tiling(grp, name, pallas_fit.summable(grp))
    em = b.emitter()
    stores = [b.store(em, r, i) for i, r in enumerate(grp.roots) if r not in late]
    if not acc:
        body = tpl.ROWS.format(name=name, params=b.params([]), body=_indent(em.lines + stores, 4))
        return b.finish(body, [])
    arb = [a for a, (_, _, sem) in enumerate(b.grid) if sem == "arbitrary"]
    if any(s.op is not Op.REDUCE_SUM for s in acc):  # (a vocabulary axis: the rest would be redone at each step)
        again = [r for r in grp.roots if r not in late and not any(b.axis_of(r, d) in arb for d in range(r.rank))]
        if again:
            raise CannotFuse(f"{again[0].describe()} would be computed again at every step of the vocabulary axis")
    first, last = b.first_last(arb)
    shapes = [b._promote(s, b.block(s)) for s in acc]
    adds = pallas_vocab.partial_sums(b, em, grp, acc, shapes)
    main = em.lines + stores
    em.lines = []
    for i, s in enumerate(acc):  # from here on a sum is its accumulator
        v = em.emit(f"acc{i}_ref[...].reshape({b.block(s)})", b.block(s), s.dtype, "acc")
        em.bound[s] = em.emit(round_half(v.text, s.dtype), v.shape, s.dtype) if s.dtype in HALF else v
    finals = [b.store(em, r, i) for i, r in enumerate(grp.roots) if r in late]
    refs = [f"acc{i}_ref" for i in range(len(acc))]
    # (the last step's lines read grid places from the body: pl.program_id under pl.when does
    # not run in interpret mode)
    at_end = [re.sub(r"pl\.program_id\((\d+)\)", r"pid\1", l) for l in em.lines + finals]
    pids = [f"pid{a} = pl.program_id({a})" for a in range(len(b.grid)) if any(f"pid{a}" in l for l in at_end)]
    body = tpl.ROWS_SUMS.format(name=name, params=b.params(refs), first=first, last=last,
                                init=_indent([f"{r}[...] = jnp.full({r}.shape, {pallas_vocab.IDENTITY.get(s.op, 0)}, {r}.dtype)"
                                              for r, s in zip(refs, acc)], 8),
                                body=_indent(pids + main + adds, 4), finish=_indent(at_end, 8))
    return b.finish(body, [(shape, "jnp.float32") for shape in shapes])


def _row_tiling(grp: FusionGroup, name: str, sums: list) -> tuple:
    """(the builder with the grid chosen, the sums added up across it, what is computed from them)."""
    _check_dtypes(grp)
    while True:
        b = _Builder(grp, name, grp.kind)
        b.constrain(grp.nodes, accumulating=sums)
        summed = {(s.inputs[0], a) for s in sums for a in pallas_fit.summed_axes(s)}
        cands = [(r, d, "parallel") for r in sorted(grp.roots, key=lambda r: -r.size) for d in range(r.rank)]
        b.tile(cands + [(x, a, "arbitrary") for x, a in sorted(summed, key=lambda k: k[1])], arbitrary=summed,
               pad_arbitrary=True)
        acc, late, bad = pallas_fit.accumulation(b, grp, sums)
        if not bad:
            return b, acc, late
        sums = [s for s in sums if s not in bad]


def row_body(grp: FusionGroup, name: str, program_id: str = "pl.program_id({})") -> tuple:
    """(the builder, the body's text) of a row kernel that adds up no sums across its grid (whole
    rows in every block): a member of a multi-tensor launch (fused_multi.py), whose grid place
    `program_id` names."""
    b, _, _ = _row_tiling(grp, name, [])
    em = b.emitter()
    em.program_id = program_id
    stores = [b.store(em, r, i) for i, r in enumerate(grp.roots)]
    return b, _indent(em.lines + stores, 4)


# ------------------------------------------------------------------------------------- matmul
def _dot(d: Node, lhs: Val, rhs: Val, out_shape, attrs=None, em: ValueEmitter | None = None) -> str:
    """A dot_general of two blocks as Mosaic's matmul takes it: operands transposed to
    (batch, free, contract) / (batch, contract, free) and reshaped to 2-D (3-D with one batch
    dim), the result reshaped to the output block. Half floats go to the MXU as bf16/f16 (their
    values are exact there) with f32 accumulation, f32 at HIGHEST precision, integers in int32."""
    a = attrs or d.attrs
    lb, rb, lc, rc = (tuple(a[k]) for k in ("lhs_batch", "rhs_batch", "lhs_contract", "rhs_contract"))
    lf = tuple(i for i in range(len(lhs.shape)) if i not in lb + lc)
    rf = tuple(i for i in range(len(rhs.shape)) if i not in rb + rc)
    size = lambda v, dims: math.prod(v.shape[i] for i in dims)
    B, M, K, N = size(lhs, lb), size(lhs, lf), size(lhs, lc), size(rhs, rf)

    def canon(v: Val, perm, shape2):
        t = em.array(v) if em is not None else v.text
        if perm != tuple(range(len(v.shape))):
            t = f"jnp.transpose({t}, {perm})"
        if tuple(v.shape[i] for i in perm) != shape2:
            t = f"{t}.reshape({shape2})"
        return t
    if lb:
        lt, rt = canon(lhs, lb + lf + lc, (B, M, K)), canon(rhs, rb + rc + rf, (B, K, N))
        dims, res = "(((2,), (1,)), ((0,), (0,)))", (B, M, N)
    else:
        lt, rt = canon(lhs, lf + lc, (M, K)), canon(rhs, rc + rf, (K, N))
        dims, res = "(((1,), (0,)), ((), ()))", (M, N)
    dt = d.inputs[0].dtype
    if dt in HALF:
        lt, rt = (f"{t}.astype({JNP_STORAGE[dt]})" for t in (lt, rt))
        extra = "preferred_element_type=jnp.float32"
    elif dt.is_int:
        extra = "preferred_element_type=jnp.int32"
    else:
        extra = "precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32"
    text = f"lax.dot_general({lt}, {rt}, {dims}, {extra})"
    return text if res == tuple(out_shape) else f"{text}.reshape({tuple(out_shape)})"


def emit_matmul(grp: FusionGroup, name: str) -> EmittedKernel:
    _check_dtypes(grp)
    d = grp.anchor
    sibs = grp.pattern.get("siblings", ())  # more dots over the same blocks (fused_siblings.py)
    dots = (d, *(s for s, _ in sibs))
    b = _Builder(grp, name, "matmul")
    b.constrain(grp.nodes, accumulating=dots)
    for s, swapped in sibs:
        _same_blocks(b.dc, d, s, swapped)
    prologue = pallas_fit.reached_all([x for n in dots for x in n.inputs], grp.nodes) | {x for x in grp.inputs}
    epilogue = set(grp.nodes) - prologue - set(dots)
    shared = {x for n in epilogue for x in n.inputs} & prologue
    ok_k = lambda members: all(n in prologue and n not in shared for n, _ in members)
    acc_t = "jnp.int32" if d.dtype.is_int else "jnp.float32"
    kdims = {(n.inputs[0], i) for n in dots for i in n.attrs["lhs_contract"]} \
        | {(n.inputs[1], j) for n in dots for j in n.attrs["rhs_contract"]}

    def allowed(members):  # a class with contracted dims is tiled only as a pure K axis
        if not kdims & set(members):
            return True
        return not any(n in dots for n, _ in members) and ok_k(members)
    cands = [(d, i, "parallel") for i in range(d.rank)]
    cands += [(d.inputs[0], i, "arbitrary") for i in d.attrs["lhs_contract"]]
    b.tile(cands, scratch_bytes=lambda block: sum(math.prod(block(n)) for n in dots) * 4, allowed=allowed,
           pad_arbitrary=True)
    k_axes = [i for i, (_, _, s) in enumerate(b.grid) if s == "arbitrary"]
    first, last = b.first_last(k_axes)
    em = b.emitter()
    operands = lambda n: [pallas_vocab.edge_mask(b, em, x, [i for i in n.attrs[f"{side}_contract"]])
                          for x, side in zip(n.inputs, ("lhs", "rhs"))]
    dot = _dot(d, *operands(d), b.block(d), em=em)
    refs = [f"sib{i}_ref" for i in range(len(sibs))]
    n_pro = len(em.lines)
    for (s, _), ref in zip(sibs, refs):
        em.lines.append(f"{ref}[...] += {_dot(s, *operands(s), b.block(s), em=em)}")
    step = list(em.lines[:n_pro]) + [f"acc_ref[...] += {dot}"] + list(em.lines[n_pro:])
    em.lines.clear()
    for n, ref in zip(dots, ["acc_ref", *refs]):
        acc = em.emit(f"{ref}[...]", b.block(n), n.dtype, "acc")
        if n.dtype in HALF:  # the dot's result is stored rounded: round it here too
            acc = em.emit(round_half(acc.text, n.dtype), acc.shape, n.dtype)
        em.bound[n] = acc
    stores = [b.store(em, r, i) for i, r in enumerate(grp.roots)]
    an = masked_blocks.Analysis()  # the K blocks where some product the step adds can be non-zero
    sup = []
    for n in dots:
        operands = (masked_loops.on_grid(an.zero(x), x, b.tiles) for x in n.inputs)
        sup = masked_blocks.union(sup, masked_blocks.dot_support(*operands))
    test, frac = _skip(b, sup, step, em.lines + stores, k_axes)
    body = tpl.MATMUL.format(name=name, params=b.params(["acc_ref", *refs]), first=first, last=last,
                             init="".join(f"        {r}[...] = jnp.zeros({r}.shape, {r}.dtype)\n" for r in refs),
                             step=tpl.guarded(step, test), epilogue=_indent(em.lines + stores, 8))
    rebuilt = [n for n in grp.nodes if n in prologue and n.op is Op.DOT_GENERAL and n not in grp.inputs]
    return b.finish(body, [(b.block(n), acc_t) for n in dots], [(n, frac) for n in (*dots, *rebuilt)])


def _skip(b: _Builder, sup, step: list[str], after: list[str], axes: list[int]):
    """(the `pl.when` test of a reduction step whose blocks outside `sup` are skipped, or None;
    the fraction of grid steps that run it), its inputs' index maps clamped (masked_loops.py).
    Only where a reduction axis is tiled, and the lines after the step read none of its values
    (the guarded step is a function of its own)."""
    if not axes or sup is None or _shares(step, after):
        return None, masked_loops.Fraction(1.0)
    test, frac, clamp = masked_loops.grid_skip(sup, b.grid, axes)
    b.clamp.update(clamp)
    return test, frac


def _shares(step: list[str], after: list[str]) -> bool:
    import re
    defined = {l.split(" = ", 1)[0].strip() for l in step if " = " in l and not l.startswith(" ")}
    used = set(re.findall(r"[A-Za-z_]\w*", "\n".join(after)))
    return bool(defined & used)


def _same_blocks(dc, d, s, swapped: bool):
    """A sibling dot's dims move with the anchor's: batch with batch, its output dims with the
    anchor's (M, N) or (N, M), its contraction with the anchor's K."""
    nb = len(d.attrs["lhs_batch"])
    nm = d.inputs[0].rank - nb - len(d.attrs["lhs_contract"])
    place = list(range(d.rank))
    if swapped:  # s = (batch, N dims, M dims) of d
        place = place[:nb] + place[nb + nm:] + place[nb:nb + nm]
    for i in range(s.rank):
        dc.union((s, i), (d, place[i]))
    for a, b_ in zip(s.attrs["lhs_contract"], d.attrs["lhs_contract"]):
        dc.union((s.inputs[0], a), (d.inputs[0], b_))


# ---------------------------------------------------------------------------------- attention
def emit_attention(grp: FusionGroup, name: str) -> EmittedKernel:
    """Flash attention over the key blocks. Where q and k come from one buffer (a fused QKV
    projection) or share a computed value (rotary tables), their sequence dims are one dim class
    and no axis is tiled: if that one block overflows the VMEM budget, the key/value side is
    emitted from its own copy of what it reads (a shared buffer passed twice, with its own
    BlockSpec), so queries and keys tile apart."""
    try:
        kernel, footprint, keys_tiled = _emit_attention(grp, name, {})
    except vmem.TooLarge:  # (over the target's VMEM: the split below may fit)
        kernel, footprint, keys_tiled = None, math.inf, False
    copies = {} if keys_tiled or footprint <= (_VMEM_BUDGET.get() or tpl.VMEM_BUDGET) else pallas_fit.key_side_copies(grp)
    if not copies:
        return kernel or _emit_attention(grp, name, {})[0]
    split, _, keys_tiled = _emit_attention(grp, name, copies)
    if kernel is not None and not keys_tiled:
        return kernel
    orig = {c: n for n, c in copies.items()}
    return dataclasses.replace(split, inputs=[orig.get(x, x) for x in split.inputs])


def _emit_attention(grp: FusionGroup, name: str, copies: dict) -> tuple[EmittedKernel, int, bool]:
    """(the kernel, its blocks' bytes, whether the keys are tiled); the key/value side reads
    `copies` of its nodes and buffers where given."""
    _check_dtypes(grp)
    qk, pv, t = grp.pattern["qk"], grp.pattern["pv"], grp.pattern["scores"]
    q, k = qk.inputs
    k, v = copies.get(k, k), copies.get(pv.inputs[1], pv.inputs[1])
    nb = len(qk.attrs["lhs_batch"])
    (vc,) = pv.attrs["rhs_contract"]
    vf = next(i for i in range(v.rank) if i != vc and i not in pv.attrs["rhs_batch"])
    b = _Builder(grp, name, "attention")
    for x in grp.inputs:  # a buffer both sides read: passed twice
        if x in copies:
            b.loads[copies[x]] = f"in{len(b.inputs)}_ref"
            b.inputs.append(copies[x])
            for d in range(x.rank):
                b.dc.find((copies[x], d))
    dc = b.dc
    if copies:  # QKᵀ of the key side's copy, one value with qk
        qk_kv = qk.with_inputs((q, k))
        key_only = ({n for n in copies if n not in grp.inputs} - pallas_fit.reached(t, grp.nodes, {qk})
                    - pallas_fit.reached_all([q], grp.nodes))
        b.constrain((pallas_fit.reached_all([t], grp.nodes) - key_only - {qk}) | {qk_kv}
                    | {c for n, c in copies.items() if n not in grp.inputs})
        for i in range(qk.rank):
            dc.union((qk, i), (qk_kv, i))
    else:
        b.constrain(pallas_fit.reached_all([t, v], grp.nodes))  # score ops, QKᵀ and the q, k, v prologues
    for i in range(nb):  # pv: batch dims as qk's, queries as qk's, keys as v's contracted dim
        dc.union((pv, i), (qk, i))
        dc.union((v, pv.attrs["rhs_batch"][i]), (qk, i))
    dc.union((pv, nb), (qk, nb))
    dc.union((v, vc), (qk, nb + 1))
    dc.union((pv, nb + 1), (v, vf))
    stats = [r for r in (grp.pattern.get("rowmax"), grp.pattern.get("rowsum")) if r in grp.roots]
    for r in stats:  # stored row statistics (a training forward, fused_flash): blocks of qk's rows
        for i in range(nb + 1):
            dc.union((r, i), (qk, i))
    epilogue = {pv}
    for n in grp.nodes:  # (program order) what the group computes from O: a matmul's epilogue
        if n not in epilogue and any(i in epilogue for i in n.inputs):
            epilogue.add(n)
    b.constrain(epilogue - {pv})
    dc.need_whole((v, vf))  # the head dims stay whole (one MXU pass per block)
    dc.need_whole((q, qk.attrs["lhs_contract"][0]))
    cands = [(qk, i, "parallel") for i in range(nb + 1)] + [(qk, nb + 1, "arbitrary")]
    row = lambda block: math.prod(block(pv)[:-1])
    scratch_bytes = lambda block: (math.prod(block(pv)) + 2 * row(block)) * 4 + math.prod(block(qk)) * 8
    an = masked_blocks.Analysis()  # a causal mask: query and key blocks small enough to skip some
    masked = masked_blocks.reduce_support(an, Op.REDUCE_MAX, t)
    caps = {(qk, nb): tpl.MASKED_BLOCK, (qk, nb + 1): tpl.MASKED_BLOCK} if masked is not None else None
    b.tile(cands, scratch_bytes=scratch_bytes, caps=caps)
    kv_axes = [i for i, (_, _, s) in enumerate(b.grid) if s == "arbitrary"]
    first, last = b.first_last(kv_axes)
    em = b.emitter()
    s_dot = _dot(qk, em.value(q), em.value(k), b.block(qk), em=em)
    pv_attrs = dict(pv.attrs, lhs_batch=tuple(range(nb)), lhs_contract=(nb + 1,))
    pv_dot = _dot(pv, Val("p", b.block(qk), DType.f32), em.value(v), b.block(pv), pv_attrs, em=em)
    half = pv.dtype in HALF
    pro = list(em.lines)
    em.lines.clear()
    s = Val("s", b.block(qk), qk.dtype)
    if qk.dtype in HALF:
        s = em.emit(round_half("s", qk.dtype), s.shape, qk.dtype)
    em.bound[qk] = s
    tv = em.value(t)
    scores = list(em.lines)
    em.lines.clear()
    o = Val("o", b.block(pv), pv.dtype)
    if half:  # the output is rounded to the program's half type, as the oracle does
        o = em.emit(round_half("o", pv.dtype), o.shape, pv.dtype)
    em.bound[pv] = o
    for r, ref in zip((grp.pattern.get("rowmax"), grp.pattern.get("rowsum")), ("m_ref", "l_ref")):
        if r in stats:
            stat = em.emit(f"{ref}[...].reshape({b.block(r)})", b.block(r), r.dtype, "st")
            em.bound[r] = em.emit(round_half(stat.text, r.dtype), stat.shape, r.dtype) if r.dtype in HALF else stat
    stores = [b.store(em, r, i) for i, r in enumerate(grp.roots)]
    step = tpl.ATTENTION_STEP.format(prologue="\n".join(pro), s_dot=s_dot, scores="\n".join(scores),
                                     t=em.array(tv, b.block(qk)), pv_dot=pv_dot).splitlines()
    step = [l for l in step if l]
    test, frac = _skip(b, masked_loops.on_grid(masked, t, b.tiles), step,
                       em.lines + stores, kv_axes)
    body = tpl.ATTENTION.format(name=name, params=b.params(["m_ref", "l_ref", "acc_ref"]), first=first, last=last,
                                step=tpl.guarded(step, test), epilogue=_indent(em.lines + stores, 8))
    row_shape = b.block(pv)[:-1] + (1,)
    scratch = [(row_shape, "jnp.float32"), (row_shape, "jnp.float32"), (b.block(pv), "jnp.float32")]
    footprint = sum(math.prod(b.storage_block(x)) * _itemsize(x) for x in b.inputs + b.outputs) + scratch_bytes(b.block)
    rebuilt = [n for n in pallas_fit.reached_all([t], grp.nodes)
               if n.op is Op.DOT_GENERAL and n is not qk and n not in grp.inputs]
    return b.finish(body, scratch, [(n, frac) for n in (qk, pv, *rebuilt)]), footprint, bool(kv_axes)


EMITTERS = {"pointwise": emit_rows, "reduction": emit_rows, "scatter": emit_rows, "matmul": emit_matmul,
            "attention": emit_attention, "grouped_matmul": grouped.emit_pallas, "weight_grad": weight_grad.emit_pallas,
            "multi": fused_multi.emit_pallas}
multi_footprint = fused_multi.pallas_footprint


def emit(grp: FusionGroup, name: str) -> EmittedKernel:
    """The group's kernel; where it passes the default VMEM limit, the one with its dots' operands
    apart (`_own_operands`) instead if that is smaller."""
    try:
        em, too_large = EMITTERS[grp.kind](grp, name), None
        if em.vmem is None or vmem.default_fits(em.vmem.nbytes, vmem.target() or pallas_fit.hardware_default()):
            return em
    except vmem.TooLarge as e:
        em, too_large = None, e
    own, back = pallas_fit.own_operands(grp)
    if own is not grp:
        try:
            alt = EMITTERS[grp.kind](own, name)
        except (CannotFuse, vmem.TooLarge):
            alt = None
        if alt is not None and (em is None or alt.vmem.nbytes < em.vmem.nbytes):
            return dataclasses.replace(alt, inputs=[back.get(x, x) for x in alt.inputs],
                                       outputs=[back.get(r, r) for r in alt.outputs])
    if em is None:
        raise too_large
    return em


def feasible(grp: FusionGroup) -> None:
    """The planner's question: can this group be one Pallas kernel? (raises CannotFuse; a group
    whose blocks cannot fit the target TPU's VMEM is refused too, so the planner splits it)"""
    try:
        emit(grp, "probe")
    except vmem.TooLarge as e:
        r = pallas_vocab.reduction_over_k(grp, _Builder(grp, "probe", "matmul")) if grp.kind == "matmul" \
            else pallas_vocab.after_online(grp)
        raise CannotFuse(f"the {grp.kind} kernel for {grp.reason[:300]!r}: {e}"
                         + (f"; {r.describe()} must be stored for the rest to tile" if r is not None else ""), r) from None


# ------------------------------------------------------------------------------------ running
_BUILT: dict = {}


def _module(kernel):
    from .cache import import_file
    return import_file(kernel.path, f"shardc_pallas.{kernel.path.stem}")


def _to_kernel_array(x: np.ndarray, n: Node, shape):
    import jax.numpy as jnp
    x = np.asarray(x)
    if n.dtype is DType.i64:
        if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > np.iinfo(np.int32).max):
            raise UnsupportedOpError(f"{n.describe()}: i64 values beyond 32 bits reach a pallas kernel "
                                     "(TPU kernels compute i64 as i32)")
        x = x.astype(np.int32)
    return jnp.asarray(x.reshape(shape))


def launch(kernel, ins: list[np.ndarray], axis_values: list[int]) -> list[np.ndarray]:
    """Run one Pallas kernel in interpret mode on CPU: numpy in, numpy out."""
    import jax
    import jax.numpy as jnp
    key = str(kernel.path)
    mod = _module(kernel)
    if key not in _BUILT:
        _BUILT[key] = jax.jit(mod.build(interpret=True))
    args = [jnp.asarray([v], jnp.int32) for v in axis_values]
    args += [_to_kernel_array(x, n, s) for x, n, s in zip(ins, kernel.inputs, mod.IN_SHAPES)]
    outs = _BUILT[key](*args)
    return [np.asarray(o).reshape(n.shape).astype(n.dtype.np) for o, n in zip(outs, kernel.outputs)]


def shape_dtype_structs(kernel) -> list:
    import jax
    import jax.numpy as jnp
    out = [jax.ShapeDtypeStruct((1,), jnp.int32) for _ in kernel.axes]
    dt = {DType.f32: jnp.float32, DType.f16: jnp.float16, DType.bf16: jnp.bfloat16, DType.i32: jnp.int32,
          DType.i64: jnp.int32, DType.bool: jnp.bool_}
    return out + [jax.ShapeDtypeStruct(s, dt[x.dtype]) for x, s in zip(kernel.inputs, _module(kernel).IN_SHAPES)]


def export_for_tpu(kernel):
    """Lower the kernel for a real TPU without one (Mosaic lowering; rejects illegal blocks)."""
    import jax
    return jax.export.export(jax.jit(_module(kernel).build(interpret=False)), platforms=["tpu"])(
        *shape_dtype_structs(kernel))


def traced_call(kernel, axis_values: list, ins: list, interpret: bool = True) -> list:
    """The kernel's pallas_call on traced jax values (e.g. inside jax.shard_map): axis indices
    (int32 scalars), then the inputs at their IR shapes; the outputs at their IR shapes, in the
    kernel's storage dtypes (i64 as i32). Inside shard_map on CPU pass check_vma=False."""
    import jax.numpy as jnp
    mod = _module(kernel)
    call = mod.build(interpret=interpret)
    args = [jnp.asarray(v, jnp.int32).reshape(1) for v in axis_values]
    args += [(x.astype(jnp.int32) if n.dtype is DType.i64 else x).reshape(s)
             for x, n, s in zip(ins, kernel.inputs, mod.IN_SHAPES)]
    outs = call(*args)
    return [o.reshape(n.shape) for o, n in zip(outs, kernel.outputs)]
