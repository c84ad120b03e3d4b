"""Weight kernels: a weight's input gradient, weight gradient and update in one kernel that reads
the weight once, where few tokens meet each weight.

A training step reads each weight W three times after the forward: for the input gradient
dX = dY·Wᵀ, and in the weight-gradient matmul dW = Xᵀ·dY whose epilogue applies the optimizer
(W - lr·dW, Adam's moments; the planner fuses the update there). When the tokens per weight are
few (batch 1, an expert's capacity), the weight dominates the step's bytes and that extra read
is a quarter of the matmul bound. Here both run in one kernel: each program owns a block of W's
rows that dX keeps (W's free dims in dX), holds X's tile for those rows, and loops over W's other
dims (dX's contraction): per step it loads the W tile once, adds dY·Wᵀ to its dX block (complete
at the loop's end: no atomics, no partial sums in memory), computes that dW tile as Xᵀ·dY over
every token at once (the tokens fit one tile) and stores the updated weight tile. dY's tile is
loaded once for both.

A pair of plain matmul groups qualifies when (nothing here knows a model or an optimizer):
- one dot reads a stored W as an operand (dX; directly or through a transpose: Wᵀ), and the other group reads W too and
  stores a value of W's shape computed from its dot (dW and its epilogue: the update);
- the dW dot contracts over at most MAX_TOKENS elements, and dX's other operand has that many
  free elements (its tokens); both have the same batch shape (MoE experts: one W per expert);
- they read another stored value in common (dY: loaded once, as W is), and neither reads what
  the other writes.
The target says whether it can emit the pair (which dims of W and dW correspond is checked there);
with more tokens than one tile the plan is unchanged. The group is kind "weight_grad", anchored at
dW, `pattern["dx"]` its input-gradient dot, `pattern["weight"]` W and `pattern["dx_roots"]` what
the dX half stores (the kernel runs where dX did: the backward keeps its order).
"""
from __future__ import annotations

import math

from ..ir import Op

MAX_TOKENS = 512  # dW's contraction, padded to a power of two: one tile of every program


def _plain(m, depends) -> bool:
    d = m.anchor
    return (m.kind == "matmul" and d is not None and d.op is Op.DOT_GENERAL and not m.pattern
            and d.dtype.is_float and all(r is d or depends(r, d) for r in m.roots))


def _size(x, dims) -> int:
    return math.prod(x.shape[i] for i in dims)


def weight_of(x):
    """The value operand `x` reads through transposes (a torch-layout weight used as Wᵀ)."""
    while x.op is Op.TRANSPOSE:
        x = x.inputs[0]
    return x


def weight_side(dx, w) -> int | None:
    """Which operand of dot `dx` is `w` (or `w` through transposes), when exactly one is."""
    sides = [i for i in (0, 1) if weight_of(dx.inputs[i]) is w]
    return sides[0] if len(sides) == 1 else None


def tokens(dx, side: int) -> int:
    """The free elements of dX's other operand (its tokens)."""
    x = dx.inputs[1 - side]
    pre = "rhs_" if side == 0 else "lhs_"
    return _size(x, [i for i in range(x.rank) if i not in dx.attrs[pre + "batch"] + dx.attrs[pre + "contract"]])


def _pair(a, b, depends):
    """(W, why) when dot group `a` (dX) and `b` (dW with its update) qualify, else None."""
    dx, dw = a.anchor, b.anchor
    if ({dx} | set(a.roots)) & (set(b.nodes) | set(b.inputs)):
        return None  # dW reads dX's result (a forward matmul and the loss gradient): not a weight's backward
    t = _size(dw.inputs[0], dw.attrs["lhs_contract"])
    if t > MAX_TOKENS or dw.inputs[0].dtype is not dx.inputs[0].dtype:
        return None
    if [dx.inputs[0].shape[i] for i in dx.attrs["lhs_batch"]] != [dw.inputs[0].shape[i] for i in dw.attrs["lhs_batch"]]:
        return None
    for w in map(weight_of, dx.inputs):
        side = weight_side(dx, w)
        if side is None or w not in a.inputs or w not in b.inputs or dw.size != w.size or tokens(dx, side) != t:
            continue
        if not any(r.shape == w.shape and r is not dw and depends(r, dw) for r in b.roots):
            continue  # no update of W in dW's epilogue
        if not (set(a.inputs) & set(b.inputs)) - {w}:
            continue  # no dY in common
        return w, (f"input gradient and weight gradient with its update in one pass over the weight "
                   f"{w.dtype}{list(w.shape)}: each tile of it read once, {t} tokens in one tile")
    return None


def merge(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    """Pairs of plain matmul groups (dX, dW + update of the same W) as one "weight_grad" group
    each, where the target can emit it."""
    from .fusion import FusionGroup
    groups = list(groups)
    mats = [g for g in groups if isinstance(g, FusionGroup) and _plain(g, depends)]
    taken: set = set()
    for b in mats:
        if id(b) in taken:
            continue
        for a in mats:
            if a is b or id(a) in taken:
                continue
            found = _pair(a, b, depends)
            if found is None:
                continue
            w, why = found
            nodes = {n: None for n in a.nodes + b.nodes}
            ins = [x for x in dict.fromkeys(a.inputs + b.inputs) if x not in nodes]
            roots = a.roots + [r for r in b.roots if r not in a.roots]
            if any(depends(x, r) for x in ins for r in roots):
                continue
            merged = FusionGroup("weight_grad", roots, sorted(nodes, key=order.get), sorted(ins, key=order.get),
                                 f"{why}; {a.reason} and {b.reason}", b.anchor,
                                 {"dx": a.anchor, "dx_roots": list(a.roots), "weight": w})
            try:
                feasible(merged)
            except cannot_fuse:
                continue
            groups[groups.index(a)] = merged
            groups.remove(b)
            taken |= {id(a), id(b)}
            break
    return groups
