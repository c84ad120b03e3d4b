"""The fusion planner: which IR nodes of the per-device program become one kernel. Target-neutral
(the Triton emitter uses it now; a Pallas emitter can reuse it): the target only answers whether a
proposed group can be emitted (`feasible`), raising `CannotFuse(node)` where it cannot.

The model is "materialize few values, inline the rest" (as tinygrad and Inductor do):
- a value is written to memory ("a root") when something outside a kernel needs it — a graph
  output, a collective's operand, a dot_general or scatter (always their own kernels), a dot
  operand too expensive to recompute per tile, or a reduction needed by several kernels;
- everything else (elementwise ops, layout ops, gathers, reductions) is recomputed inside each
  kernel that reads it, at the index that kernel needs: layout ops are index arithmetic, never copies;
- a dot_general absorbs the roots that read only its result (bias, activation, residual, cast:
  its epilogue); a softmax(scores)·V chain over a QKᵀ dot becomes one flash-attention group;
- a dot operand that normalizes the rows of a value (layer norm, RMSNorm: elementwise ops of the
  value and of its row reductions) is its prologue: the value is materialized, the row statistics
  and the normalized tile are recomputed inside the matmul, the normalized rows never stored;
- roots sharing a row domain merge into one kernel (residual add + layer norm; embedding + norm).
Each group records the nodes it covers and why it was fused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import Error
from ..ir import Graph, Node, Op
from ..ir.ops import COLLECTIVES, REDUCE
from . import fused_flash, fused_recompute, fused_siblings, fused_stats, fused_sums, fused_weights
from .inlining import INLINE_OPS, VIEW_OPS, inlinable, is_buffer_leaf, match_attention, tree  # noqa: F401 (re-exported)
from .prologue import Operands, is_splat
from .plan_order import topological

_DOT = Op.DOT_GENERAL


class CannotFuse(Exception):
    """Raised by an emitter: `node` cannot be computed inside the group being emitted."""

    def __init__(self, msg: str, node: Node | None = None):
        super().__init__(msg)
        self.node = node


# Launch-plan steps. Every step says once what it reads and writes (`.reads`, `.writes`: the
# materialized values, in order) and what it is (`.step`: "kernel" | "collective" | "view"); the
# planner, the scheduler and every engine use these instead of asking for the step's type.
@dataclass(eq=False)  # a group is itself: list searches compare identities, not every field
class FusionGroup:
    kind: str                # "pointwise" | "reduction" | "matmul" | "attention" | "scatter" | "grouped_matmul" | "weight_grad"
    roots: list[Node]        # the values it writes to memory
    nodes: list[Node]        # every IR node it computes, in program order
    inputs: list[Node]       # the materialized values it reads
    reason: str
    anchor: Node | None = None                     # the dot_general / scatter it is built around
    pattern: dict = field(default_factory=dict)    # attention: qk, pv, scores
    step = "kernel"          # (a kernel once emitted: codegen's KernelLaunch)

    @property
    def reads(self) -> list[Node]:
        return self.inputs

    @property
    def writes(self) -> list[Node]:
        return self.roots


@dataclass
class CollectiveStep:
    node: Node
    step = "collective"

    @property
    def reads(self) -> list[Node]:
        return list(dict.fromkeys(self.node.inputs))

    @property
    def writes(self) -> list[Node]:
        return [self.node]


@dataclass
class ViewStep:
    """A root that is a reshape of a materialized buffer: a view, no kernel."""
    node: Node
    source: Node
    step = "view"

    @property
    def reads(self) -> list[Node]:
        return [self.source]

    @property
    def writes(self) -> list[Node]:
        return [self.node]


# ------------------------------------------------------------------------------- planner
class Planner:
    def __init__(self, g: Graph, feasible: Callable[[FusionGroup], None],
                 epilogue_fits: Callable[[Node, Node], bool] | None = None):
        self.g = g
        self.feasible = feasible
        self.epilogue_fits = epilogue_fits
        self.order = {n: i for i, n in enumerate(g.nodes)}
        self.users = g.users()
        self.operands = Operands(self.users, self.order, inlinable)
        self.outputs = set(g.outputs)
        self.roots: set[Node] = set()
        self.no_epilogue: set[Node] = set()
        self.no_chain: set[Node] = set()   # dots whose epilogue takes no roots computed from its roots
        self._chained: dict[Node, set] = {}  # dot → the roots _absorb_chain added to its epilogue
        self.attention: dict[Node, dict] = {}
        self.answers: dict[str, tuple | None] = {}   # group IR text → None or (message, failing node's position)
        self.asked: dict[tuple, CannotFuse | None] = {}  # group (its nodes themselves) → answer
        self._trees: dict[Node, tuple[tuple, tuple]] = {}  # node → its tree stopping at roots
        self._constants: set[Node] | None = None  # (made on first use)
        self._row_groups: dict[Node, tuple] = {}  # row root → (its tree, its group) as last built
        self._answer_of: dict[int, tuple] = {}    # id(group) → (group, answer)
        self._signatures: dict[Node, str] = {}    # group_ir_text's per-node text
        self._tree_users: dict[Node, list[Node]] = {}  # node → the kept trees computing it
        self._guessed: set[Node] = set()   # roots stored because several groups read them
        self._unstored: set[Node] = set()  # guesses undone (never stored again for that reason)

    def plan(self) -> list:
        g = self.g
        for n in g.nodes:
            if n.op is Op.DOT_GENERAL:
                m = match_attention(n)
                if m and not any(u not in m["internal"] and u is not n for x in m["internal"]
                                 if not is_splat(x) for u in self.users[x]) \
                        and not (m["internal"] & set(g.outputs)):
                    self.attention[n] = m
        internal = set().union(*(m["internal"] for m in self.attention.values())) if self.attention else set()
        fused_recompute.mark_recomputed(g, self.users, internal)
        for n in g.nodes:
            if n.op in COLLECTIVES or (n.op is Op.SCATTER and not inlinable(n) and not is_splat(n.inputs[0])):
                for x in (n.inputs if n.op in COLLECTIVES else n.inputs[:1]):
                    self._materialize(x)  # (a scatter into a splat fills its output instead)
            if n.op in (Op.DOT_GENERAL, Op.SCATTER) and n not in internal and not inlinable(n):
                self._add_root(n)
            if n.op is Op.RAGGED_DOT:  # a grouped matmul reads its operands from memory
                self._add_root(n)
                for x in n.inputs:
                    self._materialize(x)
            if n.op is Op.DOT_GENERAL and n not in internal and n not in self.attention:
                for x in n.inputs:
                    if self.operands.reads_recomputed(x):  # rebuilt per tile: store its statistics
                        for r in fused_recompute.recomputed_operand_stats(x, inlinable, lambda n: False):
                            self._materialize(r)
                        continue
                    if self.operands.cheap(x):
                        continue
                    s = self.operands.norm_source(x)
                    self._materialize(x if s is None else s)
            if fused_sums.column_sum(n) and not self._summed_by_dot(n):
                self._materialize(n)
        for o in g.outputs:
            self._materialize(o)
        for _ in range(len(g.nodes)):
            groups = self._groups(internal)
            failures = self._failures(groups)
            if not failures:
                return self._merge(groups)
            for grp, e in failures:
                internal = self._fix(grp, e, internal)
                self._settle(grp)
        raise RuntimeError("fusion planner did not converge")

    def _summed_by_dot(self, n: Node) -> bool:
        """Whether column sum `n` sums a dot's left operand over that dot's contraction (a bias
        gradient beside its weight gradient: the matmul sums it in its K loop, fused_sums)."""
        x = n.inputs[0]
        return any(u.op is Op.DOT_GENERAL and u.inputs[0] is x and sorted(u.attrs["lhs_contract"]) == sorted(n.attrs["axes"])
                   for u in self.users[x])

    def _failures(self, groups: list) -> list[tuple[FusionGroup, CannotFuse]]:
        """The failing groups to fix this round, with their answers: every one that does not overlap
        a group taken before it (whose fix may change it), so rounds do not grow with the number of
        layers. Groups overlap where one computes a value the other computes or reads; reading the
        same stored value is no overlap (a fix only stores values a group computes), and neither is
        computing a value made of constants alone (every layer's causal mask, scalars): a fix that
        stores one of those is made alone."""
        out, computed, read = [], set(), set()
        for grp in groups:
            if not isinstance(grp, FusionGroup):
                continue
            e = self._probe(grp)
            if e is None:
                continue
            alone = e.node is not None and self._constant(e.node)
            nodes = {n for n in grp.nodes if not self._constant(n)}
            if out and (alone or not nodes.isdisjoint(computed) or not nodes.isdisjoint(read)
                        or not computed.isdisjoint(grp.inputs)):
                continue
            out.append((grp, e))
            if alone:
                break
            computed |= nodes
            read.update(grp.inputs)
        return out

    def _constant(self, n: Node) -> bool:
        """Whether `n` is computed inline from constants alone (iotas, scalars, the axis index)."""
        if self._constants is None:
            self._constants = set()
            for x in self.g.nodes:  # (in program order: inputs first)
                if inlinable(x) and all(i in self._constants for i in x.inputs):
                    self._constants.add(x)
        return n in self._constants

    def _fix(self, grp: FusionGroup, e: CannotFuse, internal: set) -> set:
        """Change the plan so that `grp` no longer fails with `e`; returns the attention-internal set."""
        n = e.node
        at_end = grp.kind == "matmul" and (n is grp.anchor or n in grp.roots or n is None)
        if at_end and self._chained.get(grp.anchor, set()) & set(grp.roots) and grp.anchor not in self.no_chain:
            self.no_chain.add(grp.anchor)  # (first the epilogue without the roots chained to it)
        elif at_end and grp.anchor not in self.no_epilogue:
            self.no_epilogue.add(grp.anchor)
        elif grp.kind == "attention" and grp.anchor in self.attention:
            self.attention.pop(grp.anchor)  # unfusable attention: plain kernels
            internal = set().union(*(m["internal"] for m in self.attention.values())) if self.attention else set()
            self._add_root(grp.pattern["qk"])
            self._add_root(grp.anchor)
        elif n is not None and inlinable(n) and n not in self.roots:
            self._materialize(n)
        else:  # nothing left to split: the target cannot emit this group (e.g. its blocks exceed VMEM)
            raise Error(f"codegen: {e}") from e
        return internal

    def _settle(self, grp: FusionGroup):
        """After a root was added to a row group (one root, no dot), rebuild that group alone and
        fix it until it passes: a group that fails at one value after another (a concatenation of
        every layer's gradients) needs one planner round, not one per value."""
        if grp.kind not in ("pointwise", "reduction") or len(grp.roots) != 1 or grp.anchor is not None:
            return
        r = grp.roots[0]
        for _ in range(len(grp.nodes)):
            nodes, leaves = self._tree(r)
            kind = "reduction" if any(n.op in REDUCE for n in nodes) else "pointwise"
            e = self._probe(self._group(kind, [r], nodes, leaves, ""))
            if e is None or e.node is None or not inlinable(e.node) or e.node in self.roots:
                return
            self._materialize(e.node)

    def _ask(self, grp: FusionGroup) -> None:
        """`feasible` through the kept answers (raises CannotFuse)."""
        e = self._probe(grp)
        if e is not None:
            raise e

    def _probe(self, grp: FusionGroup) -> CannotFuse | None:
        """The target's answer for `grp` (None: it can be one kernel), asked once per distinct
        computation: the answer is a function of the group's canonical IR text (what the kernel
        cache keys on), so the same group in every identical layer, and every round that leaves a
        group as it was, reuses it instead of emitting a trial kernel again."""
        kept = self._answer_of.get(id(grp))
        if kept is not None and kept[0] is grp:  # this group object, asked before
            return kept[1]
        same = (grp.kind, grp.anchor, tuple(grp.roots), tuple(grp.nodes), tuple(grp.inputs))
        if same in self.asked:  # the same group, built again by a later round
            e = self.asked[same]
        else:
            self.asked[same] = e = self._probe_text(grp)
        self._answer_of[id(grp)] = (grp, e)
        return e

    def _probe_text(self, grp: FusionGroup) -> CannotFuse | None:
        from .cache import group_ir_text
        text = group_ir_text(grp, self._signatures)
        if text in self.answers:
            ans = self.answers[text]
            if ans is None:
                return None
            msg, pos = ans
            return CannotFuse(msg, None if pos is None else canonical_nodes(grp)[pos])
        try:
            self.feasible(grp)
        except CannotFuse as e:
            canon = canonical_nodes(grp)
            pos = None if e.node is None else next((i for i, x in enumerate(canon) if x is e.node), -1)
            if pos != -1 and "?" not in text:  # a node outside the group's text: ask again next time
                self.answers[text] = (str(e), pos)
            return e
        if "?" not in text:
            self.answers[text] = None
        return None

    def _materialize(self, n: Node):
        if inlinable(n):
            if fused_recompute.is_recomputed(n):  # a recomputed dot that must be stored is a plain matmul
                fused_recompute.unmark(n)
                self.operands.forget()
            self._add_root(n)

    def _stop(self, n: Node) -> bool:
        return n in self.roots

    def _tree(self, n: Node) -> tuple[tuple, tuple]:
        """`tree(n)` stopping at roots (n itself is never stopped at), kept until a value it
        computes becomes a root: planner rounds rebuild only the groups a fix changed."""
        t = self._trees.get(n)
        if t is None:
            inner, leaves = tree(n, self._stop)
            self._trees[n] = t = (tuple(inner), tuple(leaves))
            for x in inner:
                self._tree_users.setdefault(x, []).append(n)
        return t

    def _add_root(self, n: Node):
        self._guessed.discard(n)  # (stored for a reason of its own: never un-stored)
        if n in self.roots:
            return
        self.roots.add(n)
        for k in self._tree_users.pop(n, ()):
            if k is not n:  # (a tree never stops at its own start)
                self._trees.pop(k, None)

    def _groups(self, internal: set) -> list:
        """One group per root (dots absorb their epilogue roots); reductions read by several
        groups become roots themselves first."""
        while True:
            readers: dict[Node, set] = {}
            for r in self.roots:
                for n in self._reach(r):
                    readers.setdefault(n, set()).add(r)
            shared = [n for n, rs in readers.items() if n.op in REDUCE and len(rs) > 1 and n not in self.roots
                      and n not in self._unstored
                      and any(n.inputs[0].shape[a] > 1 for a in n.attrs["axes"])]  # (over size-1 dims: free)
            if shared:
                for n in shared:
                    self._add_root(n)
                self._guessed.update(shared)
                continue
            # a value k groups recompute, each reading W elements per element, costs k·W; stored
            # once it costs 1 + k: store the latest such value (the end of a residual chain) first
            costly = [n for n, rs in readers.items() if len(rs) > 1 and n not in self.roots and n not in self._unstored
                      and self._load_weight(n) > 1 + 1 / len(rs) + 1e-9
                      and not fused_recompute.reads_recomputed(n, self._stop)]
            if costly:
                self._materialize(max(costly, key=self.order.get))
                self._guessed.add(max(costly, key=self.order.get))
            elif not self._unstore_guesses():
                break
        leaves_of = {r: set(self._root_leaves(r)) for r in self.roots}
        readers_of: dict[Node, list[Node]] = {}  # a value → the roots whose groups read it
        for r, leaves in leaves_of.items():
            for x in leaves:
                readers_of.setdefault(x, []).append(r)
        dots = sorted((r for r in self.roots if r.op is Op.DOT_GENERAL and r not in self.attention), key=self.order.get)
        absorbed: dict[Node, Node] = {}  # epilogue root → its dot
        for d in dots:
            if d in self.no_epilogue or d in self.outputs or any(not inlinable(u) for u in self.users[d]):
                continue
            readers_of_d = [r for r in readers_of.get(d, ()) if r is not d]
            # the target's quick answer first (Triton: a reader of another size, such as a
            # concatenation of every gradient, is never stored by the dot's kernel)
            if self.epilogue_fits and not all(self.epilogue_fits(d, r) for r in readers_of_d):
                continue
            if not readers_of_d or any(not inlinable(r) or r in absorbed for r in readers_of_d):
                continue
            if any(any(n.op in REDUCE for n in self._tree(r)[0]) for r in readers_of_d):
                continue
            # a reader that also reads a value computed from d's epilogue would wait on itself
            if any(self._depends(x, d) for r in readers_of_d for x in leaves_of[r] if x is not d):
                continue
            for r in readers_of_d:
                absorbed[r] = d
            if d not in self.no_chain:
                self._absorb_chain(d, readers_of_d, absorbed, readers_of, leaves_of)
        groups = []
        for d in dots:
            epi = sorted((r for r, dd in absorbed.items() if dd is d), key=self.order.get)
            nodes, leaves = [d], []
            for x in d.inputs:
                self._add_tree(x, nodes, leaves)
            prologue = nodes[1:]
            for r in epi:
                inner, lv = self._tree(r)
                nodes += inner
                leaves += [x for x in lv if x is not d]
            ops = sorted({n.op.value for r in epi for n in self._tree(r)[0] if n.op not in VIEW_OPS})
            why = f"dot_general with its epilogue ({', '.join(ops)})" if epi else "dot_general (no fusable epilogue)"
            if any(n.op in REDUCE for n in prologue):
                pro = sorted({n.op.value for n in prologue if n.op not in VIEW_OPS})
                why += f"; operand normalized in its prologue ({', '.join(pro)}): row statistics per row block"
            groups.append(self._group("matmul", epi or [d], nodes, leaves, why, d))
        for pv, m in self.attention.items():
            nodes, leaves = list(m["internal"]) + [pv], []
            inner, lv = tree(m["scores"], lambda n: n in self.roots or n is m["qk"])
            nodes += inner
            leaves += [x for x in lv if x is not m["qk"]]
            for x in (m["qk"].inputs[0], m["qk"].inputs[1], pv.inputs[1]):
                self._add_tree(x, nodes, leaves)
            groups.append(self._group("attention", [pv], nodes, leaves,
                                      "flash attention: QKᵀ, score ops, online softmax and ·V in one pass; "
                                      "scores stay on chip", pv, m))
        for s in sorted((r for r in self.roots if r.op is Op.SCATTER and not inlinable(r)), key=self.order.get):
            nodes, leaves = [s], []
            for x in s.inputs:
                self._add_tree(x, nodes, leaves)
            groups.append(self._group("scatter", [s], nodes, leaves, "scatter-add with its index and update math", s))
        for r in sorted((r for r in self.roots if r.op is Op.RAGGED_DOT), key=self.order.get):
            groups.append(FusionGroup("grouped_matmul", [r], [r], list(r.inputs),  # operand order: the kernel's
                                      "grouped matmul (ragged_dot): value-sized groups of rows, one matrix each", r))
        for r in sorted(self.roots, key=self.order.get):
            if not inlinable(r) or r in absorbed:
                continue
            view = self._view_source(r)
            if view is not None:
                groups.append(ViewStep(r, view))
                continue
            t = self._tree(r)
            kept = self._row_groups.get(r)
            if kept is None or kept[0] is not t:  # (the same object while its tree is kept)
                nodes, leaves = t
                kind = "reduction" if any(n.op in REDUCE for n in nodes) else "pointwise"
                why = f"{kind}: " + ", ".join(sorted({n.op.value for n in nodes if n.op not in VIEW_OPS}))
                kept = self._row_groups[r] = (t, self._group(kind, [r], nodes, leaves, why))
            groups.append(kept[1])
        return groups

    def _absorb_chain(self, d: Node, epilogue: list, absorbed: dict, readers_of: dict, leaves_of: dict):
        """Roots computed element for element from `d`'s epilogue roots and from values not
        computed from `d` join its epilogue too (Adam's parameter update from the moments its
        weight gradient's epilogue writes: m, v and the parameter in one body, the moments not
        read back)."""
        mine, todo = set(epilogue), list(epilogue)
        while todo:
            for q in readers_of.get(todo.pop(), ()):
                if (q in absorbed or q is d or not inlinable(q) or (self.epilogue_fits and not self.epilogue_fits(d, q))
                        or any(n.op in REDUCE for n in self._tree(q)[0])
                        or any(x is not d and x not in mine and self._depends(x, d) for x in leaves_of[q])):
                    continue
                absorbed[q] = d
                mine.add(q)
                todo.append(q)
                self._chained.setdefault(d, set()).add(q)

    def _unstore_guesses(self) -> bool:
        """Un-store one value stored above for its several readers (a shared reduction, a costly
        value) that roots stored after it made cheap: now read by one row group alone, or at most
        1 + 1/readers elements per element (a scaled copy of another stored value). Its readers
        compute it instead of one kernel writing it and the others reading it back. Each value is
        un-stored at most once (no back and forth); returns whether one was."""
        readers: dict[Node, list[Node]] = {}
        for q in self.roots:
            for x in self._root_leaves(q):
                readers.setdefault(x, []).append(q)
        for r in sorted(self._guessed & self.roots, key=self.order.get, reverse=True):
            rs = readers.get(r, [])
            if not rs or r in self.outputs or any(not inlinable(q) and q.op is not Op.SCATTER for q in rs):
                continue
            if (len(rs) == 1) if r.op in REDUCE else self._load_weight(r) <= 1 + 1 / len(rs) + 1e-9:
                self._guessed.discard(r)
                self._unstored.add(r)
                self.roots.discard(r)
                self._trees.clear()
                self._tree_users.clear()
                return True
        return False

    def _depends(self, x: Node, d: Node) -> bool:
        """Whether `x` is computed from `d`."""
        stack, seen = [x], set()
        while stack:
            n = stack.pop()
            if n is d:
                return True
            if n in seen or self.order[n] < self.order[d]:
                continue
            seen.add(n)
            stack.extend(n.inputs)
        return False

    def _load_weight(self, n: Node) -> float:
        """Elements read from memory per element of `n` when it is recomputed inline."""
        _, leaves = self._tree(n)
        return sum(min(x.size, n.size) for x in leaves) / max(n.size, 1)

    def _add_tree(self, x: Node, nodes: list, leaves: list):
        if x in self.roots or not inlinable(x):
            leaves.append(x)
        else:
            inner, lv = self._tree(x)
            nodes += inner
            leaves += lv

    def _reach(self, r: Node) -> list[Node]:
        """Inlinable non-root nodes group `r` computes (dots and scatters: their operands')."""
        if not inlinable(r):
            out = []
            for x in r.inputs:
                if x not in self.roots and inlinable(x):
                    out += self._tree(x)[0]
            return out
        return self._tree(r)[0]

    def _root_leaves(self, r: Node) -> list[Node]:
        """Materialized values group `r` reads."""
        if not inlinable(r):
            out = []
            for x in r.inputs:
                self._add_tree(x, [], out)
            return out
        return self._tree(r)[1]

    def _view_source(self, r: Node) -> Node | None:
        if r.op is not Op.RESHAPE:
            return None
        n = r.inputs[0]
        while True:
            if n in self.roots or is_buffer_leaf(n):
                return n
            if n.op is Op.RESHAPE:
                n = n.inputs[0]
                continue
            return None

    def _group(self, kind, roots, nodes, leaves, why, anchor=None, pattern=None) -> FusionGroup:
        uniq = {}
        for n in nodes:
            uniq.setdefault(n, None)
        ins = {}
        for x in leaves:
            if x not in uniq and (x.op is not Op.CONSTANT or is_buffer_leaf(x)):
                ins.setdefault(x, None)
        return FusionGroup(kind, list(roots), sorted(uniq, key=self.order.get),
                           sorted(ins, key=self.order.get), why, anchor, pattern or {})

    # ------------------------------------------------------------------------------ merging
    def _merge(self, groups: list) -> list:
        """Order steps by program position; merge row-compatible pointwise/reduction groups."""
        groups = fused_sums.into_rows(self._into_operands(groups), self.order, self._ask, CannotFuse, self._depends)
        groups = fused_sums.into_matmuls(groups, self.order, self._ask, CannotFuse, self._depends)
        groups = fused_sums.into_epilogues(groups, self.order, self._ask, CannotFuse, self._depends)
        groups = fused_siblings.merge(groups, self.order, self._ask, CannotFuse, self._depends,
                                      lambda n: n in self.outputs or any(u.op in COLLECTIVES for u in self.users[n]))
        # a residual sum whose statistics a prologue now computes goes into its operand loads too
        groups = self._into_operands(fused_stats.into_prologues(groups, self.order, self._ask, CannotFuse,
                                                                self._depends))
        # P·V with its softmax's statistics in its prologue: one flash pass that stores them
        groups = fused_flash.into_attention(groups, self._ask, CannotFuse)
        groups = fused_weights.merge(groups, self.order, self._ask, CannotFuse, self._depends)
        steps = []
        for grp in groups:  # (a weight kernel runs where its input gradient did)
            at = grp.pattern.get("dx_roots", grp.roots) if isinstance(grp, FusionGroup) else ()
            pos = max(self.order[r] for r in at) if isinstance(grp, FusionGroup) else self.order[grp.node]
            steps.append((pos, grp))
        for n in self.g.nodes:
            if n.op in COLLECTIVES:
                steps.append((self.order[n], CollectiveStep(n)))
        # Program position alone is no dependency order once a merged group stores a value early
        # (a matmul adding an epilogue's sums) that later readers take: the merging below needs one.
        steps = topological([s for _, s in sorted(steps, key=lambda t: t[0])])
        readers: dict[Node, int] = {}  # value → how many steps read it
        for st in steps:
            for x in st.reads:
                readers[x] = readers.get(x, 0) + 1
        merged: list = []
        for s in steps:
            if isinstance(s, FusionGroup) and s.kind in ("pointwise", "reduction"):
                near = set(range(max(0, len(merged) - 12), len(merged)))
                # the groups writing what s reads first (s then reads nothing back), nearest first
                feeds = lambda i: isinstance(merged[i], FusionGroup) and not set(merged[i].roots) & set(s.inputs)
                for i in sorted(near | self._far_rows(merged, s, near), key=lambda i: (feeds(i), -i)):
                    cand = merged[i]
                    if not (isinstance(cand, FusionGroup) and cand.kind in ("pointwise", "reduction")):
                        continue
                    related = set(cand.inputs) & set(s.inputs) or set(cand.roots) & set(s.inputs)
                    if not related:
                        continue
                    between = merged[i + 1:]
                    # a step between reads cand's values: s joins cand where it is, if s reads
                    # nothing those steps write (a norm backward's row sums beside its column sums)
                    early = any(set(cand.roots) & set(b.reads) for b in between)
                    if early and set(s.reads) & {w for b in between for w in b.writes}:
                        continue
                    m = self._combine(cand, s, readers)
                    if self._probe(m) is not None:
                        continue
                    for x in cand.reads + s.reads:
                        readers[x] -= 1
                    for x in m.reads:
                        readers[x] = readers.get(x, 0) + 1
                    merged[i:i + 1] = [m] if early else []
                    s = None if early else m
                    break
            if s is not None:
                merged.append(s)
        return merged

    def _far_rows(self, merged: list, s: FusionGroup, near: set) -> set:
        """Positions in `merged` beyond the neighbours of `s` of the row groups that write a value
        `s` reads or read a tensor (not a scalar) `s` reads, and store nothing a collective reads
        (moved later, they would delay it): an Adam update's m, v and parameter, which the
        optimizer computes a whole tree apart, are one body (read g, m, v, p; write m, v, p)."""
        wanted = set(s.inputs)
        return {i for i, c in enumerate(merged) if i not in near and isinstance(c, FusionGroup)
                and c.kind in ("pointwise", "reduction")
                and (wanted & set(c.roots) or any(x.size > 1 for x in wanted & set(c.inputs)))
                and not any(u.op in COLLECTIVES for r in c.roots for u in self.users[r])}

    def _into_operands(self, groups: list) -> list:
        """A pointwise value that a matmul's A operand is computed from, element for element (the
        residual sum under a norm prologue), is computed in that matmul's operand loads and stored
        by its first column of programs: its inputs are read there instead of the value being
        written by one kernel and read back by the next. The earliest such matmul that reads nothing
        computed from it takes it (not Llama's k/v projections, which read the statistics of the
        residual sum that the q projection computes in its prologue)."""
        groups = list(groups)
        readers: dict[Node, dict] = {}  # value → {id: step} of the steps reading it (kept as groups merge)
        for g in groups:
            for x in g.reads:
                readers.setdefault(x, {})[id(g)] = g
        for gp in [g for g in groups if isinstance(g, FusionGroup) and g.kind == "pointwise" and len(g.roots) == 1]:
            r = gp.roots[0]
            mats = [g for g in readers.get(r, {}).values() if isinstance(g, FusionGroup) and g.kind == "matmul"]
            for m in sorted(mats, key=lambda g: self.order[g.anchor]):
                lhs, rhs = m.anchor.inputs[0], m.anchor.inputs[1]
                if r.size != lhs.size or r is rhs:
                    continue
                rhs_leaves = []
                self._add_tree(rhs, [], rhs_leaves)
                if r in rhs_leaves or any(self._depends(x, r) for x in m.inputs if x is not r):
                    continue
                nodes = {n: None for n in m.nodes + gp.nodes}
                ins = [x for x in dict.fromkeys(m.inputs + gp.inputs) if x not in nodes]
                needed = (r in self.outputs or any(u.op in COLLECTIVES for u in self.users[r])
                          or any(g is not m and g is not gp for g in readers[r].values()))
                merged = FusionGroup("matmul", m.roots + [r] if needed else list(m.roots),
                                     sorted(nodes, key=self.order.get), sorted(ins, key=self.order.get),
                                     f"{m.reason}; computes {gp.reason.split(': ', 1)[-1]} in its operand loads"
                                     + (" and stores it" if needed else ""), m.anchor, m.pattern)
                if self._probe(merged) is not None:
                    continue
                groups[groups.index(m)] = merged
                groups.remove(gp)
                for old in (m, gp):
                    for x in old.reads:
                        readers[x].pop(id(old), None)
                for x in merged.reads:
                    readers.setdefault(x, {})[id(merged)] = merged
                break
        return groups

    def _combine(self, a: FusionGroup, b: FusionGroup, readers: dict | None = None) -> FusionGroup:
        """a and b as one group; a value of a that b alone reads (`readers`: steps reading each
        value) is computed inside, not stored (a dγ column sum beside its optimizer update)."""
        inner = {r for r in a.roots if readers and r in b.inputs and readers[r] == 1 and r not in self.outputs}
        roots = [r for r in a.roots if r not in inner] + [r for r in b.roots if r not in a.roots]
        nodes = {n: None for n in a.nodes + b.nodes}
        ins = [x for x in dict.fromkeys(a.inputs + b.inputs) if x not in nodes]
        kind = "reduction" if "reduction" in (a.kind, b.kind) else "pointwise"
        return FusionGroup(kind, roots, sorted(nodes, key=self.order.get), sorted(ins, key=self.order.get),
                           f"{a.reason}; merged with {b.reason} (same rows, shared inputs)")


def canonical_nodes(grp: FusionGroup) -> list[Node]:
    """The group's inputs then its other nodes: the order its canonical IR text names them in."""
    return list(dict.fromkeys([*grp.inputs, *grp.nodes]))


def plan_fusion(g: Graph, feasible: Callable[[FusionGroup], None],
                epilogue_fits: Callable[[Node, Node], bool] | None = None) -> list:
    """The per-device program as steps: FusionGroups, CollectiveSteps and ViewSteps, in order.
    `epilogue_fits(dot, root)`, when the target has it, says without emitting anything whether a
    value computed from a dot's result could be stored by the dot's kernel (False: never)."""
    return Planner(g, feasible, epilogue_fits).plan()
