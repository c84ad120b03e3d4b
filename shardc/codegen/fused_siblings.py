"""Sibling matmuls: two dots over the same output tiles and the same contraction that read a
common input run as one kernel with two accumulators, each operand tile loaded or rebuilt once.

Attention's backward is the case it is for: dK = dSᵀ·Q and dVᵀ = dOᵀ·P both contract the query
positions and cover (key position × head dim) tiles, one transposed; dS and P are rebuilt per
tile from the same scores (codegen/fused_recompute.py), so the pair is FlashAttention-2's dK/dV
kernel, generated: one pass over the queries instead of two, q, k, v, dO and the statistics read
once. Nothing here knows attention: any two plain matmul groups qualify when
- their dots have the same operand dtype, batch shape and contraction shape, and the second's
  (left free, right free) shapes are the first's (M, N) or (N, M) (then it is accumulated
  transposed: its right operand gives the A tile, its left the B tile);
- their A tiles are computed from a common value read at the same index (what the merged kernel
  computes once), they share an input, neither reads a value computed from what the other writes (one's
  epilogue may read the other's dot: it is computed inside), and every value each stores is its
  dot or its epilogue.
A second case shares no tile: a dot read only by the other's epilogue, which adds it (a projection's
input gradient summed over the projections that read one x: Llama's dk·Wk + dv·Wv, the SwiGLU
dgate·Wg + dup·Wu). Accumulated beside the other in its K loop, the summand never reaches memory.
The merged group records `pattern["siblings"]`: [(dot, swapped)]."""
from __future__ import annotations

from ..ir import Op


def _shapes(d):
    lhs, rhs = d.inputs
    a = d.attrs
    lb, lc, rb, rc = a["lhs_batch"], a["lhs_contract"], a["rhs_batch"], a["rhs_contract"]
    lf = [lhs.shape[i] for i in range(lhs.rank) if i not in lb + lc]
    rf = [rhs.shape[i] for i in range(rhs.rank) if i not in rb + rc]
    return [lhs.shape[i] for i in lb], [lhs.shape[i] for i in lc], lf, rf


def orientation(d1, d2) -> bool | None:
    """False: d2's tiles are d1's; True: they are d1's transposed; None: not siblings."""
    if d1.inputs[0].dtype is not d2.inputs[0].dtype or not d1.dtype.is_float or d1.dtype is not d2.dtype:
        return None
    b1, k1, m1, n1 = _shapes(d1)
    b2, k2, m2, n2 = _shapes(d2)
    if b1 != b2 or k1 != k2:
        return None
    if (m2, n2) == (m1, n1):
        return False
    if (m2, n2) == (n1, m1):
        return True
    return None


def _a_tile(d, swapped: bool):
    """The A operand of d's tiles and its (batch, free, contract) dims."""
    lhs, rhs = d.inputs
    a = d.attrs
    x, b, c = (rhs, a["rhs_batch"], a["rhs_contract"]) if swapped else (lhs, a["lhs_batch"], a["lhs_contract"])
    return x, (tuple(b), tuple(i for i in range(x.rank) if i not in b + c), tuple(c))


def shares_a_tile(d1, d2, swapped: bool) -> bool:
    """Whether the two dots' A tiles are computed from a common value read at the same index
    (dSᵀ and Pᵀ from the same rebuilt scores): what merging them computes once instead of twice."""
    from .fusion import tree
    x1, dims1 = _a_tile(d1, False)
    x2, dims2 = _a_tile(d2, swapped)
    if x1.shape != x2.shape or dims1 != dims2:
        return False
    same_shape = lambda x: {n for n in tree(x, lambda n: False)[0] if n.shape == x.shape}
    return bool(same_shape(x1) & same_shape(x2))


def _plain(m, depends) -> bool:
    d = m.anchor
    return (m.kind == "matmul" and d is not None and d.op is Op.DOT_GENERAL and not m.pattern
            and all(r is d or depends(r, d) for r in m.roots))


def _summand(a, b, groups: list, stored) -> bool:
    """Whether b's dot is read by a's epilogue and by nothing else: no other group, no collective
    or graph output (`stored`), and b stores nothing else."""
    d = b.anchor
    return d in a.inputs and b.roots == [d] and not stored(d) \
        and not any(g is not a and g is not b and d in g.reads for g in groups)


def merge(groups: list, order: dict, feasible, cannot_fuse, depends, stored=lambda n: True) -> list:
    """`stored(n)`: whether value n must be written whatever reads it (a graph output, a
    collective's operand)."""
    from .fusion import FusionGroup
    groups = list(groups)
    mats = [g for g in groups if isinstance(g, FusionGroup) and _plain(g, depends)]
    taken: set = set()
    for i, m1 in enumerate(mats):
        if id(m1) in taken:
            continue
        for m2 in mats[i + 1:]:
            if id(m2) in taken:
                continue
            swapped = orientation(m1.anchor, m2.anchor)
            if swapped is None:
                continue
            summed = next(((a, b) for a, b in ((m1, m2), (m2, m1)) if not swapped and _summand(a, b, groups, stored)), None)
            pair = summed or next(((a, b) for a, b in ((m1, m2), (m2, m1)) if set(m1.inputs) & set(m2.inputs)
                                   and shares_a_tile(a.anchor, b.anchor, swapped)), None)
            if pair is None:
                continue
            a, b = pair
            nodes = {n: None for n in a.nodes + b.nodes}
            ins = [x for x in dict.fromkeys(a.inputs + b.inputs) if x not in nodes]
            # one's epilogue may read the other's dot (computed inside now), nothing computed from it
            if any(depends(x, r) for x in ins for r in a.roots + b.roots):
                continue
            merged = FusionGroup("matmul", a.roots + ([] if summed else b.roots), sorted(nodes, key=order.get),
                                 sorted(ins, key=order.get),
                                 f"{a.reason}; beside it, in the same K loop, {b.reason}"
                                 + (", added in its epilogue" if summed else "")
                                 + (" (accumulated transposed)" if swapped else ""), a.anchor,
                                 {"siblings": [(b.anchor, swapped)]})
            try:
                feasible(merged)
            except cannot_fuse:
                continue
            groups[groups.index(m1)] = merged
            groups.remove(m2)
            taken |= {id(m1), id(m2)}
            break
    return groups
