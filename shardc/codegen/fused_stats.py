"""Row statistics in a matmul's prologue: a reduction over the rows of a matmul's A operand
source (a layer norm's variance pass Σ(x - mean)², a norm backward's Σ over the row) that the
matmul's normalizing prologue reads is computed there, one row block at a time, from the x
it loads anyway, and stored by its first column of programs, instead of by a reduction
kernel that rereads x.

`into_prologues` merges a reduction group with one root r into the earliest matmul group that
reads r and the reduction's largest input, when r has one value per row of the dot's left
operand and nothing the matmul reads is computed from r, and, where r's group rebuilds a dot
(a log-sum-exp over rebuilt logits), the matmul's columns fit one tile: each column tile's
program computes the prologue again, and the LM head's dX = dlogits·W over 768+ columns would
rebuild the logits once per column tile. The merged group records r in
`pattern["rowstats"]`; the emitters compute it as they compute any row statistic of the
prologue and store it beside the dot's result."""
from __future__ import annotations

import math

from ..ir import Op
from ..ir.ops import REDUCE
from .fused_recompute import MAX_CHAIN_TILE, is_recomputed


def into_prologues(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    groups = list(groups)
    while True:  # a statistic merged may let one it reads follow (softmax's Σexp, then its max)
        n = len(groups)
        groups = _into_prologues(groups, order, feasible, cannot_fuse, depends)
        if len(groups) == n:
            return groups


def _rebuilt_siblings(m) -> bool:
    """Sibling dots over rebuilt tiles (attention's dK beside dVᵀ): their statistics (D) are
    the dQ kernel's. Siblings over a stored operand (SwiGLU's gate and up projections of one
    normalized x) compute its norm statistics as any matmul does."""
    return "siblings" in m.pattern and any(n.op is Op.DOT_GENERAL and n is not m.anchor and is_recomputed(n)
                                           for n in m.nodes)


def _columns(d) -> int:
    """Output columns of dot `d`: its right-hand free extent (how many column tiles run its rows)."""
    rhs, a = d.inputs[1], d.attrs
    return math.prod(rhs.shape[i] for i in range(rhs.rank) if i not in a["rhs_batch"] + a["rhs_contract"])


def _into_prologues(groups: list, order: dict, feasible, cannot_fuse, depends) -> list:
    from .fusion import FusionGroup
    for g in [g for g in groups if isinstance(g, FusionGroup) and g.kind == "reduction" and len(g.roots) == 1]:
        r = g.roots[0]
        if r.op not in REDUCE or not g.inputs:
            continue
        big = max(g.inputs, key=lambda x: x.size)
        mats = sorted((m for m in groups if isinstance(m, FusionGroup) and m.kind == "matmul" and r in m.inputs
                       and big in m.inputs and "qk" not in m.pattern and not _rebuilt_siblings(m)),
                      key=lambda m: order[m.anchor])
        for m in mats[:1]:
            lhs = m.anchor.inputs[0]
            if r.size * math.prod(lhs.shape[i] for i in m.anchor.attrs["lhs_contract"]) != lhs.size:
                continue
            if _columns(m.anchor) > MAX_CHAIN_TILE and any(is_recomputed(n) for n in g.nodes):
                continue  # every column tile's program would rebuild the dot the statistic reads
            if any(depends(x, q) for x in g.inputs for q in m.roots) \
                    or any(depends(x, r) for x in m.inputs if x is not r):
                continue
            nodes = {n: None for n in m.nodes + g.nodes}
            ins = [x for x in dict.fromkeys(m.inputs + g.inputs) if x not in nodes]
            merged = FusionGroup("matmul", m.roots + [r], sorted(nodes, key=order.get), sorted(ins, key=order.get),
                                 f"{m.reason}; computes {g.reason.split(': ', 1)[-1]} in its prologue and stores it",
                                 m.anchor, {**m.pattern, "rowstats": m.pattern.get("rowstats", []) + [r]})
            try:
                feasible(merged)
            except cannot_fuse:
                continue
            groups[groups.index(m)] = merged
            groups.remove(g)
    return groups
