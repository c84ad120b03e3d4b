"""Recomputed dots: the fusion planner's rule for scores and logits that never reach memory.

A dot_general whose rows are normalized over its right-hand free dims (softmax, log-sum-exp: a
row max of elementwise ops of the dot) and whose result is at least as large as its
operands together (attention scores QKᵀ, a language-model head's logits x·Wᵀ) is not stored: every kernel that
reads it recomputes the tile it needs from the operands (a `tl.dot` / `jnp.dot` over the
contraction, which fits on chip). Its row statistics (max, Σexp) are the only values stored, as
flash attention stores its log-sum-exp and Liger Kernel's fused linear cross-entropy never writes
the logits: the loss, dlogits·W and dlogitsᵀ·x each rebuild their tiles from x, W and the
statistics. A dot read only elementwise beside a recomputed one (the backward's dP = dO·Vᵀ,
multiplied into dS = P∘(dP - D)) is its partner: rebuilt in the same tiles, never stored.
A dot read by one other dot's K loop (`chained`), or by dots alone that each rebuild every tile
of it once for fewer bytes than storing it (`rebuilt_by_readers`: a fused MLP's hidden x·W1),
is rebuilt by its readers too.

A one-hot scatter-add (x + updates at one index per row: the transpose of a label gather, the
one-hot of cross-entropy's backward) is elementwise too: x + where(iota == index, update, 0), so
it is computed inside its readers instead of being its own kernel and buffer.

The planner records its decision in `RECOMPUTED` (the set of recomputed dots of the graph being
planned), which `fusion.inlinable` consults, so the shared tree walks treat those dots like any
other inlinable node; a dot the emitter cannot rebuild (CannotFuse) leaves the set and is stored.
"""
from __future__ import annotations

import math

from ..ir import DType, Graph, Node, Op
from ..ir.ops import ELEMENTWISE, REDUCE

MAX_RECOMPUTE_K = 4096  # contraction elements a kernel loops over to rebuild one tile
MAX_CHAIN_TILE = 128    # a chained dot's reader: its other free extent, one output tile of it
_THROUGH = ELEMENTWISE | {Op.BROADCAST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE}

RECOMPUTED: set[Node] = set()  # of the graph planned last (cleared by each planning)


def is_recomputed(n: Node) -> bool:
    return n.op is Op.DOT_GENERAL and n in RECOMPUTED


def onehot_scatter(n: Node) -> bool:
    """A scatter-add with one index per (batch) row: x + where(iota == index, update, 0)."""
    if n.op is not Op.SCATTER or n.dtype is DType.bool:
        return False
    ind = n.inputs[1]
    b = n.attrs.get("batch_dims", 0)
    return math.prod(ind.shape[b:]) == 1


def _free_dims(d: Node) -> tuple[list[int], list[int]]:
    lhs, rhs = d.inputs
    a = d.attrs
    lf = [i for i in range(lhs.rank) if i not in a["lhs_batch"] + a["lhs_contract"]]
    rf = [i for i in range(rhs.rank) if i not in a["rhs_batch"] + a["rhs_contract"]]
    return lf, rf


def _normalized_rows(d: Node, users: dict) -> bool:
    """Whether a max over exactly d's right-hand free dims reads d through elementwise ops: the
    stabilizing max of a softmax or log-sum-exp over the rows of d."""
    lf, rf = _free_dims(d)
    nb = len(d.attrs["lhs_batch"])
    axes = tuple(range(nb + len(lf), nb + len(lf) + len(rf)))
    seen, stack = set(), [d]
    while stack:
        n = stack.pop()
        for u in users.get(n, ()):
            if u in seen:
                continue
            seen.add(u)
            if u.op is Op.REDUCE_MAX and u.inputs[0].shape == d.shape and tuple(u.attrs["axes"]) == axes:
                return True
            if u.op in ELEMENTWISE and u.shape == d.shape:
                stack.append(u)
    return False


def _cheap_to_rebuild(d: Node, outputs: set) -> bool:
    """A float dot that is no output, with a short contraction and a result at least as large as
    its operands: rebuilding it per tile reads less than storing it."""
    if d.op is not Op.DOT_GENERAL or d in outputs or not d.dtype.is_float:
        return False
    lhs, rhs = d.inputs
    k = math.prod(lhs.shape[i] for i in d.attrs["lhs_contract"])
    return k <= MAX_RECOMPUTE_K and d.size >= lhs.size + rhs.size


def recomputable(d: Node, users: dict, outputs: set) -> bool:
    if not _cheap_to_rebuild(d, outputs):
        return False
    if any(u.op not in _THROUGH and u.op not in REDUCE and u.op is not Op.DOT_GENERAL and u.op is not Op.GATHER
           for u in users.get(d, ())):
        return False
    return _normalized_rows(d, users)


def _elementwise_reach(d: Node, users: dict) -> set:
    """The same-shape elementwise values computed from `d` (its score ops, its softmax)."""
    seen, stack = set(), [d]
    while stack:
        for u in users.get(stack.pop(), ()):
            if u not in seen and u.op in ELEMENTWISE and u.shape == d.shape:
                seen.add(u)
                stack.append(u)
    return seen


def _partner(d: Node, users: dict, outputs: set, reach: set) -> bool:
    """A dot read only elementwise and combined element for element with a recomputed dot's
    values (attention's dP = dO·Vᵀ in dS = P∘(dP - D)): rebuilt in the same tiles."""
    if not _cheap_to_rebuild(d, outputs):
        return False
    if any(u.op not in ELEMENTWISE or u.shape != d.shape for u in users.get(d, ())):
        return False
    return bool(_elementwise_reach(d, users) & reach)


def chained(d: Node, users: dict, outputs: set) -> bool:
    """A dot read, through same-shape elementwise ops, by one other dot alone, which contracts
    over d's rows and whose other operand's free dims fit one output tile: that dot's K loop
    rebuilds each tile of d once (no extra work), so d is never stored (a back-to-back GEMM,
    as CUTLASS's b2b_gemm: a weight gradient Xᵀ·(f'(H)∘(dY·Wᵀ)) never writes dY·Wᵀ)."""
    found = _short_float_dot(d, users, outputs, MAX_RECOMPUTE_K)
    if found is None or len(found[1]) != 1:
        return False
    lhs = d.inputs[0]
    reach, readers = found
    c = next(iter(readers))
    if c.op is not Op.DOT_GENERAL or c in outputs:
        return False
    a = c.attrs
    for side, (x, y) in enumerate(((c.inputs[0], c.inputs[1]), (c.inputs[1], c.inputs[0]))):
        if x not in reach or y in reach:
            continue
        pre = ("lhs_", "rhs_") if side == 0 else ("rhs_", "lhs_")
        lf, rf = _free_dims(d)
        nb = len(d.attrs["lhs_batch"])
        rows = set(range(nb, nb + len(lf)))  # d's lhs free dims, in d's result layout
        if x.shape != d.shape or set(a[pre[0] + "contract"]) != rows or tuple(a[pre[0] + "batch"]) != tuple(range(nb)):
            return False
        other_free = [i for i in range(y.rank) if i not in a[pre[1] + "batch"] + a[pre[1] + "contract"]]
        return math.prod(y.shape[i] for i in other_free) <= MAX_CHAIN_TILE
    return False


def _tile_rebuilt_once(d: Node, c: Node, reach: set) -> bool:
    """Whether dot `c` reads d (through `reach`) as one operand, contracting over d's rows or
    over its columns, with its other operand's free dims within one output tile: c's K loop
    then rebuilds each tile of d once, from d's operands."""
    lf, rf = _free_dims(d)
    nb = len(d.attrs["lhs_batch"])
    rows, cols = set(range(nb, nb + len(lf))), set(range(nb + len(lf), d.rank))
    a = c.attrs
    for side, (x, y) in enumerate(((c.inputs[0], c.inputs[1]), (c.inputs[1], c.inputs[0]))):
        if x not in reach or y in reach:
            continue
        pre = ("lhs_", "rhs_") if side == 0 else ("rhs_", "lhs_")
        if x.shape != d.shape or tuple(a[pre[0] + "batch"]) != tuple(range(nb)):
            return False
        if set(a[pre[0] + "contract"]) not in (rows, cols):
            return False
        other_free = [i for i in range(y.rank) if i not in a[pre[1] + "batch"] + a[pre[1] + "contract"]]
        return math.prod(y.shape[i] for i in other_free) <= MAX_CHAIN_TILE
    return False


def rebuilt_by_readers(d: Node, users: dict, outputs: set) -> bool:
    """A dot with a short contraction read, through same-shape elementwise ops, by dots alone,
    each of which rebuilds every tile of it once (`_tile_rebuilt_once`), where rebuilding reads
    fewer bytes than storing: its own kernel reading both operands, writing d, each reader
    reading d back, against each reader loading those of d's operands it does not already
    read as its own other operand. An expert MLP's hidden activation h = x·W1 of a training
    step: its forward output gelu(h)·W2 and both weight gradients rebuild h per tile (as a
    fused MLP kernel keeps it on chip), for one extra x·W1 per reader in FLOPs."""
    found = _short_float_dot(d, users, outputs, MAX_CHAIN_TILE)
    if found is None:
        return False
    lhs, rhs = d.inputs
    reach, readers = found
    if not readers or not all(c.op is Op.DOT_GENERAL and c not in outputs and _tile_rebuilt_once(d, c, reach)
                              for c in readers):
        return False
    stored = lhs.nbytes + rhs.nbytes + (1 + len(readers)) * d.nbytes
    rebuilt = sum(x.nbytes for c in readers for x in (lhs, rhs) if x not in c.inputs)
    return rebuilt <= stored


def mark_recomputed(g: Graph, users: dict, exclude: set) -> set:
    """Choose the graph's recomputed dots (not those in `exclude`: flash-attention internals):
    the normalized ones, then their partners, then the chained ones, then those rebuilt by
    all their readers."""
    RECOMPUTED.clear()
    outputs = set(g.outputs)
    chosen = {n for n in g.nodes if n not in exclude and recomputable(n, users, outputs)}
    reach = set().union(*(_elementwise_reach(n, users) for n in chosen)) if chosen else set()
    chosen |= {n for n in g.nodes if n not in exclude and n not in chosen and _partner(n, users, outputs, reach)}
    chosen |= {n for n in g.nodes if n not in exclude and n not in chosen and chained(n, users, outputs)}
    chosen |= {n for n in g.nodes if n not in exclude and n not in chosen and rebuilt_by_readers(n, users, outputs)}
    RECOMPUTED.update(chosen)
    return chosen


def unmark(n: Node) -> None:
    RECOMPUTED.discard(n)


def recomputed_operand_stats(x: Node, inlinable, stop) -> list[Node] | None:
    """For a dot operand computed from a recomputed dot (dlogits, dS, P): the reductions in its
    tree (the row statistics), which are stored while the rest is rebuilt per tile; None when
    the operand reads no recomputed dot."""
    seen, stack, reds, found = set(), [x], [], False
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not x and (stop(n) or not inlinable(n)):
            continue
        if is_recomputed(n):
            found = True
        if n.op in REDUCE:
            reds.append(n)
            continue  # a stored statistic: what it reads is its own kernel's business
        stack.extend(n.inputs)
    return reds if found else None


def reads_recomputed(n: Node, stop) -> bool:
    """Whether `n` is computed from a recomputed dot (not through a stored value): scores and
    their softmax are rebuilt in each reader by design, whatever rereading the operands costs."""
    seen, stack = set(), [n]
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        if is_recomputed(x):
            return True
        if x is not n and stop(x):
            continue
        if x.op in (Op.DOT_GENERAL, Op.SCATTER, Op.PARAMETER) or x.op in REDUCE:
            continue
        stack.extend(x.inputs)
    return False


def _short_float_dot(d: Node, users, outputs, max_k: int):
    """(reach, readers) of a float dot_general that is no output, contracts over at most max_k
    elements, and whose elementwise reach holds no output: the values it reaches through
    same-shape elementwise ops, and the ops outside them that read those; None otherwise."""
    if d.op is not Op.DOT_GENERAL or d in outputs or not d.dtype.is_float:
        return None
    if math.prod(d.inputs[0].shape[i] for i in d.attrs["lhs_contract"]) > max_k:
        return None
    reach = _elementwise_reach(d, users) | {d}
    if reach & outputs:
        return None
    return reach, {u for x in reach for u in users.get(x, ()) if u not in reach}
