"""Weight kernels: a weight's input gradient, weight gradient and update in one kernel that reads
the weight once, where few tokens meet each weight.

A training step reads each weight W three times after the forward: for the input gradient
dX = dY·Wᵀ, and in the weight-gradient matmul dW = Xᵀ·dY whose epilogue applies the optimizer
(W - lr·dW, Adam's moments; the planner fuses the update there). When the tokens per weight are
few (batch 1, an expert's capacity), the weight dominates the step's bytes, and that fourth read
adds a third to what the matmul bound counts for it (the ratio tends to 4/3). Here both run in one kernel: each program owns a block of W's
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
its order). A kernel passes over its weights one after the other, all feeding one dX. A row group
that stores only an update computed from a dY's sum over the tokens (a bias: b - lr·Σ_t dY, Adam's
moments of it) joins too, `pattern["bias"]` listing those sums (the kernel adds up the dY tiles it
loads), and so does an elementwise update of what those store (Adam's step of the bias).
"""
from __future__ import annotations

import math

from ..ir import Op
from ..ir.ops import ELEMENTWISE, REDUCE

MAX_TOKENS = 512  # dW's contraction, padded to a power of two: one tile of every program


def _dots(m, depends) -> list | None:
    """The dots of a matmul group that stores only them and their epilogues: a plain group's one,
    or a sibling group's (fused_siblings.py: dK beside dVᵀ, summed input gradients dk·Wk + dv·Wv,
    weight gradients of projections reading one x), possibly with bias gradients summed in its K
    loop (fused_sums.into_matmuls); None for any other group."""
    d = m.anchor
    if m.kind != "matmul" or d is None or d.op is not Op.DOT_GENERAL or set(m.pattern) - {"siblings", "ksum"}:
        return None
    dots = [d] + [s for s, _ in m.pattern.get("siblings", ())]
    made = dots + list(m.pattern.get("ksum", ()))  # (a bias gradient summed in dW's K loop: fused_sums)
    if not all(n.dtype.is_float for n in dots) or not all(any(r is n or depends(r, n) for n in made) for r in m.roots):
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
    return w in b.inputs and dw.size == w.size and any(
        r.shape == w.shape and r is not dw and {w, dw} <= _elementwise_of(r) for r in b.roots)


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


def sum_chain(s, dy) -> list | None:
    """The reduce_sums and reshapes from `s` down to `dy`, or None where anything else is between."""
    chain, n = [], s
    while n is not dy:
        if n.op not in (Op.REDUCE_SUM, Op.RESHAPE) or not n.dtype.is_float or not n.inputs:
            return None
        chain.append(n)
        n = n.inputs[0]
    return chain if any(c.op is Op.REDUCE_SUM for c in chain) else None


def token_sum(s, dy, token_dims) -> list | None:
    """For `s`, a sum over `dy`'s `token_dims` (reduce_sums, with reshapes that only add or drop
    unit dims between them: how JAX sums a bias gradient over batch and sequence): each dim of `s`
    as the dim of `dy` it keeps (None: a unit dim); None when `s` is not such a sum."""
    chain = sum_chain(s, dy)
    if chain is None:
        return None
    dims = list(range(dy.rank))
    for c in reversed(chain):
        x = c.inputs[0]
        if c.op is Op.REDUCE_SUM:
            dims = [d for i, d in enumerate(dims) if i not in c.attrs["axes"]]
            continue
        if [k for k in x.shape if k != 1] != [k for k in c.shape if k != 1]:
            return None  # a reshape that regroups dims
        it = iter(d for i, d in enumerate(dims) if x.shape[i] != 1)
        dims = [next(it) if k != 1 else None for k in c.shape]
    left = {d for d in dims if d is not None}
    return dims if left == {d for d in range(dy.rank) if d not in token_dims and dy.shape[d] != 1} else None


def _bias(g, dws) -> tuple | None:
    """(the sum, its dW) when row group `g` stores one value computed from a sum over the tokens of
    a dW's dY operand, and has no other reduction (a bias gradient Σ_t dY and its update
    b - lr·Σ_t dY): the weight kernel sums the dY tiles it loads anyway instead of another
    kernel reading dY again."""
    if g.kind != "reduction" or len(g.roots) != 1 or g.anchor is not None:
        return None
    sums = {n for n in g.nodes if n.op in REDUCE}
    for s in sums:
        for dw in dws:
            for dy, pre in zip(dw.inputs, ("lhs_", "rhs_")):
                if (s.size == g.roots[0].size and token_sum(s, dy, dw.attrs[pre + "contract"]) is not None
                        and sums <= set(sum_chain(s, dy))):
                    return s, dw
    return None


def _cycle(merged, parts, groups) -> bool:
    """Whether another group reads what `merged` writes and, through groups reading each other's
    values, writes what it reads (a row group storing two values, one computed from dX and one a
    weight update reads, would have to run both before and after the merged kernel)."""
    readers: dict = {}
    for g in groups:
        if not any(g is p for p in parts):
            for x in g.reads:
                readers.setdefault(x, []).append(g)
    seen, stack, needed = set(), list(merged.writes), set(merged.reads)
    while stack:
        for g in readers.get(stack.pop(), ()):
            if id(g) not in seen:
                seen.add(id(g))
                if needed & set(g.writes):
                    return True
                stack.extend(g.writes)
    return False


def merge(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    """Each input-gradient group with the weight-gradient groups updating the weights it reads (and
    the bias updates summing their dY over the tokens), as one "weight_grad" group, where the
    target can emit it."""
    from .fusion import FusionGroup
    groups = list(groups)
    mats = [(g, d) for g in groups if isinstance(g, FusionGroup) for d in [_dots(g, depends)] if d]
    rows = [g for g in groups if isinstance(g, FusionGroup) and g.kind in ("reduction", "pointwise")]
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
        dws = [p[2] for p in pairs]
        biases = [(g, found) for g in rows if id(g) not in taken for found in [_bias(g, dws)] if found]
        # and the updates computed from those (Adam's parameter update from the new m and v)
        made = {g.roots[0] for g, _ in biases}
        after = [g for g in rows if id(g) not in taken and len(g.roots) == 1 and g.anchor is None
                 and set(g.inputs) & made and not any(n.op in REDUCE for n in g.nodes)
                 and any(g.roots[0].size == r.size for r in made)]
        for with_biases in ([biases, []] if biases else [[]]):
            parts = [a, *bs, *(g for g, _ in with_biases), *(after if with_biases else ())]
            nodes = {n: None for g in parts for n in g.nodes}
            ins = [x for x in dict.fromkeys(x for g in parts for x in g.inputs) if x not in nodes]
            roots = list(dict.fromkeys(r for g in parts for r in g.roots))
            if any(depends(x, r) for x in ins for r in roots):
                continue
            t = _size(pairs[0][2].inputs[0], pairs[0][2].attrs["lhs_contract"])
            shapes = ", ".join(f"{w.dtype}{list(w.shape)}" for w in ws)
            merged = FusionGroup("weight_grad", roots, sorted(nodes, key=order.get), sorted(ins, key=order.get),
                                 f"input gradient and weight gradient with its update in one pass over the weight"
                                 f"{'s' if len(ws) > 1 else ''} {shapes}: each tile read once, {t} tokens in one tile"
                                 + (", bias gradients summed from its dY tiles" if with_biases else "") + "; "
                                 + " and ".join(g.reason for g in parts), pairs[0][2],
                                 {"dx": [p[0] for p in pairs], "weight": ws, "dw": [p[2] for p in pairs],
                                  "dx_roots": list(a.roots),
                                  "bias": [s for b in bs for s in b.pattern.get("ksum", ())]
                                  + [s for _, (s, _) in with_biases]})
            if _cycle(merged, parts, groups):
                continue
            try:
                feasible(merged)
            except cannot_fuse:
                continue
            for g in parts[1:]:
                groups.remove(g)
            groups[groups.index(a)] = merged
            taken |= {id(g) for g in parts}
            break
    return groups
