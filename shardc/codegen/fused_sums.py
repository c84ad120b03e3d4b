"""Operand sums in a matmul: a bias gradient Σ_rows dY (and what an optimizer computes from it)
is read in the same tiles as the weight gradient dYᵀ·X that contracts those rows, so it is
summed in that matmul's K loop instead of a reduction kernel rereading dY.

`into_matmuls` merges a reduction group into a matmul group when every reduction it makes of the
matmul's left operand sums exactly over the dot's contraction dims (any further reductions only
over size-1 dims), and its outputs have the size of the dot's left free dims. The merged group
records those sums as `pattern["ksum"]`; the emitter accumulates them per row block beside the
dot and stores them (with whatever elementwise ops follow) after the loop."""
from __future__ import annotations

from ..ir import DType, Node, Op
from ..ir.ops import REDUCE


def _operand_sums(m, g) -> list | None:
    d = m.anchor
    lhs = d.inputs[0]
    lc = sorted(d.attrs["lhs_contract"])
    m_size = lhs.size // max(1, _prod(lhs.shape[i] for i in lc))
    sums, from_sums = [], set()
    for n in g.nodes:
        if n.op is Op.REDUCE_SUM and n.inputs[0] is lhs and sorted(n.attrs["axes"]) == lc:
            sums.append(n)
            from_sums.add(n)
        elif any(i in from_sums for i in n.inputs):
            if n.op in REDUCE and any(n.inputs[0].shape[a] != 1 for a in n.attrs["axes"]):
                return None
            from_sums.add(n)
        elif n.op in REDUCE:
            return None
    if not sums or any(r not in from_sums or r.size != m_size for r in g.roots):
        return None
    return sums


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def into_matmuls(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    """`depends(x, y)`: whether value x is computed from y (a merge must not make a cycle)."""
    from .fusion import FusionGroup
    groups = list(groups)
    mats = _dot_groups(groups)
    by_lhs: dict = {}  # a dot's left operand → positions in `mats` (a merge keeps the anchor)
    for i, m in enumerate(mats):
        by_lhs.setdefault(m.anchor.inputs[0], []).append(i)
    for g in [g for g in groups if isinstance(g, FusionGroup) and g.kind == "reduction"]:
        summed = {n.inputs[0] for n in g.nodes if n.op is Op.REDUCE_SUM}  # only these can match
        for i in sorted(i for x in summed for i in by_lhs.get(x, ())):
            m = mats[i]
            if m.pattern.get("ksum"):
                continue
            sums = _operand_sums(m, g)
            if sums is None or _would_cycle(m, g, depends):
                continue
            if _merge(groups, mats, i, g, order, feasible, cannot_fuse, {**m.pattern, "ksum": sums},
                      f"sums its left operand over K for {g.reason.split(': ', 1)[-1]}"):
                break
    return groups


def _dot_groups(groups: list) -> list:
    from .fusion import FusionGroup
    return [g for g in groups if isinstance(g, FusionGroup) and g.kind == "matmul" and g.anchor is not None
            and g.anchor.op is Op.DOT_GENERAL and "qk" not in g.pattern]


def _would_cycle(m, g, depends) -> bool:
    """Whether one group made of matmul group m and group g would read what it writes."""
    inside = set(m.nodes)  # what m computes (an operand it stores) g may read from it
    return any(depends(x, r) for x in g.inputs if x not in inside for r in m.roots) \
        or any(depends(x, r) for x in m.inputs for r in g.roots)


def _merge(groups, mats, i, g, order, feasible, cannot_fuse, pattern, why) -> bool:
    """Replace mats[i] and g by one matmul group if the target can emit it (in place; whether it did)."""
    from .fusion import FusionGroup
    m = mats[i]
    nodes = {n: None for n in m.nodes + g.nodes}
    ins = [x for x in dict.fromkeys(m.inputs + g.inputs) if x not in nodes]
    merged = FusionGroup("matmul", m.roots + g.roots, sorted(nodes, key=order.get), sorted(ins, key=order.get),
                         f"{m.reason}; {why}", m.anchor, pattern)
    try:
        feasible(merged)
    except cannot_fuse:
        return False
    groups[groups.index(m)] = merged
    mats[i] = merged
    groups.remove(g)
    return True


def into_epilogues(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    """A row or column sum of a matmul's epilogue value (a norm backward's Σ_d dy·γ·x̂ per row,
    its Σ_rows dy·x̂ for dγ) is computed where the value is: each program adds its tile's partial
    sums to the zeroed output (`pattern["rsum"]`), instead of a reduction kernel rereading it."""
    from .fusion import FusionGroup
    groups = list(groups)
    mats = _dot_groups(groups)
    by_root: dict = {}  # a value a matmul group stores → its position in `mats`
    for i, m in enumerate(mats):
        for r in m.roots:
            by_root.setdefault(r, []).append(i)
    for g in [g for g in groups if isinstance(g, FusionGroup) and g.kind == "reduction"]:
        if len(g.roots) != 1 or g.roots[0].op is not Op.REDUCE_SUM or not g.roots[0].dtype.is_float \
                or sum(n.op in REDUCE for n in g.nodes) != 1:
            continue
        for i in sorted({i for x in g.inputs for i in by_root.get(x, ())}):
            m = mats[i]
            if _would_cycle(m, g, depends):
                continue
            if _merge(groups, mats, i, g, order, feasible, cannot_fuse,
                      {**m.pattern, "rsum": m.pattern.get("rsum", []) + list(g.roots)},
                      f"adds its tiles' partial sums for {g.reason.split(': ', 1)[-1]}"):
                for r in g.roots:
                    by_root.setdefault(r, []).append(i)
                break
    return groups


def column_sum(n: Node) -> bool:
    """A sum over every row of a value, keeping its last dim (a norm's dγ, dβ): the planner stores
    it on its own (not inside the optimizer update reading it), so that the kernel holding its
    rows can add it (`into_rows`, a matmul epilogue's `rsum`)."""
    if n.op is not Op.REDUCE_SUM or n.dtype is not DType.f32:
        return False
    x, axes = n.inputs[0], sorted(n.attrs["axes"])
    return x.rank >= 2 and axes == list(range(x.rank - 1)) and any(x.shape[a] > 1 for a in axes)


def into_rows(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    """A column sum of values a row kernel computes from what it reads (a norm backward's
    dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy beside its dx under tp, where dy is an all-reduce's
    result and no matmul computes it) is added by that row kernel: each program adds its tile's
    partial sums to the zeroed output, instead of a reduction kernel rereading the rows."""
    from .fusion import FusionGroup
    groups = list(groups)
    sums = [g for g in groups if isinstance(g, FusionGroup) and g.kind == "reduction" and g.anchor is None
            and all(column_sum(r) for r in g.roots)]
    for g in sums:
        big = {x for x in g.inputs if x.size == g.roots[0].inputs[0].size}
        rows = [h for h in groups if isinstance(h, FusionGroup) and h not in sums and h.anchor is None
                and h.kind in ("pointwise", "reduction") and big and big <= set(h.inputs)
                and set(g.inputs) <= set(h.inputs) | set(h.nodes)]
        for h in sorted(rows, key=lambda h: -max(order[r] for r in h.roots)):
            if _would_cycle(h, g, depends):
                continue
            nodes = {n: None for n in h.nodes + g.nodes}
            ins = [x for x in dict.fromkeys(h.inputs + g.inputs) if x not in nodes]
            merged = FusionGroup("reduction", h.roots + g.roots, sorted(nodes, key=order.get),
                                 sorted(ins, key=order.get),
                                 f"{h.reason}; adds its tiles' column sums for {g.reason.split(': ', 1)[-1]}")
            try:
                feasible(merged)
            except cannot_fuse:
                continue
            groups[groups.index(h)] = merged
            groups.remove(g)
            break
    return groups
