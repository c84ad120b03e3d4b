"""When a partial sum stays pending: sums commute with linear maps, so a value that is a sum
over some mesh axes (a row-parallel matmul's result, a gradient contracted over a split dim)
can go on through the ops linear in it and be reduced once, later, where that moves fewer
bytes: into a sum pending anyway (dx of q, k and v; a weight gradient reduced over dp), past
several users that all pass it on (rotary's and repeat_kv's backward read dK and dV twice, a
norm's backward reads dy three times). The lowerer (lower.py) asks `plan_partial_linear` at
each op; the rest looks a few ops ahead on the global graph, where a value not lowered yet
stands in with its propagated sharding."""
from __future__ import annotations

import math

from ..analysis.cost import wire_bytes
from ..ir import Node
from .factors import merge, project, representable, unproject
from .mesh import Sharding, local_shape
from .rules import FactorRule


class PendingSums:
    """Mixed into the Lowerer: uses its graph, mesh, users, rules, shardings and `local`."""

    def plan_partial_linear(self, n: Node, rule: FactorRule):
        """Sums commute with linear maps: an op linear in its pending-partial operands keeps the
        sum pending (a tied embedding's two gradients, MoE's dispatch of partially gathered
        tokens), so one collective serves where each operand would have needed its own."""
        nats = [self.local[x][1] for x in n.inputs]
        pend = [i for i, s in enumerate(nats) if s.partial]
        if not pend:
            return None
        # sums pending over different axes add up pending over all of them: a sum that is whole
        # over some of those axes is kept on one device of each group there (zeros elsewhere)
        axes = tuple(a for a in self.mesh.axis_names if any(a in nats[i].partial for i in pend))
        joint = self._linear_in(n, pend)
        if joint is None or any(len(self.users[x]) > 1 and not self._worth_passing(x, axes)
                                for x in {n.inputs[i] for i in pend}):
            return None  # its other users need the sum: reduce it once, at the source
        if len(joint) > len(pend) and not self._all_pass(n, axes):
            return None
        pend = list(joint)  # (x + y with y pending and its sum going on: x joins it on one device of each group)
        if any(nats[i].partial and nats[i].partial_op != "sum"
               or set(axes) - set(nats[i].partial) & set(nats[i].used_axes) for i in pend):
            return None
        # the pending operands lead; the others may not split over the pending axes
        cands = [((0 if i in pend else 1, -x.nbytes, i), project(s, rule.operands[i], rule, self.mesh))
                 for i, (x, s) in enumerate(zip(n.inputs, nats))
                 if i in pend or not any(a in axes for a in s.used_axes)]
        fa = merge(cands, rule, self.mesh)
        fa = representable(fa.restrict({f for t in rule.operands for fs in t for f in fs}), rule, self.mesh)
        if any(a in axes for v in fa.values() for a in v):
            return None  # the other operands must be whole over the pending axes
        reqs = [Sharding(unproject(fa, dims, rule, self.mesh), axes if i in pend else ())
                for i, dims in enumerate(rule.operands)]
        if any(reqs[i].dims != nats[i].dims for i in pend):
            return None
        red = {f: k for f, k in rule.reduction.items() if fa.get(f)}
        if any(k != "sum" for k in red.values()):
            return None
        extra = tuple(a for a in self.mesh.axis_names if any(a in fa[f] for f in red))
        everything = tuple(a for a in self.mesh.axis_names if a in axes or a in extra)
        natural = Sharding(unproject(fa, rule.result, rule, self.mesh), everything)
        biggest = max(math.prod(local_shape(n.inputs[i].shape, nats[i], self.mesh)) for i in pend)
        if extra and set(axes) - set(extra) and not self._joins_sum(n):
            # the op's own reduction leaves its result pending over `extra`: adding the other
            # axes to it widens its group (more bytes on the wire, fewer in buffers), where
            # reducing the operands first may send less (an embedding table's gradient is
            # larger than the activations' gradient scattered into it)
            res, src = (math.prod(local_shape(n.shape, natural, self.mesh)) * n.dtype.itemsize,
                        biggest * n.dtype.itemsize)
            size = self.mesh.group_size
            keep = wire_bytes("all_reduce", res, size(everything))
            now = wire_bytes("all_reduce", src, size(axes)) + wire_bytes("all_reduce", res, size(extra))
            if keep > now:  # (a tie: one collective rather than two)
                return None
        if not extra and math.prod(local_shape(n.shape, natural, self.mesh)) > biggest and not self._joins_sum(n):
            return None  # the sum would grow: reducing it now is cheaper (unless the op's own
            # reduction leaves its result pending anyway: one reduction over every axis then,
            # or it is added to a pending sum of its size: one reduction there)
        return fa, reqs, natural, red

    def _linear_in(self, u: Node, pos) -> tuple[int, ...] | None:
        """The operand positions u is linear in together that include `pos` (itself if it is
        one), or None where u is not linear in them."""
        lin = self.rule(u).linear
        if tuple(sorted(pos)) in lin:
            return tuple(sorted(pos))
        return next((t for t in lin if set(pos) < set(t)), None)

    def _passes_sum(self, u: Node, x: Node, axes, depth: int = 2) -> bool:
        """Can a sum pending in x over `axes` go on through its user u: u linear in x, its other
        operands whole over those axes, and where u adds x to other values (jointly linear),
        those values pending too or u's users passing the sum on?"""
        pos = [i for i, y in enumerate(u.inputs) if y is x]
        joint = self._linear_in(u, pos)
        if joint is None:
            return False
        for i, y in enumerate(u.inputs):
            if i not in joint and set(axes) & set(self._sharding(y).used_axes):
                return False
        lifted = [u.inputs[i] for i in joint if i not in pos and not self._pending_axes(u.inputs[i])]
        return not lifted or (depth > 0 and self._all_pass(u, axes, depth - 1))

    def _worth_passing(self, x: Node, axes) -> bool:
        """A pending sum read by several users: follow it through every linear op it reaches
        (the region where it could stay pending) to where it would have to be reduced (a
        non-linear user, an output); pass it on when reducing it there sends fewer bytes than
        reducing it once here. Where a value is a pending sum anyway (reduced over its own
        split dims, or added to another pending sum), only the wider group costs (rotary's and
        repeat_kv's backward read dK and dV twice, both on to sums over other axes)."""
        key = (x, axes)
        if key not in self.passing:
            here = wire_bytes("all_reduce", self._local_bytes(x), self.mesh.group_size(axes))
            self.passing[key] = self._region_cost(x, axes) < here
        return self.passing[key]

    def _local_bytes(self, n: Node) -> int:
        return math.prod(local_shape(n.shape, self._sharding(n), self.mesh)) * n.dtype.itemsize

    def _region_cost(self, x: Node, axes, limit: int = 256) -> float:
        """Wire bytes of the reductions a sum pending in x over `axes` needs where it leaves the
        ops linear in it, beyond those made there anyway."""
        region, anyway, cost = {x}, {x: frozenset()}, 0
        todo, outputs, size = [x], set(self.g.outputs), self.mesh.group_size
        while todo:
            if len(region) > limit:
                return math.inf
            r = min(todo, key=self.order.__getitem__)  # (in program order: a node's operands first)
            todo.remove(r)
            leaves = r in outputs
            for u in self.users[r]:
                if u in region:
                    continue
                pos = [i for i, y in enumerate(u.inputs) if y in region]
                joint = self._linear_in(u, pos)
                if joint is None or any(i not in joint and set(axes) & set(self._sharding(y).used_axes)
                                        for i, y in enumerate(u.inputs)):
                    leaves = True  # u needs the sum reduced
                    continue
                region.add(u)
                todo.append(u)
                anyway[u] = frozenset().union(*(anyway[u.inputs[i]] for i in pos), self._reduces_split(u),
                                              *(self._pending_axes(u.inputs[i], region) for i in joint if i not in pos))
            if leaves:  # (a pending sum is whole over the axes it is pending on)
                a = anyway[r]
                nbytes = r.nbytes // self.mesh.group_size(tuple(
                    x for d in self._sharding(r).dims for x in d.axes if x not in a and x not in axes))
                cost += (wire_bytes("all_reduce", nbytes, size(tuple(set(axes) | a)))
                         - wire_bytes("all_reduce", nbytes, size(tuple(a))))
        return cost

    def _sharding(self, y: Node) -> Sharding:
        return self.local[y][1] if y in self.local else self.shardings[y]

    def _reduces_split(self, u: Node) -> frozenset:
        """The axes u reduces over where its operands split a dim it reduces (its result is a
        pending sum over them anyway)."""
        rule = self.rule(u)
        if not rule.reduction:
            return frozenset()
        return frozenset(a for i, y in enumerate(u.inputs)
                         for fa in [project(self._sharding(y), rule.operands[i], rule, self.mesh)]
                         for f in rule.reduction for a in (fa.get(f) or ()))

    def _pending_axes(self, y: Node, apart: set = frozenset(), depth: int = 6) -> frozenset:
        """The axes y is a pending sum over (lowered), or (not lowered yet) those it reduces
        over split dims and those of the values it is linear in; not through the values in
        `apart` (a sum's own region is not another sum)."""
        if y in apart:
            return frozenset()
        if y in self.local:
            return frozenset(self.local[y][1].partial)
        own = self._reduces_split(y)
        if depth == 0:
            return own
        for t in self.rule(y).linear:
            got = [self._pending_axes(y.inputs[i], apart, depth - 1) for i in t]
            if all(got):
                return own.union(*got)
        return own

    def _all_pass(self, n: Node, axes, depth: int = 1) -> bool:
        return n not in self.g.outputs and all(self._passes_sum(u, n, axes, depth) for u in self.users[n])

    def _joins_sum(self, n: Node, hops: int = 4) -> bool:
        """Does n reach, through single-use linear ops that do not grow it further, an addition
        with a pending sum of its size (so a sum grown in n is reduced once there anyway)?"""
        cur = n
        for _ in range(hops):
            users = self.users[cur]
            if len(users) != 1 or users[0].size > cur.size:
                return False
            u = users[0]
            pos = [i for i, y in enumerate(u.inputs) if y is cur]
            joint = self._linear_in(u, pos)
            if joint is None:
                return False
            if len(joint) > len(pos):
                return all(self._pending_axes(u.inputs[i]) for i in joint if i not in pos)
            cur = u
        return False
