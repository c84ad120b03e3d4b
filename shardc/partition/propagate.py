"""Sharding propagation: bidirectional, to a fixed point, over factors. Seeds (user specs,
plans) are fixed; every other tensor takes what its ops' factors say: a stronger source (lower
priority number) overrides it, a compatible one only adds axes — so it ends.
Pass-through ops run before dots and reductions, as in Shardy."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Graph, Node, Op
from .factors import merge, project, unproject
from .mesh import DimSharding, Mesh, Sharding, extends_dim
from .rules import PASS_THROUGH, FactorRule, rule_for

USER, PLAN, WEAK, DEFAULT = 0, 10, 11, 99  # user specs take 0 + their P's priority


@dataclass
class TensorSharding:
    sharding: Sharding | None
    priority: int = DEFAULT
    fixed: bool = False
    origin: str = ""


def _extends(cur: Sharding, new: Sharding, shape, mesh: Mesh) -> bool:
    """Does `new` only add axes to `cur` (the same layout with more splits)?"""
    return all(extends_dim(c, n, size, mesh) or (n.axes == c.axes and n.parts and not c.strided)
               for c, n, size in zip(cur.dims, new.dims, shape))


def _by_bytes_that_would_move(cands: list, mesh: Mesh) -> list:
    """Sort keys (priority, -bytes, index) for the candidates: at a tie in priority the tensor
    whose blocks would move more bytes keeps its split. That is its size over the splits no
    other candidate disputes (an axis every candidate puts on the same factor, or only it
    uses): a batch-split activation that is larger only globally yields to a weight whose tp
    split it disputes, while splits both share do not count against either."""
    where: dict[str, set[int]] = {}
    for _, fa in cands:
        for f, axes in fa.items():
            for a in axes:
                where.setdefault(a, set()).add(f)
    disputed = {a for a, fs in where.items() if len(fs) > 1}
    return [((prio, -(nbytes // mesh.group_size([a for axes in fa.values() for a in axes if a not in disputed])), i), fa)
            for (prio, nbytes, i), fa in cands]


class Propagator:
    def __init__(self, g: Graph, mesh: Mesh, seeds: dict[Node, TensorSharding]):
        self.g, self.mesh = g, mesh
        self.state: dict[Node, TensorSharding] = {n: TensorSharding(None) for n in g.nodes}
        self.state.update(seeds)
        for p in g.inputs:
            if p not in seeds:
                self.state[p] = TensorSharding(Sharding.replicated(p.rank), DEFAULT, True,
                                               "input without a spec: replicated")
        self.rules: dict[Node, FactorRule] = {}

    def rule(self, n: Node) -> FactorRule:
        if n not in self.rules:
            self.rules[n] = rule_for(n)
        return self.rules[n]

    def step(self, n: Node) -> bool:
        rule = self.rule(n)
        tensors = list(n.inputs) + [n]
        cands = []
        for i, (t, dims) in enumerate(zip(tensors, rule.tensors())):
            st = self.state[t]
            if st.sharding is None or st.sharding.is_replicated:
                continue
            fa = project(st.sharding, dims, rule, self.mesh)
            if fa:
                cands.append(((st.priority, t.nbytes, i), fa))
        if not cands:
            return False
        cands = _by_bytes_that_would_move(cands, self.mesh)
        fa = merge(cands, rule, self.mesh)
        # what the values (not the inputs, whose block layout is shardc's choice) ask for
        inputs = {i for i, t in enumerate(tensors) if t.op is Op.PARAMETER and self.state[t].fixed}
        values = [c for c in cands if c[0][2] not in inputs]
        asked = merge(values, rule, self.mesh) if inputs and values and len(values) < len(cands) else None
        changed = False
        for t, dims in zip(tensors, rule.tensors()):
            st = self.state[t]
            new = Sharding(unproject(fa, dims, rule, self.mesh))
            if st.fixed:
                changed |= self._adopt_block_layout(t, new)
                if asked is not None and t.op is Op.PARAMETER:
                    changed |= self._adopt_block_layout(t, Sharding(unproject(asked, dims, rule, self.mesh)))
                continue
            if new.is_replicated:
                continue  # no information for this tensor: leave it open
            # as strong as the weakest source of the axes it now carries
            prio = max(fa.priority[f] for fs in dims for f in fs if f in fa)
            cur = st.sharding
            if cur == new and st.priority <= prio:
                continue
            if cur is None or prio < st.priority:
                self.state[t] = TensorSharding(new, prio, False, f"propagated through {n.describe()}")
                changed = True
            elif _extends(cur, new, t.shape, self.mesh):  # compatible: gains axes at any priority, keeps the strongest
                self.state[t] = TensorSharding(new, min(prio, st.priority), False,
                                               f"propagated through {n.describe()}")
                changed = True
        return changed

    def _adopt_block_layout(self, t: Node, new: Sharding) -> bool:
        """A spec fixes which axes split which dims; how a split dim is cut into blocks stays
        shardc's choice, so a fixed tensor takes the whole-block layout its ops ask for."""
        st = self.state[t]
        dims = tuple(n if (n.axes == c.axes and ((n.outer > 1 and not c.strided) or (n.parts and not c.parts))) else c
                     for c, n in zip(st.sharding.dims, new.dims))
        if dims == st.sharding.dims:
            return False
        self.state[t] = TensorSharding(Sharding(dims, st.sharding.partial), st.priority, True,
                                       st.origin + " (split per fused block)")
        return True

    def run(self, max_rounds: int = 100) -> dict[Node, TensorSharding]:
        nodes = [n for n in self.g.nodes if n.op is not Op.PARAMETER]
        for _ in range(max_rounds):
            changed = False
            for allowed in (PASS_THROUGH, None):
                for order in (nodes, nodes[::-1]):
                    for n in order:
                        if allowed is None or n.op in allowed:
                            changed |= self.step(n)
            if not changed:
                break
        for n, st in self.state.items():
            if st.sharding is None:
                self.state[n] = TensorSharding(Sharding.replicated(n.rank), DEFAULT, False,
                                               "nothing constrains it: replicated")
        return self.state


def propagate(g: Graph, mesh: Mesh, seeds: dict[Node, TensorSharding]) -> dict[Node, TensorSharding]:
    return Propagator(g, mesh, seeds).run()


def block_layouts(g: Graph, mesh: Mesh, seeds: dict[Node, TensorSharding]) -> None:
    """How a split input dim is laid out is shardc's choice (it splits the global arrays). When
    the program cuts that dim into k whole blocks (a fused QKV weight sliced into q, k, v), split
    each block rather than the whole dim, so every device keeps whole heads: no communication."""
    users = g.users()
    cut = {}
    for p in g.inputs:
        st = seeds.get(p)
        if st is None:
            continue
        dims = list(st.sharding.dims)
        for d, ds in enumerate(dims):
            if not ds.axes or ds.parts:
                continue
            k = ds.outer if ds.outer > 1 else _blocks_downstream(p, d, users)  # (a Strided spec says k)
            n = mesh.group_size(ds.axes)
            if ds.outer == 1 and k > 1 and p.shape[d] % (k * n) == 0:
                dims[d] = type(ds)(ds.axes, k)
            heads = _padded_heads(p, d, k, ds, users, mesh) if st.priority < WEAK else None
            if heads is not None:  # (not for state a plan splits only to store it: gathered whole)
                dims[d] = heads
        if tuple(dims) != st.sharding.dims:
            seeds[p] = TensorSharding(Sharding(tuple(dims), st.sharding.partial), st.priority, st.fixed,
                                      st.origin + " (split per fused block)")
            cut[(st.origin, p.shape, st.sharding)] = seeds[p]
    for p in g.inputs:  # one spec, one layout: what its glob also names (Adam's m and v of a
        st = seeds.get(p)  # fused weight, which nothing slices) is cut into the same blocks
        if st is not None and (new := cut.get((st.origin, p.shape, st.sharding))) is not None:
            seeds[p] = TensorSharding(new.sharding, st.priority, st.fixed, new.origin)


def _blocks_downstream(t: Node, d: int, users, depth: int = 12) -> int:
    """Follow dim d of t through ops that keep it whole until an op views it as (k, rest) with
    k whole blocks; return k (1 if no such op)."""
    if depth == 0:
        return 1
    for u in users.get(t, ()):
        rule = rule_for(u)
        for i, x in enumerate(u.inputs):
            if x is not t:
                continue
            real = [f for f in rule.operands[i][d] if rule.sizes[f] > 1]
            if len(real) == 2 and real[0] in rule.replicated and real[1] not in rule.replicated:
                return rule.sizes[real[0]]
            if len(real) != 1:
                continue
            for e, fs in enumerate(rule.result):
                if [f for f in fs if rule.sizes[f] > 1] == real:
                    k = _blocks_downstream(u, e, users, depth - 1)
                    if k > 1:
                        return k
    return 1


def _padded_heads(p: Node, d: int, k: int, ds: DimSharding, users, mesh: Mesh) -> DimSharding | None:
    """Heads that do not divide over the devices (12 heads over 8): when the program views the
    split dim (after its k fused blocks) as [heads, head_dim] and a plain split would cut heads
    apart, split the head factor padded to a multiple instead (two head slots per device, the
    last ones masked), so each device keeps whole heads."""
    fac = _factors_downstream(p, d, users)
    n = mesh.group_size(ds.axes)
    if not fac or len(fac) < 2:
        return None
    lead = 1
    while fac and lead < k:  # the fused blocks stay whole
        lead *= fac.pop(0)
    if lead != k or len(fac) < 2:
        return None
    heads, rest = fac[0], math.prod(fac[1:])
    if heads % n == 0 or heads < n:
        return None  # divides (the plain split keeps whole heads), or fewer heads than devices
    return DimSharding.compound([(k, ()), *_head_parts(heads, ds.axes, mesh), (rest, ())], mesh)


def _head_parts(heads: int, axes: tuple[str, ...], mesh: Mesh) -> list:
    """Heads over several axes: each leading axis takes a whole factor of the heads while it
    divides them, the last axes split the rest, padded. Over GQA's sub-axes (12 query heads over
    tp_0 4 × tp_1 2) that is the KV head over tp_0 and its 3 query heads padded over tp_1, the
    same grouping as the repeated KV heads, so attention needs no collective."""
    parts, i = [], 0
    while i < len(axes) - 1 and heads % mesh.axes[axes[i]] == 0:
        parts.append((mesh.axes[axes[i]], (axes[i],)))
        heads //= mesh.axes[axes[i]]
        i += 1
    return parts + [(heads, axes[i:])]


def _factors_downstream(t: Node, d: int, users, depth: int = 12) -> list[int] | None:
    """The sizes the program views dim d of t as (major first), following it through ops that
    keep it whole: [3, 12, 64] for a fused QKV dim sliced into q, k, v and viewed as heads."""
    if depth == 0:
        return None
    for u in users.get(t, ()):
        rule = rule_for(u)
        for i, x in enumerate(u.inputs):
            if x is not t:
                continue
            real = [f for f in rule.operands[i][d] if rule.sizes[f] > 1]
            if u.op is Op.DOT_GENERAL and any(f in fs for f in real for fs in rule.operands[1 - i]):
                continue  # a batch dim of a product (attention's heads) is matched against the other
                # operand's view from here on (GQA's repeated KV heads, regrouped in the backward), not t's
            whole = {f: e for e, fs in enumerate(rule.result)
                     for f in fs if [g for g in fs if rule.sizes[g] > 1] == [f]}
            if len(real) > 1:
                out = []
                for f in real:
                    sub = _factors_downstream(u, whole[f], users, depth - 1) if f in whole else None
                    out += sub or [rule.sizes[f]]
                return out
            if len(real) == 1 and real[0] in whole:
                sub = _factors_downstream(u, whole[real[0]], users, depth - 1)
                if sub:
                    return sub
    return None
