"""Triton expressions for the planner's recomputed values (codegen/fused_recompute.py): a
dot_general rebuilt tile by tile inside the kernel that reads it, and a one-hot scatter-add.

`tile_dot` gives a dot's value at the kernel's current index by looping over its contraction
in blocks of `BK_RECOMPUTE` (masked to its extent):
- where the index's left-hand free dims follow one tile axis and its right-hand free dims the
  other (scores S[rm, rn] in a row kernel, a dlogits tile inside dlogits·W or dlogitsᵀ·x), the
  block is one `tl.dot` of a [rows, k] and a [k, cols] tile (operands swapped when the tile is Sᵀ);
- where every free index follows one tile axis (the logit at a row's label: a gathered column),
  it is a row-wise product summed over k along the other axis.
Batch dims must be the same for the whole tile (the program's batch index). Anything else raises
CannotFuse and the planner stores the dot."""
from __future__ import annotations

import math

from ..ir import DType, Node
from ..kernels import next_pow2
from . import masked_blocks, masked_loops
from .fusion import CannotFuse
from .indexing import Ix, unflatten

BK_RECOMPUTE = 64  # contraction elements per block (a head dim or a d_model chunk)


def _positions(em, ixs) -> set:
    return {em.tile.axes[v][1] for i in ixs for v in i.deps if v in em.tile.axes}


def _operand_idx(rank: int, batch, bidx, free, fidx, contract, kidx) -> tuple:
    idx = [Ix(0)] * rank
    for dims, vals in ((batch, bidx), (free, fidx), (contract, kidx)):
        for d, v in zip(dims, vals):
            idx[d] = v
    return tuple(idx)


def tile_dot(em, n: Node, idx: tuple, masks: tuple):
    from .triton_expr import Val
    lhs, rhs = n.inputs
    a = n.attrs
    lb, rb, lc, rc = list(a["lhs_batch"]), list(a["rhs_batch"]), list(a["lhs_contract"]), list(a["rhs_contract"])
    lf = [i for i in range(lhs.rank) if i not in lb + lc]
    rf = [i for i in range(rhs.rank) if i not in rb + rc]
    if not n.dtype.is_float or not lhs.dtype.is_float:
        raise CannotFuse(f"{n.describe()}: only float dots are recomputed inside a kernel", n)
    nb = len(lb)
    bidx, lidx, ridx = idx[:nb], idx[nb:nb + len(lf)], idx[nb + len(lf):]
    bpos, lpos, rpos = _positions(em, bidx), _positions(em, lidx), _positions(em, ridx)
    kshape = [lhs.shape[i] for i in lc]
    K = math.prod(kshape)
    bk = max(16, min(next_pow2(K), BK_RECOMPUTE))
    em.count += 1
    c = em.count
    kv, kt = f"rk{c}", f"rkt{c}"  # the contraction as a tile column / a tile row
    if not bpos and lpos == {0} and rpos == {1}:
        mode = "dot"
        first, second = (lhs, lb, lf, lc, lidx), (rhs, rb, rf, rc, ridx)
    elif not bpos and lpos == {1} and rpos == {0}:
        mode = "dot"
        first, second = (rhs, rb, rf, rc, ridx), (lhs, lb, lf, lc, lidx)
    elif len(bpos | lpos | rpos) <= 1:
        mode = "rowdot"
        p = next(iter(bpos | lpos | rpos), 0)
    else:
        raise CannotFuse(f"{n.describe()}: its tile is not a product of two operand tiles", n)
    em.tile.axes[kv] = (f"mask_{kv}", 1, str(bk))
    em.tile.axes[kt] = (f"mask_{kt}", 0, str(bk))
    out_deps = frozenset().union(*(i.deps for i in idx))
    acc = f"acc{c}"
    # the contraction's blocks where both operands can be non-zero (a masked P·V rebuilt)
    kix = unflatten(Ix(kv, {kv}), kshape)
    sup = None
    for x, b_, f_, c_, i_ in ((lhs, lb, lf, lc, lidx), (rhs, rb, rf, rc, ridx)):
        at = _operand_idx(x.rank, b_, bidx, f_, i_, c_, kix)
        sup = masked_blocks.dot_support(sup, masked_blocks.on_tile(
            em.masks.zero(x), at, {t: t for t in em.ranges} | {kv: "k"}))
    bounds = masked_loops.loop_bounds(sup, "k", K, str(bk), em.ranges)
    try:
        with em.block() as body:
            body.loop = bounds
            em.sites.append((n, em.loops()))
            if mode == "dot":
                (x0, b0, f0, c0, i0), (x1, b1, f1, c1, i1) = first, second
                v0 = em.value(x0, _operand_idx(x0.rank, b0, bidx, f0, i0, c0, unflatten(Ix(kv, {kv}), kshape)), masks)
                v1 = em.value(x1, _operand_idx(x1.rank, b1, bidx, f1, i1, c1, unflatten(Ix(kt, {kt}), kshape)), masks)
                t0 = em.full(v0, {v for v in out_deps if em.tile.axes.get(v, (0, 1))[1] == 0} | {kv})
                t1 = em.full(v1, {v for v in out_deps if em.tile.axes.get(v, (0, 0))[1] == 1} | {kt})
                # f32 tiles (the interpreter computes half types on raw bits); bf16 values are
                # exact in tf32 (8 mantissa bits of 10), f16 and f32 values need full precision
                prec = "tf32" if lhs.dtype is DType.bf16 else "ieee"
                step = f"tl.dot({t0}, {t1}, input_precision=\"{prec}\")"
            else:
                k = kt if p == 1 else kv
                kix = unflatten(Ix(k, {k}), kshape)
                vl = em.value(lhs, _operand_idx(lhs.rank, lb, bidx, lf, lidx, lc, kix), masks)
                vr = em.value(rhs, _operand_idx(rhs.rank, rb, bidx, rf, ridx, rc, kix), masks)
                prod = em.full(em.emit(f"({vl.text} * {vr.text})", vl.deps | vr.deps, DType.f32), out_deps | {k})
                step = f"tl.sum({prod}, axis={1 - p})" + ("[:, None]" if p == 0 else "[None, :]")
        em.lines.append(f"{acc} = tl.zeros({em.tile.shape(out_deps)}, tl.float32)")
        start = f"{kv}_start"   # not f"{kv}0": rebuilt dot 2's loop variable would be dot 20's index
        first, end = (bounds.start_text(), bounds.end_text()) if bounds else ("0", K)
        em.lines.append(f"for {start} in range({first}, {end}, {bk}):")
        em.lines.append(f"    {kv} = {start} + tl.arange(0, {bk})[None, :]")
        em.lines.append(f"    {kt} = {start} + tl.arange(0, {bk})[:, None]")
        em.lines.append(f"    mask_{kv} = {kv} < {K}")
        em.lines.append(f"    mask_{kt} = {kt} < {K}")
        em.lines.extend("    " + line for line in body.lines)
        em.lines.append(f"    {acc} += {step}")
    finally:
        del em.tile.axes[kv], em.tile.axes[kt]
    em.computed.add(n)
    return Val(acc, out_deps, n.dtype)


def onehot_scatter(em, n: Node, idx: tuple, masks: tuple):
    """x + where(index == this element's position along the axis, update, 0)."""
    from .triton_expr import Val
    x, ind, upd = n.inputs
    axis, b = n.attrs["axis"], n.attrs.get("batch_dims", 0)
    ni = ind.rank - b
    j = em.value(ind, tuple(idx[:b]) + (Ix(0),) * ni, masks)
    u = em.value(upd, tuple(idx[:axis]) + (Ix(0),) * ni + tuple(idx[axis + 1:]), masks)
    xv = em.value(x, idx, masks)
    deps = j.deps | u.deps | xv.deps | idx[axis].deps
    em.computed.add(n)
    v = em.emit(f"tl.where({j.text} == {idx[axis].text}, {xv.text} + {u.text}, {xv.text})", deps, n.dtype)
    return Val(v.text, deps, n.dtype)


def batch_rows(grp, x: Node, axes) -> int:
    """Leading dims of a row kernel's reduced value `x` to put on the grid: the batch dims of
    the recomputed dots the group rebuilds (0 when it rebuilds none), when they lead x's kept dims."""
    from .fused_recompute import is_recomputed
    nb = max((len(n.attrs["lhs_batch"]) for n in grp.nodes if is_recomputed(n)), default=0)
    return nb if nb and all(a >= nb for a in axes) and nb < x.rank else 0


def batch_grid(batch: int, looped: bool) -> dict:
    """The row templates' batch holes: a third grid axis of `batch` programs, or nothing."""
    if batch == 1:
        return {"pid_b": "", "grid_b": ""}
    return {"pid_b": "    pid_b = tl.program_id(2)\n", "grid_b": f" 1, {batch}" if looped else f", {batch}"}


def dot_rows(grp, choose, looped: bool = False):
    """A row kernel that rebuilds a dot runs `tl.dot` on its row block: at least 16 rows on a GPU,
    and a looped one takes its row 128 elements at a time, a matmul's BN (a [BK, BN] tile of the
    dot's other operand is staged in shared memory: 2048 wide, GPT-2 small's loss statistics
    over its 50257 logits asked 1 MiB of an H100's 227 KiB)."""
    from .fused_recompute import is_recomputed
    if not any(is_recomputed(n) for n in grp.nodes):
        return choose

    def chosen(interpret):
        cfg = choose(interpret)
        if interpret:
            return cfg
        return {**cfg, "BM": max(16, cfg["BM"]), **({"BN": min(128, cfg["BN"])} if looped else {})}
    return chosen


def epilogue_index(r: Node, d: Node, d_idx: tuple) -> tuple | None:
    """The index of epilogue root `r` at which it reads dot `d` at `d_idx`, where `r` reaches `d`
    through same-shape elementwise ops and transposes only (an optimizer update of a weight whose
    gradient is the transpose of the dot's result); None otherwise."""
    from ..ir import Op
    from ..ir.ops import ELEMENTWISE
    found, stack, seen = set(), [(r, tuple(range(r.rank)))], set()
    while stack:
        n, dims = stack.pop()
        if (n, dims) in seen:
            continue
        seen.add((n, dims))
        if n is d:
            found.add(dims)
            continue
        if n.op is Op.TRANSPOSE:
            sub = [0] * n.rank
            for j, p in enumerate(n.attrs["perm"]):
                sub[p] = dims[j]
            stack.append((n.inputs[0], tuple(sub)))
        elif n.op in ELEMENTWISE:
            stack += [(x, dims) for x in n.inputs if x.shape == n.shape]
    if len(found) != 1 or r.rank != d.rank:
        return None
    (dims,) = found
    idx = [None] * r.rank
    for k, j in enumerate(dims):
        idx[j] = d_idx[k]
    return tuple(idx)


def operand_sums(em, grp, lhs_idx: tuple, a_text: str) -> tuple[list[str], list]:
    """A matmul's K-loop sums of its left operand (codegen/fused_sums.py): accumulate each one
    from the A tile inside the loop (lines appended to the loop), and return (lines that
    zero the accumulators before the loop, [(sum node, its index, its accumulator)])."""
    from .triton_expr import Val
    init, out = [], []
    lhs = grp.anchor.inputs[0]
    for s in grp.pattern.get("ksum", ()):
        em.count += 1
        acc = f"ks{em.count}"
        init.append(f"{acc} = tl.zeros([BM, 1], tl.float32)")
        em.lines.append(f"{acc} += tl.sum(tl.where(mask_rka & mask_rm, {a_text}, 0.0), axis=1)[:, None]")
        kept = tuple(lhs_idx[i] for i in range(lhs.rank) if i not in s.attrs["axes"])
        out.append((s, kept, Val(acc, {"rm"}, s.dtype)))
    return init, out


def computed_from(grp, sources) -> set:
    out = set(sources)
    for n in grp.nodes:
        if any(i in out for i in n.inputs):
            out.add(n)
    return out


def partial_sum(em, r: Node, d: Node, d_idx: tuple, ptr: str) -> str:
    """The line adding this program's partial sums of a row or column reduction `r` of an
    epilogue value to its (zeroed) output: codegen/fused_sums.py's `rsum`."""
    from ..ir import DType
    from .indexing import reshape_index
    x = r.inputs[0]
    if r.dtype is not DType.f32:
        raise CannotFuse(f"{r.describe()}: partial sums are added atomically in f32 only", r)
    x_idx = epilogue_index(x, d, d_idx)
    if x_idx is None and x.size == d.size:
        x_idx = tuple(d_idx) if x.shape == d.shape else reshape_index(d_idx, d.shape, x.shape)
    if x_idx is None:
        raise CannotFuse(f"{r.describe()} does not sum the dot's tile", r)
    return _partial(em, r, x_idx, ptr)


def column_sum(em, r: Node, full_idx: tuple, full_shape, ptr: str) -> str | None:
    """In a row kernel: the atomic partial-sum line of a root that sums the tile's values over
    its rows (dγ beside a norm backward's row sums), or None when `r` is not one."""
    from ..ir import DType, Op
    from .indexing import reshape_index
    if r.op is not Op.REDUCE_SUM or r.dtype is not DType.f32 or r.inputs[0].size != math.prod(full_shape):
        return None
    x = r.inputs[0]
    x_idx = tuple(full_idx) if x.shape == tuple(full_shape) else reshape_index(full_idx, full_shape, x.shape)
    red = frozenset().union(*(x_idx[a].deps for a in r.attrs["axes"]))
    if red != {"rm"}:
        return None
    try:
        return _partial(em, r, x_idx, ptr)
    except CannotFuse:
        return None


def _partial(em, r: Node, x_idx: tuple, ptr: str) -> str:
    from .indexing import flatten
    x, axes = r.inputs[0], r.attrs["axes"]
    red = frozenset().union(*(x_idx[a].deps for a in axes))
    kept_idx = tuple(x_idx[i] for i in range(x.rank) if i not in axes)
    kept = frozenset().union(*(i.deps for i in kept_idx))
    if red == {"rm"} and kept == {"rn"}:
        part_axis, keep = 0, "[None, :]"
    elif red == {"rn"} and kept == {"rm"}:
        part_axis, keep = 1, "[:, None]"
    else:
        raise CannotFuse(f"{r.describe()}: not a sum over the rows or the columns of the tile", r)
    v = em.value(x, x_idx)
    part = f"tl.sum(tl.where(mask_rm & mask_rn, {em.full(v, {'rm', 'rn'})}, 0.0), axis={part_axis}){keep}"
    off = flatten(kept_idx, r.shape)
    return f"tl.atomic_add({ptr} + {off.text}, {part}, mask={em.tile.mask(kept)})"


def sibling_dots(em, siblings, bidx: tuple, mshape, nshape, kshape) -> tuple[list[str], list]:
    """A matmul's sibling dots (codegen/fused_siblings.py), accumulated in its K loop: their A and
    B tiles (lines appended to the loop, rebuilt values shared with the anchor's tiles) and a
    `tl.dot` each. Returns (lines zeroing the accumulators before the loop, [(dot, its index at
    the tile, its accumulator)]); a transposed sibling takes its right operand as the A tile."""
    from .triton_expr import Val
    rm, rn = Ix("rm", {"rm"}), Ix("rn", {"rn"})
    init, out = [], []
    for (s, swapped), (xa, ia, xb, ib) in zip(siblings, sibling_operands(siblings, bidx, mshape, nshape, kshape)):
        va, vb = em.value(xa, ia), em.value(xb, ib)
        em.count += 1
        acc = f"sib{em.count}"
        init.append(f"{acc} = tl.zeros((BM, BN), dtype=tl.float32)")
        em.lines.append(f"{acc} += tl.dot(tl.where(mask_rka, {em.full(va, {'rm', 'rka'})}, 0.0).to(DT), "
                        f"tl.where(mask_rkb, {em.full(vb, {'rkb', 'rn'})}, 0.0).to(DT), input_precision=PREC)")
        s_idx = tuple(bidx) + (unflatten(rn, nshape) + unflatten(rm, mshape) if swapped else
                               unflatten(rm, mshape) + unflatten(rn, nshape))
        out.append((s, s_idx, Val(acc, {"rm", "rn"}, s.dtype)))
    return init, out


def sibling_operands(siblings, bidx: tuple, mshape, nshape, kshape) -> list:
    """Each sibling dot's (A operand, its index at (rm, rka), B operand, its index at (rkb, rn));
    a transposed sibling takes its right operand as the A tile."""
    rm, rn, rka, rkb = Ix("rm", {"rm"}), Ix("rn", {"rn"}), Ix("rka", {"rka"}), Ix("rkb", {"rkb"})
    out = []
    for s, swapped in siblings:
        lhs, rhs = s.inputs
        a = s.attrs
        lb, rb, lc, rc = list(a["lhs_batch"]), list(a["rhs_batch"]), list(a["lhs_contract"]), list(a["rhs_contract"])
        lf = [i for i in range(lhs.rank) if i not in lb + lc]
        rf = [i for i in range(rhs.rank) if i not in rb + rc]
        (xa, ba, fa, ca), (xb, bb, fb, cb) = ((rhs, rb, rf, rc), (lhs, lb, lf, lc)) if swapped else \
            ((lhs, lb, lf, lc), (rhs, rb, rf, rc))
        out.append((xa, _operand_idx(xa.rank, ba, bidx, fa, unflatten(rm, mshape), ca, unflatten(rka, kshape)),
                    xb, _operand_idx(xb.rank, bb, bidx, fb, unflatten(rn, nshape), cb, unflatten(rkb, kshape))))
    return out
