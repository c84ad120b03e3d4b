"""Which IR nodes a kernel recomputes rather than reads from memory (inlinable: elementwise,
layout and reduction ops, recomputed dots and one-hot scatters), the walk over them (`tree`), and
the attention pattern the planner fuses into one flash-attention group. Split from fusion.py, the
planner that uses them."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import Node, Op
from ..ir.ops import ELEMENTWISE, REDUCE
from . import fused_recompute
from .prologue import through

VIEW_OPS = frozenset({Op.BROADCAST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE})
INLINE_OPS = ELEMENTWISE | VIEW_OPS | REDUCE | {Op.PAD, Op.CONCATENATE, Op.GATHER, Op.IOTA,
                                                Op.AXIS_INDEX, Op.CONSTANT}

_PARAMETER, _CONSTANT, _DOT, _SCATTER = Op.PARAMETER, Op.CONSTANT, Op.DOT_GENERAL, Op.SCATTER
_INLINE_IDS = frozenset(id(op) for op in INLINE_OPS)  # by identity: Enum's __hash__ is slow Python


def is_buffer_leaf(n: Node) -> bool:
    op = n.op
    return op is _PARAMETER or (op is _CONSTANT and isinstance(n.attrs["value"], np.ndarray))


def inlinable(n: Node) -> bool:
    op = n.op
    if op is _DOT or op is _SCATTER:  # recomputed scores/logits, one-hot scatters
        return fused_recompute.is_recomputed(n) or fused_recompute.onehot_scatter(n)
    return id(op) in _INLINE_IDS and not (op is _CONSTANT and isinstance(n.attrs["value"], np.ndarray))


def tree(root: Node, stop: Callable[[Node], bool]) -> tuple[list[Node], list[Node]]:
    """(nodes computed, leaves read) walking from `root` through inlinable nodes not `stop`ped."""
    seen, inner, leaves = set(), [], []
    stack = [root]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not root and (stop(n) or not inlinable(n)):
            leaves.append(n)
            continue
        inner.append(n)
        stack.extend(n.inputs)
    return inner, leaves


# ------------------------------------------------------------------------- attention pattern
def match_attention(pv: Node) -> dict | None:
    """softmax(T(QKᵀ), last axis) · V, as frontends decompose it: div(E, sum E) with
    E = exp(T - max T). Returns the pattern's parts (the dots, the scores T, its row statistics
    max T and Σ E, and the nodes in between) or None."""
    if pv.op is not Op.DOT_GENERAL:
        return None
    p, v = pv.inputs
    a = pv.attrs
    nb = len(a["lhs_batch"])
    # (V's and Q's, K's batch dims anywhere: ir/unmerge folds their head transposes into the dots)
    if not (a["lhs_batch"] == tuple(range(nb)) and len(a["rhs_batch"]) == nb and p.rank == nb + 2
            and v.rank == nb + 2 and a["lhs_contract"] == (nb + 1,)):
        return None
    kv_axis = (nb + 1,)
    div = through(p, {Op.CAST})
    if div.op is not Op.DIV:
        return None
    e, den = div.inputs
    s1 = through(den, {Op.BROADCAST, Op.RESHAPE, Op.CAST})
    if s1.op is not Op.REDUCE_SUM or s1.attrs["axes"] != kv_axis:
        return None
    exp = through(e, {Op.CAST})
    if exp.op is not Op.EXP or through(s1.inputs[0], {Op.CAST}) is not exp:
        return None
    sub = through(exp.inputs[0], {Op.CAST})
    if sub.op is not Op.SUB:
        return None
    t, mx = sub.inputs
    m = through(mx, {Op.BROADCAST, Op.RESHAPE, Op.CAST})
    if m.op is Op.MAX:  # max(-inf, reduce_max(T)): jax's max with initial=-inf (any other floor
        # would change exp(T - max) and the kernels subtract the running max itself)
        ins = [through(i, {Op.BROADCAST, Op.RESHAPE}) for i in m.inputs]
        floor = [i for i in ins if i.op is Op.CONSTANT]
        if len(floor) != 1 or not np.all(np.asarray(floor[0].attrs["value"]) == -np.inf):
            return None
        m = next(i for i in ins if i.op is not Op.CONSTANT)
    if m.op is not Op.REDUCE_MAX or m.attrs["axes"] != kv_axis or through(m.inputs[0], {Op.CAST}) is not through(t, {Op.CAST}):
        return None
    if t.shape != p.shape:
        return None
    # the QKᵀ dot: the one dot_general in T's tree, reached through same-shape elementwise ops
    # (a leaf even where a training step rebuilds it per tile, fused_recompute)
    inner, leaves = tree(t, lambda n: n.op is Op.DOT_GENERAL)
    dots = [n for n in leaves if n.op is Op.DOT_GENERAL]
    if len(dots) != 1:
        return None
    qk = dots[0]
    b = qk.attrs
    if not (len(b["lhs_batch"]) == len(b["rhs_batch"]) == nb and qk.shape == t.shape
            and len(b["lhs_contract"]) == 1 and qk.inputs[0].rank == nb + 2 and qk.inputs[1].rank == nb + 2):
        return None
    on_path = _depends_on(inner, qk)
    if any(n.shape != t.shape or n.op not in ELEMENTWISE for n in on_path):
        return None
    # every intermediate must stay inside (training keeps P for the backward: no flash there)
    internal = set(on_path) | {qk}
    for start in (p, den, mx, e):
        internal |= set(tree(start, lambda n: n is t or n is qk)[0])
    return {"qk": qk, "pv": pv, "scores": t, "rowmax": m, "rowsum": s1, "internal": internal}


def _depends_on(nodes: list[Node], target: Node) -> list[Node]:
    memo: dict[Node, bool] = {}

    def dep(n: Node) -> bool:
        if n is target:
            return True
        if n not in memo:
            memo[n] = any(dep(i) for i in n.inputs) if n in set_nodes else False
        return memo[n]

    set_nodes = set(nodes)
    return [n for n in nodes if dep(n)]
