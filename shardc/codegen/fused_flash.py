"""The training forward's attention as one flash-attention kernel that also stores its row
statistics (FlashAttention-2's forward: O and the softmax statistics, the scores built once).

In a training step the backward reads the softmax's row statistics (max T and Σexp(T - max)),
so the planner's attention rule (inlining.match_attention, all intermediates inside) does not
take the forward: the scores QKᵀ are a recomputed dot (fused_recompute), its statistics are
computed in the P·V matmul's prologue (fused_stats), and that kernel rebuilds the scores three
times: once for the max, once for Σexp, once for each P tile of its K loop.

`into_attention` turns such a matmul into an attention group: one program per (batch·head,
query block) runs the online softmax over the key blocks (a running max and sum rescale the
accumulator), builds each scores tile once, and stores O and the statistics it was given as
roots (the final running max is max T exactly; the running sum is Σexp(T - max T) to f32
rounding). Kept only where the target can emit it (feasible)."""
from __future__ import annotations

from .inlining import match_attention

_ELSEWHERE = ("siblings", "ksum", "rsum")  # matmul-only fusions an attention kernel does not do


def into_attention(groups: list, feasible, cannot_fuse) -> list:
    from .fusion import FusionGroup
    out = []
    for g in groups:
        if isinstance(g, FusionGroup) and g.kind == "matmul" and g.pattern.get("rowstats") \
                and not any(k in g.pattern for k in _ELSEWHERE):
            flash = _flash(g, FusionGroup)
            if flash is not None:
                try:
                    feasible(flash)
                    g = flash
                except cannot_fuse:
                    pass
        out.append(g)
    return out


def _flash(g, FusionGroup):
    m = match_attention(g.anchor)
    if m is None:
        return None
    stats = {m["rowmax"], m["rowsum"]}
    if not set(g.pattern["rowstats"]) <= stats or any(r is not g.anchor and r not in stats for r in g.roots):
        return None
    pattern = {k: m[k] for k in ("qk", "pv", "scores", "rowmax", "rowsum")}
    stored = ", ".join(r.op.value for r in g.roots if r in stats)
    return FusionGroup("attention", list(g.roots), g.nodes, g.inputs,
                       f"flash attention (training forward): QKᵀ once per key block, online softmax and ·V "
                       f"in one pass, storing the row statistics ({stored}) the backward reads", g.anchor, pattern)
