"""The training forward's attention as one flash-attention kernel that also stores its row
statistics (FlashAttention-2's forward: O and the softmax statistics, the scores built once).

In a training step the backward reads the softmax's row statistics (max T and Σexp(T - max)),
so the planner's attention rule (inlining.match_attention, all intermediates inside) does not
take the forward: the scores QKᵀ are a recomputed dot (fused_recompute), its statistics are
computed in the P·V matmul's prologue (fused_stats), and that kernel rebuilds the scores three
times: once for the max, once for Σexp, once for each P tile of its K loop.

`into_attention` turns such a matmul into an attention group: one program per (batch·head,
query block) runs the online softmax over the key blocks (a running max and sum rescale the
accumulator), builds each scores tile once, and stores O (or the matmul's epilogue of it) and
the statistics it was given as roots (the final running max is max T exactly; the running sum is Σexp(T - max T) to f32
rounding). Kept only where the target can emit it (feasible).

`online_pairs` finds the same statistics anywhere a kernel loops over a row to reduce it (the
cross-entropy's log-sum-exp over rebuilt logits, longer than one tile): a Σexp(y - max y) and its
max, which the Triton emitter then computes in one loop (a running max rescaling the running
sum) instead of one loop each, each rebuilding y."""
from __future__ import annotations

import numpy as np

from ..ir import Node, Op
from ..ir.ops import ELEMENTWISE
from .inlining import match_attention
from .prologue import through

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
    after = {g.anchor}  # O and its epilogue (what the matmul computed from its result)
    for n in g.nodes:
        if any(i in after for i in n.inputs):
            after.add(n)
    if not set(g.pattern["rowstats"]) <= stats or any(r not in after and r not in stats for r in g.roots):
        return None
    pattern = {k: m[k] for k in ("qk", "pv", "scores", "rowmax", "rowsum")}
    stored = ", ".join(r.op.value for r in g.roots if r in stats)
    return FusionGroup("attention", list(g.roots), g.nodes, g.inputs,
                       f"flash attention (training forward): QKᵀ once per key block, online softmax and ·V "
                       f"in one pass, storing the row statistics ({stored}) the backward reads", g.anchor, pattern)


def online_pairs(nodes) -> dict[Node, Node]:
    """{S: M} for the reductions S = Σ exp(y - g(M)) and M = max y of `nodes` over the same axes of
    values of one shape, g any function of M alone (views, casts, jax's max(-inf, ·) or
    select(isfinite(M), M, 0)): exp(y - g(m)) = exp(y - g(m')) · exp(g(m') - g(m)), so S is a
    running sum rescaled as the running max m grows, in the same pass over y as M."""
    inside, out = set(nodes), {}
    for n in nodes:
        if n.op is not Op.REDUCE_SUM or not n.dtype.is_float:
            continue
        e = through(n.inputs[0], {Op.CAST})
        sub = through(e.inputs[0], {Op.CAST}) if e.op is Op.EXP else None
        if sub is None or sub.op is not Op.SUB or sub.shape != n.inputs[0].shape:
            continue
        m = _max_of(sub.inputs[1])
        if m is not None and m in inside and m.attrs["axes"] == n.attrs["axes"] \
                and m.inputs[0].shape == n.inputs[0].shape and m.dtype.is_float:
            out[n] = m
    return out


def _max_of(c: Node) -> Node | None:
    """The one reduce_max that `c` is computed from through elementwise ops and views, with
    scalar constants alone beside it; None otherwise."""
    found, seen, stack = set(), set(), [c]
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        if x.op is Op.REDUCE_MAX:
            found.add(x)
        elif x.op is Op.CONSTANT and not isinstance(x.attrs["value"], np.ndarray):
            continue
        elif x.op in ELEMENTWISE or x.op in (Op.BROADCAST, Op.RESHAPE):
            stack.extend(x.inputs)
        else:
            return None
    return found.pop() if len(found) == 1 else None
