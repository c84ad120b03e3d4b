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

An input-gradient group and the weight-gradient groups updating its weights qualify (nothing
here knows a model or an optimizer):
- each dot of the input-gradient group (one, or summed siblings: dk·Wk + dv·Wv, dgate·Wg +
  dup·Wu) reads its own stored W as an operand (directly or through a transpose: Wᵀ), and a dot
  of one of the other groups (plain, or siblings: the gate and up weight gradients reading one x)
  is W's gradient: that group stores a value of W's shape computed from it (the update), and
  every dot of those groups is one of these;
- each dW contracts over at most MAX_TOKENS elements, and its dX's other operand has that many
  free elements (its tokens); both have the same batch shape (MoE experts: one W per expert);
- each weight-gradient group reads another stored value with the input-gradient group (dY:
  loaded once, as W is), and none reads what the other writes.
The target says whether it can emit them (which dims of W and dW correspond is checked there);
with more tokens than one tile the plan is unchanged. The group is kind "weight_grad", anchored at
the first dW; `pattern["dx"]`, `["weight"]` and `["dw"]` list the (dX, W, dW) of each weight and
`pattern["dx_roots"]` what the dX half stores (the kernel runs where dX did: the backward keeps
its order). A kernel passes over its weights one after the other, all feeding one dX.
"""
from __future__ import annotations

import math

from ..ir import Op
from ..ir.ops import ELEMENTWISE

MAX_TOKENS = 512  # dW's contraction, padded to a power of two: one tile of every program


def _dots(m, depends) -> list | None:
    """The dots of a matmul group that stores only them and their epilogues: a plain group's one,
    or a sibling group's (fused_siblings.py: dK beside dVᵀ, summed input gradients dk·Wk + dv·Wv,
    weight gradients of projections reading one x); None for any other group."""
    d = m.anchor
    if m.kind != "matmul" or d is None or d.op is not Op.DOT_GENERAL or set(m.pattern) - {"siblings"}:
        return None
    dots = [d] + [s for s, _ in m.pattern.get("siblings", ())]
    if not all(n.dtype.is_float for n in dots) or not all(any(r is n or depends(r, n) for n in dots) for r in m.roots):
        return None
    return dots


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


def _elementwise_of(r) -> set:
    """The values `r` is computed from element for element (same-size elementwise ops, transposes)."""
    seen, stack = set(), [r]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            if n.op in ELEMENTWISE or n.op is Op.TRANSPOSE:
                stack += [x for x in n.inputs if x.size == n.size]
    return seen


def _updated(b, dw, w) -> bool:
    """Whether group `b` stores an update of `w`: a value of W's shape computed element for
    element from `w` and its dot `dw` (W - lr·dW; not a gradient that reaches W through a dot)."""
    return w in b.inputs and dw.size == w.size and any(r.shape == w.shape and r is not dw and {w, dw} <= _elementwise_of(r)
                                                       for r in b.roots)


def _pairs(a, a_dots, cands) -> list | None:
    """[(dX dot, W, dW dot, dW's group)] for input-gradient group `a`: every dot of `a` reads its
    own weight, updated by a dot of one of the groups `cands` ((group, its dots)) over the same
    tokens and batch, and every dot of those groups is one of them; None otherwise."""
    out = []
    for dx in a_dots:
        found = None
        for b, dots, w in [(b, dots, w) for b, dots in cands for w in map(weight_of, dx.inputs)
                           if w in a.inputs and weight_side(dx, w) is not None]:
            for dw in dots:
                t = _size(dw.inputs[0], dw.attrs["lhs_contract"])
                if (_updated(b, dw, w) and t <= MAX_TOKENS and tokens(dx, weight_side(dx, w)) == t
                        and dw.inputs[0].dtype is dx.inputs[0].dtype
                        and [dx.inputs[0].shape[i] for i in dx.attrs["lhs_batch"]]
                        == [dw.inputs[0].shape[i] for i in dw.attrs["lhs_batch"]]):
                    found = (dx, w, dw, b)
        if found is None or any(p[1] is found[1] for p in out):
            return None
        out.append(found)
    used = {id(p[3]) for p in out}
    if sum(len(dots) for b, dots in cands if id(b) in used) != len(out):
        return None  # a weight gradient of those groups has no input gradient here
    return out


def merge(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    """Each input-gradient group with the weight-gradient groups updating the weights it reads, as
    one "weight_grad" group, where the target can emit it."""
    from .fusion import FusionGroup
    groups = list(groups)
    mats = [(g, d) for g in groups if isinstance(g, FusionGroup) for d in [_dots(g, depends)] if d]
    taken: set = set()
    for a, a_dots in mats:
        if id(a) in taken:
            continue
        cands = [(b, d) for b, d in mats if b is not a and id(b) not in taken
                 and not (set(a_dots) | set(a.roots)) & (set(b.nodes) | set(b.inputs))]  # (dW reads no dX)
        pairs = _pairs(a, a_dots, cands)
        if pairs is None:
            continue
        bs = list({id(p[3]): p[3] for p in pairs}.values())
        ws = [p[1] for p in pairs]
        if any(not (set(a.inputs) & set(b.inputs)) - set(ws) for b in bs):
            continue  # no dY in common
        nodes = {n: None for g in [a, *bs] for n in g.nodes}
        ins = [x for x in dict.fromkeys(x for g in [a, *bs] for x in g.inputs) if x not in nodes]
        roots = list(dict.fromkeys(r for g in [a, *bs] for r in g.roots))
        if any(depends(x, r) for x in ins for r in roots):
            continue
        t = _size(pairs[0][2].inputs[0], pairs[0][2].attrs["lhs_contract"])
        shapes = ", ".join(f"{w.dtype}{list(w.shape)}" for w in ws)
        merged = FusionGroup("weight_grad", roots, sorted(nodes, key=order.get), sorted(ins, key=order.get),
                             f"input gradient and weight gradient with its update in one pass over the weight"
                             f"{'s' if len(ws) > 1 else ''} {shapes}: each tile read once, {t} tokens in one tile; "
                             + " and ".join(g.reason for g in [a, *bs]), pairs[0][2],
                             {"dx": [p[0] for p in pairs], "weight": ws, "dw": [p[2] for p in pairs],
                              "dx_roots": list(a.roots)})
        try:
            feasible(merged)
        except cannot_fuse:
            continue
        groups[groups.index(a)] = merged
        for b in bs:
            groups.remove(b)
        taken |= {id(a)} | {id(b) for b in bs}
    return groups
