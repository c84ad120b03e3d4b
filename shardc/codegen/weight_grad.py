"""Weight kernels, Triton and Pallas: a "weight_grad" group (codegen/fused_weights.py) is a
weight's input gradient dX (a dot reading W), its weight gradient dW (a dot over the tokens) and
what each half stores (dX's epilogue; dW's: the updated weight, optimizer state). The
kernels/weight_grad.py templates are filled here.

Which dims correspond is read off the IR: W's dims split into batch, F (the dims dX keeps: the
rows a program owns) and C (dX's contraction: the loop); dW's dims are W's through the update
that reads both (an elementwise epilogue, possibly through a transpose), and dW's operands split
into X (its free dims are F) and dY (its free dims are C), contracted over the tokens. Anything
else raises CannotFuse and the planner keeps the two matmuls apart."""
from __future__ import annotations

import math

from ..ir import DType, Node
from ..kernels import weight_grad as wg_t
from .emitted import EmittedKernel
from .fused_weights import sum_chain, token_sum, weight_side
from .fusion import CannotFuse, FusionGroup
from .indexing import Ix, unflatten


def _dims(x: Node, attrs: dict, pre: str) -> tuple[list, list, list]:
    """(batch, free, contract) dims of operand `x` of a dot (pre: "lhs_" or "rhs_")."""
    b, c = list(attrs[pre + "batch"]), list(attrs[pre + "contract"])
    return b, [i for i in range(x.rank) if i not in b + c], c


def _place(rank: int, parts) -> tuple:
    """An index of `rank` dims from (dims, their index entries) pairs."""
    idx = [Ix(0)] * rank
    for dims, vals in parts:
        for d, v in zip(dims, vals):
            idx[d] = v
    return tuple(idx)


def triples(grp: FusionGroup) -> list[tuple]:
    """(dX dot, W, dW dot) of each weight the group updates."""
    p = grp.pattern
    return list(zip(p["dx"], p["weight"], p["dw"]))


def layout(grp: FusionGroup, dx: Node, w: Node, dw: Node, ix: dict) -> dict:
    """Every index one weight's pass needs, from tile variables `ix` (rf: W's kept rows, rc: W's
    looped columns, rt / rtx: the tokens as rows / as columns of a tile, b: the batch entries)."""
    side = weight_side(dx, w)
    if side is None:
        raise CannotFuse(f"{dx.describe()} does not read the weight once", dx)
    wpre, gpre = ("lhs_", "rhs_") if side == 0 else ("rhs_", "lhs_")
    wop = dx.inputs[side]  # W, or W through transposes
    wb, wf, wc = _dims(wop, dx.attrs, wpre)
    g = dx.inputs[1 - side]
    gb, gf, gc = _dims(g, dx.attrs, gpre)
    shape = lambda x, dims: [x.shape[i] for i in dims]
    bidx = ix["b"](shape(wop, wb))
    fidx, cidx = unflatten(ix["rf"], shape(wop, wf)), unflatten(ix["rc"], shape(wop, wc))
    tok = shape(g, gf)
    op_idx = _place(wop.rank, [(wb, bidx), (wf, fidx), (wc, cidx)])
    w_idx, x_ = op_idx, wop
    while x_ is not w:  # W's own index: back through the transposes
        sub = [Ix(0)] * x_.rank
        for i, p in enumerate(x_.attrs["perm"]):
            sub[p] = w_idx[i]
        w_idx, x_ = tuple(sub), x_.inputs[0]
    g_idx = _place(g.rank, [(gb, bidx), (gf, unflatten(ix["rt"], tok)), (gc, cidx)])
    toks = unflatten(ix["rtx"], tok)
    dx_idx = tuple(bidx) + (tuple(fidx) + toks if side == 0 else toks + tuple(fidx))
    # dW's dims are W's where its update reads both: map them through that root
    sym = tuple(Ix(f"q{k}", {f"q{k}"}) for k in range(dw.rank))
    from .fused_triton import epilogue_index
    dw_idx = None
    for r in _roots(grp)[1]:
        if r.shape == w.shape:
            at = epilogue_index(r, dw, sym)
            if at is not None and sorted(i.text for i in at) == sorted(s.text for s in sym):
                pos = {i.text: j for j, i in enumerate(at)}
                dw_idx = tuple(w_idx[pos[f"q{k}"]] for k in range(dw.rank))
                break
    if dw_idx is None:
        raise CannotFuse(f"{dw.describe()}: no update reads it element for element with the weight", dw)
    lhs, rhs = dw.inputs
    nb = len(dw.attrs["lhs_batch"])
    lb, lf, lc = _dims(lhs, dw.attrs, "lhs_")
    rb, rf, rc = _dims(rhs, dw.attrs, "rhs_")
    deps = lambda part: frozenset().union(*(i.deps for i in part))
    bpart, lpart, rpart = dw_idx[:nb], dw_idx[nb:nb + len(lf)], dw_idx[nb + len(lf):]
    if deps(bpart) or math.prod(shape(lhs, lc)) != math.prod(tok):
        raise CannotFuse(f"{dw.describe()}: its batch or tokens are not the input gradient's", dw)
    tw = shape(lhs, lc)
    if deps(lpart) <= {ix["rf"].text} and deps(rpart) <= {ix["rc"].text}:
        x, xd, dy, dyd = lhs, (lb, lf, lc), rhs, (rb, rf, rc)
        xfree, dyfree = lpart, rpart
    elif deps(lpart) <= {ix["rc"].text} and deps(rpart) <= {ix["rf"].text}:
        x, xd, dy, dyd = rhs, (rb, rf, rc), lhs, (lb, lf, lc)
        xfree, dyfree = rpart, lpart
    else:
        raise CannotFuse(f"{dw.describe()}: its tile is not the weight's rows by its columns", dw)
    x_idx = _place(x.rank, [(xd[0], bpart), (xd[1], xfree), (xd[2], unflatten(ix["rtx"], tw))])
    dy_idx = _place(dy.rank, [(dyd[0], bpart), (dyd[1], dyfree), (dyd[2], unflatten(ix["rt"], tw))])
    return dict(w=wop, g=g, x=x, dy=dy, dx=dx, dw=dw, w_idx=op_idx, g_idx=g_idx, x_idx=x_idx, dy_idx=dy_idx,
                dy_tokens=dyd[2],
                dx_idx=dx_idx, dw_idx=dw_idx, B=math.prod(shape(wop, wb)), F=math.prod(shape(wop, wf)),
                C=math.prod(shape(wop, wc)), T=math.prod(tok))


def _roots(grp: FusionGroup) -> tuple[list, list]:
    """(dX's roots, dW's roots)."""
    first = grp.pattern["dx_roots"]
    return list(first), [r for r in grp.roots if r not in first]


def _updates(grp: FusionGroup, dw: Node) -> list:
    """The dW roots computed from `dw` (its weight's update, optimizer state)."""
    from .triton import _computed_from
    after = _computed_from(grp, dw)
    return [r for r in _roots(grp)[1] if r in after]


def _biases(grp: FusionGroup, dw: Node) -> list[tuple]:
    """[(sum over the tokens of dw's dY operand, the roots computed from it: a bias update)]."""
    from .triton import _computed_from
    return [(s, [r for r in _roots(grp)[1] if r in _computed_from(grp, s)])
            for s in grp.pattern.get("bias", ()) if any(sum_chain(s, x) for x in dw.inputs)]


def _root_at_or_none(r: Node, d: Node, d_idx: tuple):
    from .fused_triton import epilogue_index
    from .triton import _root_index
    return epilogue_index(r, d, d_idx) or _root_index(r, d_idx, d.shape)


def _root_at(r: Node, d: Node, d_idx: tuple):
    idx = _root_at_or_none(r, d, d_idx)
    if idx is None:
        raise CannotFuse(f"{r.describe()} does not match the tile of {d.describe()}", r)
    return idx


# ------------------------------------------------------------------------------------ Triton
def emit_triton(grp: FusionGroup, name: str) -> EmittedKernel:
    from .triton import _Common, _bind, _dot_dtype, _indent, _root_index
    from .triton_expr import ExprEmitter, Tile, Val, round_half
    c = _Common(grp, name)
    ix = {v: Ix(v, {v}) for v in ("rf", "rc", "rt", "rtx")}
    ix["b"] = lambda shape: unflatten(Ix("pid_b"), shape)
    Ls = [layout(grp, dx, w, dw, ix) for dx, w, dw in triples(grp)]
    if len({(L["B"], L["F"], L["T"]) for L in Ls}) != 1:
        raise CannotFuse("the weights' passes cover different rows, tokens or batches", grp.anchor)
    dtype = _dot_dtype(grp.anchor)
    tile = Tile(rf=("mask_rf", 0, "BF"), rc=("mask_rc", 1, "BC"), rt=("mask_rt", 0, "BT"), rtx=("mask_rtx", 1, "BT"))
    # values indexed by the rows and tokens alone (X's tile) are loaded once, before the loops
    em = ExprEmitter(tile, c.buffers, c.scalars, hoist={"rf", "rt", "rtx"})

    def incomplete(idx):
        raise CannotFuse(f"{grp.anchor.describe()}: a gradient is read inside the loop that computes it", grp.anchor)
    for L in Ls:
        em.bound[L["dx"]] = em.bound[L["dw"]] = incomplete
    passes = []
    for i, L in enumerate(Ls):
        dw = L["dw"]
        with em.block() as loop:
            x_text = em.full(em.value(L["x"], L["x_idx"]), {"rf", "rtx"})
            w_text = em.full(em.value(L["w"], L["w_idx"]), {"rf", "rc"})
            g_text = em.full(em.value(L["g"], L["g_idx"]), {"rt", "rc"})
            dy_text = em.full(em.value(L["dy"], L["dy_idx"]), {"rt", "rc"})
            loads = list(em.lines)
            em.lines.clear()
            acc = Val("dw", {"rf", "rc"}, dw.dtype)
            if dw.dtype in (DType.f16, DType.bf16):  # the dot's result is stored rounded: round it here too
                acc = em.emit(round_half("dw", dw.dtype), {"rf", "rc"}, dw.dtype)
            em.bound[dw] = _bind(dw, L["dw_idx"], acc)
            for r in _updates(grp, dw):
                idx = _root_at(r, dw, L["dw_idx"])
                em.lines.append(em.store_text(r, c.outs[r], idx, em.value(r, idx)))
            for sm, rs in _biases(grp, dw):  # Σ over the tokens of the dY tile: stored by the first row of programs
                kept = token_sum(sm, L["dy"], L["dy_tokens"])
                if kept is None:
                    raise CannotFuse(f"{sm.describe()} does not sum the dY tile the kernel loads", sm)
                s_idx = tuple(Ix(0) if d is None else L["dy_idx"][d] for d in kept)
                v = em.emit(f"tl.sum(tl.where(mask_rt & mask_rc, {dy_text}, 0.0), axis=0)[None, :]", {"rc"}, sm.dtype)
                if sm.dtype in (DType.f16, DType.bf16):
                    v = em.emit(round_half(v.text, sm.dtype), {"rc"}, sm.dtype)
                em.bound[sm] = _bind(sm, s_idx, v)
                for r in rs:
                    idx = _root_index(r, s_idx, sm.shape)
                    if idx is None:
                        raise CannotFuse(f"{r.describe()} is not one value per element of the bias gradient", r)
                    em.lines.append(em.store_text(r, c.outs[r], idx, em.value(r, idx),
                                                  when="(tl.program_id(0) + tl.zeros([1, 1], tl.int32) == 0)"))
        em.bound[dw] = incomplete
        passes.append(wg_t.PASS.format(i=i, C=L["C"], x=x_text, loads=_indent(loads, 8), w=w_text, g=g_text,
                                       dy=dy_text, update=_indent(loop.lines, 8)))
    prologue = list(em.lines)
    em.lines.clear()
    for i, L in enumerate(Ls):
        dx = L["dx"]
        acc = Val(f"dxt{i}", {"rf", "rtx"}, dx.dtype)
        if dx.dtype in (DType.f16, DType.bf16):
            acc = em.emit(round_half(acc.text, dx.dtype), {"rf", "rtx"}, dx.dtype)
        em.bound[dx] = _bind(dx, L["dx_idx"], acc)
    stores = []
    for r in _roots(grp)[0]:
        idx = next((i for L in Ls for i in [_root_at_or_none(r, L["dx"], L["dx_idx"])] if i), None)
        if idx is None:
            raise CannotFuse(f"{r.describe()} does not match the input gradient's tile", r)
        stores.append(em.store_text(r, c.outs[r], idx, em.value(r, idx)))
    L = Ls[0]
    src = wg_t.TEMPLATE.format(name=name, params=c.params, F=L["F"], T=L["T"], B=L["B"], prologue=_indent(prologue, 4),
                               passes="".join(passes), epilogue=_indent(em.lines + stores, 4))
    B, F, C, T = L["B"], L["F"], sum(L["C"] for L in Ls), L["T"]
    choose = lambda interpret: wg_t.choose(B, F, C, T, dtype, interpret)
    return c.finish("weight_grad", src, choose, wg_t.TUNING, dict(B=B, F=F, C=C, T=T, dtype=dtype))


# ------------------------------------------------------------------------------------ Pallas
def emit_pallas(grp: FusionGroup, name: str) -> EmittedKernel:
    """The grid: (batch and W's rows kept by dX: parallel, W's other dims: arbitrary, last); dX
    accumulates in an f32 VMEM scratch and is stored on the last step, each dW block and its
    update are computed and stored on the step that loads that W block. A kernel of several
    weights keeps their other dims whole (each grid step passes over every weight's rows)."""
    from . import pallas as P
    from .pallas_expr import HALF, round_half
    P._check_dtypes(grp)
    trip = triples(grp)
    dxs = [dx for dx, _, _ in trip]
    b = P._Builder(grp, name, "weight_grad")
    b.constrain(grp.nodes, accumulating=tuple(dxs))
    cands = []
    for dx, w, dw in trip:
        side = weight_side(dx, w)
        if side is None:
            raise CannotFuse(f"{dx.describe()} does not read the weight once", dx)
        wop = dx.inputs[side]  # W, or W through transposes
        wb, wf, wc = _dims(wop, dx.attrs, "lhs_" if side == 0 else "rhs_")
        nb = len(wb)
        kept = list(range(nb, nb + len(wf))) if side == 0 else list(range(dx.rank - len(wf), dx.rank))
        cands += [(dx, i, "parallel") for i in list(range(nb)) + kept]
        if len(trip) > 1:  # W's other dims whole: no grid axis runs over them
            for i in wc:
                b.dc.need_whole((wop, i))
    cands += [(wop, i, "arbitrary") for i in wc] if len(trip) == 1 else []
    b.tile(cands, scratch_bytes=lambda block: sum(math.prod(block(dx)) for dx in dxs) * 4)
    k_axes = [i for i, (_, _, s) in enumerate(b.grid) if s == "arbitrary"]
    first, last = b.first_last(k_axes)
    em = b.emitter()
    refs = [f"acc{i}_ref" for i in range(len(trip))]
    dots = [(P._dot(dx, em.value(dx.inputs[0]), em.value(dx.inputs[1]), b.block(dx), em=em),
             P._dot(dw, em.value(dw.inputs[0]), em.value(dw.inputs[1]), b.block(dw), em=em)) for dx, _, dw in trip]
    pro = list(em.lines)
    em.lines.clear()
    for ref, (dx_dot, _) in zip(refs, dots):
        em.lines.append(f"{ref}[...] += {dx_dot}")
    for (_, _, dw), (_, dw_dot) in zip(trip, dots):
        acc = em.emit(dw_dot, b.block(dw), dw.dtype, "dw")
        if dw.dtype in HALF:  # the dot's result is stored rounded: round it here too
            acc = em.emit(round_half(acc.text, dw.dtype), acc.shape, dw.dtype)
        em.bound[dw] = acc
        em.lines += [b.store(em, r, grp.roots.index(r)) for r in _updates(grp, dw)]
        # a bias update (Σ over the tokens of dW's dY block): every grid step stores its block
        em.lines += [b.store(em, r, grp.roots.index(r)) for _, rs in _biases(grp, dw) for r in rs]
    update = em.lines
    em.lines = []
    for ref, dx in zip(refs, dxs):
        acc = em.emit(f"{ref}[...]", b.block(dx), dx.dtype, "acc")
        if dx.dtype in HALF:
            acc = em.emit(round_half(acc.text, dx.dtype), acc.shape, dx.dtype)
        em.bound[dx] = acc
    stores = [b.store(em, r, grp.roots.index(r)) for r in _roots(grp)[0]]
    body = wg_t.PALLAS.format(name=name, params=b.params(refs), first=first, last=last,
                              init=_pad([f"{r}[...] = jnp.zeros({r}.shape, {r}.dtype)" for r in refs], 8),
                              prologue=_pad(pro, 4), update=_pad(update, 4), epilogue=_pad(em.lines + stores, 8))
    return b.finish(body, [(b.block(dx), "jnp.float32") for dx in dxs])


def _pad(lines: list[str], n: int) -> str:
    pad = " " * n
    return "\n".join(pad + l for l in lines) if lines else pad + "pass"
