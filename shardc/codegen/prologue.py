"""Dot operands: which ones a matmul recomputes per tile (views, a cast, a scale; a normalization
of rows) and which value it stores for them, as the fusion planner asks before it groups anything.

Each question is about the operand's inlinable upstream. In a training step that upstream can be
the whole residual stream (one chain of adds through every layer), so these walks stop as soon as
their answer is known, and what they need from the far end of the chain (how many reductions it
holds, whether it reads a recomputed dot) is kept per node: asking for every matmul of every layer
stays linear in depth. The answers are those of walking the whole upstream."""
from __future__ import annotations

import heapq
from typing import Callable

import numpy as np

from ..ir import Node, Op
from ..ir.ops import ELEMENTWISE, REDUCE
from .fused_recompute import is_recomputed

MAX_PROLOGUE_OPS = 2  # elementwise ops a dot operand may recompute per tile (a cast, a scale)
MAX_NORM_PROLOGUE_OPS = 16  # elementwise ops of a normalizing prologue (layer norm: ~10)
MAX_NORM_REDUCTIONS = 4
_COPIES = (Op.GATHER, Op.PAD, Op.CONCATENATE)


def through(n: Node, ops) -> Node:
    while n.op in ops:
        n = n.inputs[0]
    return n


def is_splat(n: Node) -> bool:
    """A scalar constant, possibly broadcast: free to recompute wherever it is used."""
    n = through(n, {Op.BROADCAST, Op.RESHAPE})
    return n.op is Op.CONSTANT and not isinstance(n.attrs["value"], np.ndarray)


class Operands:
    """The planner's questions about dot operands, for one graph. `forget()` when a node stops
    being inlinable (a recomputed dot that must be stored)."""

    def __init__(self, users: dict, order: dict, inlinable: Callable[[Node], bool]):
        self.users, self.order, self.inlinable = users, order, inlinable
        self._reductions: dict[Node, tuple | None] = {}  # node → reductions upstream (None: too many)
        self._recomputed: dict[Node, bool] = {}          # node → reads a recomputed dot upstream

    def forget(self):
        self._reductions.clear()
        self._recomputed.clear()

    def cheap(self, x: Node) -> bool:
        """A dot operand worth recomputing for every tile: views, casts and a scale or two; or
        elementwise ops and slices of one stored value (an activation of a matmul's result,
        rotary embeddings of q and k: storing it writes as many elements as its readers then
        read instead of the ones it is made of)."""
        if not self.inlinable(x):
            return True
        work, sources, copies = 0, set(), False
        for n in self._walk(x, lambda n: False):
            if n.op in REDUCE or n.op is Op.GATHER:
                return False
            copies |= n.op in _COPIES
            if n.op in ELEMENTWISE and n.op is not Op.CAST:
                work += 1
                if work > MAX_NORM_PROLOGUE_OPS:
                    return False
            sources.update(i for i in n.inputs if not self.inlinable(i))
        # elements a reader loads to recompute it: about as many as reading it stored (a bias or
        # γ vector beside one value of its size)
        return (not copies and work <= MAX_PROLOGUE_OPS) or \
            sum(min(i.size, x.size) for i in sources) <= 1.25 * x.size

    def reads_recomputed(self, x: Node) -> bool:
        """Whether `x` is computed from a recomputed dot without passing a reduction (whether
        fused_recompute.recomputed_operand_stats finds one)."""
        if is_recomputed(x):
            return True
        return x.op not in REDUCE and any(self.inlinable(i) and self._upstream(i, self._recomputed, _reads_recomputed)
                                          for i in x.inputs)

    def norm_source(self, x: Node) -> Node | None:
        """The value whose rows a dot operand normalizes, or None when `x` is not a normalization.

        `x` qualifies when it is elementwise ops (and views) of one value s and of row reductions
        of s (layer norm: (s - mean s)·rsqrt(var s + eps)·γ + β; RMSNorm: s·rsqrt(mean s² + eps)·γ),
        with a bounded amount of work: then s is stored and the operand recomputed per tile, its
        statistics once per row block. s is the latest value both the elementwise part and the
        reductions read (without passing a reduction) that depends on no reduction itself; casts
        and reshapes of it are recomputed: storing the value before an upcast moves fewer bytes."""
        if not self.inlinable(x):
            return None
        reds = self._upstream(x, self._reductions, _reductions)  # every reduction x is computed from
        if not reds:
            return None
        s = self._latest_common(x, reds)
        if s is None:
            return None
        while s.op in (Op.CAST, Op.RESHAPE) and s.inputs[0].size == s.size:
            s = s.inputs[0]
        work = 0
        for n in self._walk(x, lambda n: n is s):
            if n.op in _COPIES:
                return None
            if n.op in ELEMENTWISE and n.op is not Op.CAST:
                work += 1
                if work > MAX_NORM_PROLOGUE_OPS:
                    return None
        return s

    def _latest_common(self, x: Node, reds: tuple) -> Node | None:
        """The latest value of x's size (no splat) that x and some reduction's operand reach without
        passing a reduction, and that is computed from no reduction: both regions are walked from
        their latest node down, in program order, only as far as the answer."""
        order, inl = self.order, self.inlinable
        ox = order[x]
        after = set(reds)  # values computed from a reduction (inside x's upstream)
        stack = list(reds)
        while stack:
            for u in self.users.get(stack.pop(), ()):
                if u not in after and order[u] <= ox and inl(u):
                    after.add(u)
                    stack.append(u)
        starts = {r.inputs[0]: None for r in reds}
        under, under_heap = set(), [(-order[u], id(u), u) for u in starts]
        heapq.heapify(under_heap)
        seen_under = set(starts)
        outer_heap, seen_outer = [(-ox, id(x), x)], {x}
        while outer_heap:
            _, _, n = heapq.heappop(outer_heap)
            while under_heap and -under_heap[0][0] >= order[n]:
                _, _, u = heapq.heappop(under_heap)
                under.add(u)
                for i in u.inputs:
                    if i not in seen_under and inl(i) and i.op not in REDUCE:
                        seen_under.add(i)
                        heapq.heappush(under_heap, (-order[i], id(i), i))
            if n in under and n not in after and n.size == x.size and not is_splat(n):
                return n
            for i in n.inputs:
                if i not in seen_outer and inl(i) and i.op not in REDUCE:
                    seen_outer.add(i)
                    heapq.heappush(outer_heap, (-order[i], id(i), i))
        return None

    def _walk(self, x: Node, stop: Callable[[Node], bool]):
        """The nodes of fusion.tree(x, stop), lazily (a caller stops once it knows)."""
        seen, stack = set(), [x]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n is not x and (stop(n) or not self.inlinable(n)):
                continue
            yield n
            stack.extend(n.inputs)

    def _upstream(self, x: Node, memo: dict, combine):
        """combine(node, [values of its inlinable inputs]) over x's inlinable upstream, kept per
        node (an explicit stack: the chain may be deeper than Python's recursion)."""
        stack = [x]
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            ins = [i for i in n.inputs if self.inlinable(i)]
            todo = [i for i in ins if i not in memo]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            memo[n] = combine(n, [memo[i] for i in ins])
        return memo[x]


def _reductions(n: Node, inputs: list) -> tuple | None:
    """The reductions among n and what its inputs hold, None past MAX_NORM_REDUCTIONS."""
    acc = {n: None} if n.op in REDUCE else {}
    for r in inputs:
        if r is None:
            return None
        acc.update(dict.fromkeys(r))
    return tuple(acc) if len(acc) <= MAX_NORM_REDUCTIONS else None


def _reads_recomputed(n: Node, inputs: list) -> bool:
    return is_recomputed(n) or (n.op not in REDUCE and any(inputs))
