"""SPMD lowering: the global graph with a sharding per tensor → one per-device program with
local shapes and explicit collectives. For each op: choose its factor sharding (the cheapest of
favouring the result's own sharding, its operands' propagated ones, or where the operands already
are), reshard operands to match, and compute locally; the natural result (maybe a pending partial
sum) is resharded for each user on demand, once per sharding, or recomputed there when that is
cheaper. Cheap values are left where they fall: a move is paid only where a dot, reduction or
output needs it (often never: an FSDP layer's activations may stay feature-split). Greedy
choices that only pay off later are revisited in a few whole-program rounds (`lower`)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShardingError
from ..ir import DType, Graph, Node, Op, verify
from ..ir.emitter import Emitter
from ..ir.ops import COLLECTIVES
from .expert import lower_ragged_dot
from .routed_regions import find_regions
from .routing import routed_lowerings
from .factors import merge, project, representable, unkept, unproject
from .mesh import DimSharding, Mesh, Sharding, local_dim, local_shape
from .pending_sums import PendingSums
from .program import SpmdProgram
from .propagate import WEAK
from .reshard import Resharder, reshard_cost
from .rules import FactorRule, is_zero, rule_for

def _identity(kind: str, dtype: DType):
    if kind == "sum":
        return 0
    if dtype.is_float:
        return -math.inf if kind == "max" else math.inf
    info = np.iinfo(dtype.np)
    return int(info.min if kind == "max" else info.max)


class Lowerer(Resharder, PendingSums):
    def __init__(self, g: Graph, mesh: Mesh, shardings: dict[Node, Sharding], priorities: dict[Node, int],
                 hoist: dict[Node, Sharding] | None = None, pinned: frozenset = frozenset(),
                 memo: dict | None = None, regions: list | None = None):
        super().__init__(Emitter(g.name, mesh.axes), mesh)
        self.g = g
        self.shardings = shardings
        self.priorities = priorities  # how strongly each tensor holds its sharding (propagation's)
        self.hoist = hoist or {}      # node → the sharding to move it to as soon as it is made
        self.pinned = pinned          # values a spec constrains: made in their sharding, always
        self.users = g.users()
        # global node → (local value, its natural sharding): reshards happen on demand, once
        self.local: dict[Node, tuple[Node, Sharding]] = {}
        self.cache: dict[tuple[Node, Sharding], Node] = {}
        self.used_natural: set[Node] = set()             # read as computed by some user
        self.moved: set[tuple[Node, Sharding]] = set()   # resharded (not recomputed) for a user
        self.memo = {} if memo is None else memo  # pure answers, shared by the lowering rounds
        self.routed, self.skip = routed_lowerings(self, regions or [])  # expert parallelism (routing.py)
        self.move_costs: dict[tuple, int] = {}  # valid while the cache stays as it is
        self.rules: dict[Node, FactorRule] = {}
        self.order = {n: i for i, n in enumerate(g.nodes)}
        self.passing: dict[tuple, bool] = {}  # (pending value, axes) → pass its sum on? (_worth_passing)

    def rule(self, n: Node) -> FactorRule:
        if n not in self.rules:
            self.rules[n] = rule_for(n)
        return self.rules[n]

    def value(self, n: Node, want: Sharding, user: Node | None, why: str = "") -> Node:
        x, have = self.local[n]
        if have == want:
            self.used_natural.add(n)
            return x
        key = (n, want)
        if (want.partial and have.dims == want.dims and set(have.partial) < set(want.partial)
                and have.partial_op == want.partial_op == "sum"):  # a sum pending over more axes: free
            if key not in self.cache:
                extra = tuple(a for a in want.partial if a not in have.partial)
                first = self.b.binary(Op.EQ, self.group_rank(extra), 0)
                self.cache[key] = self.b.select(first, x, self.b.const(0, x.dtype))
            return self.cache[key]
        if key not in self.cache and self.rule(n).cheap and not want.partial:
            remade = self.remake(n, want, have)  # cheap values may be redone rather than moved
            if remade is not None:
                self.cache[key] = remade
                self.move_costs.clear()
        if key not in self.cache:
            name = n.name or n.op.value
            reason = f"{have} → {want}" + (f" for {user.op.value}" + (f" at {user.source}" if user.source else "") if user else why)
            if user is not None:
                reason += unkept(n, have, user, self.mesh)
            self.why = (name, n.source, reason)
            self.cache[key] = self.reshard(x, n.shape, have, want)
            self.moved.add(key)
            self.move_costs.clear()
        return self.cache[key]

    def hoistable(self) -> dict[Node, Sharding]:
        """Values some users read as computed and others gathered: moving them to the gathered
        sharding as soon as they are made lets the first users work on it too (a router on the
        gathered tokens instead of gathering its expert choices later), as XLA's propagation
        would have had it. The coarsest such sharding per value."""
        out: dict[Node, Sharding] = {}
        for n, want in self.moved:
            have = self.local[n][1]
            if (n not in self.used_natural or n in self.pinned or n.op is Op.PARAMETER
                    or have.partial or want.partial):
                continue
            if reshard_cost(n.shape, n.dtype.itemsize, want, have, self.mesh):
                continue  # the first users could not slice what they read out of it
            size = math.prod(local_shape(n.shape, want, self.mesh))
            if n not in out or size > math.prod(local_shape(n.shape, out[n], self.mesh)):
                out[n] = want
        # a pending sum that users read in several shardings: reduce it once, to the one the
        # others slice for free (all-reduce then slice, not a reduce-scatter and an all-reduce)
        wants: dict[Node, list[Sharding]] = {}
        for n, want in self.moved:
            if self.local[n][1].partial and not want.partial and n not in self.pinned:
                wants.setdefault(n, []).append(want)
        for n, ws in wants.items():
            for w in ws:
                if len(ws) > 1 and not any(reshard_cost(n.shape, n.dtype.itemsize, w, o, self.mesh) for o in ws):
                    out[n] = w
                    break
        return out

    def remake(self, n: Node, want: Sharding, have: Sharding) -> Node | None:
        """Compute a cheap value (elementwise, layout, broadcast, iota, splat) again directly in
        the sharding `want` when moving its operands costs less than moving it (a broadcast, an
        iota, a one-hot of indices: XLA's rematerialization of cheap ops)."""
        plan = self._remake_plan(n, want)
        if plan is None:
            return None
        rule, fa, reqs = plan
        if not rule.splits_result:
            moved = sum(self.move_cost(x, r) for x, r in zip(n.inputs, reqs))
            direct = reshard_cost(n.shape, n.dtype.itemsize, have, want, self.mesh)
            # a tie where the operands feed twins of n (q, k and v each view the same input):
            # move the operands once rather than each twin
            twins = any(u is not n and u.op is n.op and u.shape == n.shape and u.attrs == n.attrs
                        for x in n.inputs for u in self.users[x])
            if moved > direct or (moved == direct and not twins):
                return None
        args = [self.value(x, r, n) for x, r in zip(n.inputs, reqs)]
        with self.b.loc(n.source):
            return self.compute(n, args, reqs, want, rule, fa, {})

    def _remake_plan(self, n: Node, want: Sharding):
        """(rule, factor sharding, operand shardings) computing n directly in `want`, or None."""
        if n in self.routed or not self.rule(n).cheap or want.partial:  # (routing.py makes routed exits)
            return None
        key = ("remake", n, want)
        if key not in self.memo:
            self.memo[key] = self._find_remake_plan(n, want)
        return self.memo[key]

    def _find_remake_plan(self, n: Node, want: Sharding):
        rule = self.rule(n)
        fa = representable(project(want, rule.result, rule, self.mesh), rule, self.mesh)
        if Sharding(unproject(fa, rule.result, rule, self.mesh)) != want:
            return None
        return rule, fa, [Sharding(unproject(fa, dims, rule, self.mesh)) for dims in rule.operands]

    def move_cost(self, x: Node, want: Sharding, depth: int = 4) -> int:
        """Bytes it takes to have x in `want`: none if it is (or was made) so already, else the
        cheaper of resharding it and computing it again there (cheap ops, a few levels up)."""
        have = self.local[x][1]
        if have == want or (x, want) in self.cache:
            return 0
        key = (x, want, depth)
        if key not in self.move_costs:
            self.move_costs[key] = self._move_cost(x, have, want, depth)
        return self.move_costs[key]

    def _move_cost(self, x: Node, have: Sharding, want: Sharding, depth: int) -> int:
        direct = reshard_cost(x.shape, x.dtype.itemsize, have, want, self.mesh)
        plan = self._remake_plan(x, want) if depth > 0 else None
        if plan is None:
            return direct
        remade = sum(self.move_cost(y, r, depth - 1) for y, r in zip(x.inputs, plan[2]))
        return remade if plan[0].splits_result else min(direct, remade)  # as `remake` decides

    def lower_node(self, n: Node):
        b = self.b
        if n in self.skip:
            return
        if n in self.routed:  # routed to the experts' devices: exits only, the rest on demand
            if n in self.routed[n].reg.exits:
                self.local[n] = self.routed[n].exit(n)
            return
        with b.loc(n.source):
            if n.op is Op.PARAMETER:
                s = self.shardings[n]
                self.local[n] = (b.parameter(n.name, local_shape(n.shape, s, self.mesh), n.dtype), s)
                use = self.hoist.get(n)  # state stored split further than it is used (fsdp × tp)
                if use is not None and use != s:
                    self.local[n] = (self.value(n, use, None, ": gathered for use, as stored (plan 'fsdp')"), use)
                return
            if n.op is Op.AXIS_INDEX or n.op in COLLECTIVES:
                raise ShardingError(f"{n.describe()}: the graph is already partitioned (it has {n.op.value})")
            rule = self.rule(n)
            pending = plan = self.plan_partial_linear(n, rule)
            if pending is not None and any(self.move_cost(x, r) for x, r in zip(n.inputs, pending[1])
                                           if not self.local[x][1].partial):
                plan = None  # keeping the sum pending moves the other operands: weigh it against reducing now
            if plan is None:  # the cheapest of a few ways to place the op
                orders = [(True, True, "propagated"), (False, True, "propagated")]
                if any(self.priorities.get(x, 0) >= WEAK for x in n.inputs):
                    orders += [(True, False, "propagated"), (False, False, "propagated")]  # ZeRO state: bytes decide
                if rule.may_gather_operands:  # a lookup may gather its table rather than reduce its rows
                    orders.append((True, True, "none"))
                if rule.reduction:  # operands split alike on a contracted factor, one further (a
                    # weight gradient of sequence-split dy and batch-split x): contract over the
                    # coarser split, the other axes stay for the free factors
                    orders.append((False, True, "coarse"))
                # last, and winning ties: compute where the operands already are, so the
                # result's move is deferred to its users (maybe none needs it)
                orders.append((False, True, "as_they_are"))
                plans = [self.plan_op(n, rule, *order) for order in orders] + [pending] * (pending is not None)
                costs = [self.cost(n, *p[1:3]) for p in plans]
                plan = plans[min(range(len(plans)), key=lambda i: (costs[i], i != len(plans) - 1))]
            fa, reqs, natural, red = plan
            args = [self.value(x, r, n) for x, r in zip(n.inputs, reqs)]
            out = self.compute(n, args, reqs, natural, rule, fa, red)
            if out.shape != local_shape(n.shape, natural, self.mesh):
                raise ShardingError(f"{n.describe()}: local shape {out.shape} does not match {natural} "
                                    f"(a partitioner bug)")
            self.local[n] = (out, natural)
            settle = self.shardings[n] if n in self.pinned else self.hoist.get(n)
            if settle is not None and settle != natural:
                why = ": its spec" if n in self.pinned else ": moved once, where it is made"
                self.local[n] = (self.value(n, settle, None, why), settle)

    def plan_op(self, n: Node, rule: FactorRule, result_first: bool, by_priority: bool = True,
                operands: str = "propagated"):
        """The op's factor sharding, its operands' required shardings and its natural result,
        favouring either the result's own sharding or the operands' (strongest or dearest first).
        The operands speak with their `propagated` shardings, `as_they_are` (as computed), or
        not at all (`none`)."""
        want = self.shardings[n]
        sources = [] if operands in ("as_they_are", "coarse") else [((-1 if result_first else 999, 0, len(n.inputs)), want, None)]
        for i, x in enumerate(n.inputs):
            if operands == "none":
                break
            key = (self.priorities.get(x, 0) if by_priority else 0, -x.nbytes, i)
            have = self.shardings[x]
            if operands == "as_they_are":  # the dearest to move leads (a splat or iota costs nothing)
                have = self.local[x][1]
                key = (-self.move_cost(x, Sharding.replicated(x.rank)),) + key
            sources.append((key, have, i))
        extend = operands != "coarse"
        memo_key = ("plan", n, tuple(sources), extend)  # the same sources give the same plan (rounds repeat most)
        if memo_key not in self.memo:
            self.memo[memo_key] = self._place(n, rule, sources, extend)
        return self.memo[memo_key]

    def _place(self, n: Node, rule: FactorRule, sources, extend: bool = True):
        cands = [(key, project(s, rule.result if i is None else rule.operands[i], rule, self.mesh))
                 for key, s, i in sources]
        fa = merge(cands, rule, self.mesh, extend)
        if not rule.splits_result:  # a factor only the result has cannot be computed split
            fa = representable(fa.restrict({f for t in rule.operands for fs in t for f in fs}), rule, self.mesh)
        reqs = [Sharding(unproject(fa, dims, rule, self.mesh)) for dims in rule.operands]
        red = {f: k for f, k in rule.reduction.items() if fa.get(f)}
        partial = tuple(a for a in self.mesh.axis_names if any(a in fa[f] for f in red))
        natural = Sharding(unproject(fa, rule.result, rule, self.mesh), partial,
                           next(iter(red.values())) if red else "sum")
        return fa, reqs, natural, red

    def cost(self, n: Node, reqs: list[Sharding], natural: Sharding) -> int:
        """Bytes the op's reshards would move: operands to what it needs, its result to its own."""
        total = sum(self.move_cost(x, r) for x, r in zip(n.inputs, reqs))
        if natural.partial and self._summed_next(n):
            return total  # the sum rides along into a sum with another contribution, reduced once there
        scatter = self._feeds_scatter_add(n) if natural.partial else None
        if scatter is not None:  # reduced once, as the scatter's result: charge that here
            pending = Sharding(Sharding.replicated(scatter.rank).dims, natural.partial)
            return total + reshard_cost(scatter.shape, scatter.dtype.itemsize, pending,
                                        self.shardings[scatter], self.mesh)
        if self.rule(n).cheap and not natural.partial:
            return total  # a cheap value: its users may compute it again where they need it
        return total + reshard_cost(n.shape, n.dtype.itemsize, natural, self.shardings[n], self.mesh)

    def _summed_next(self, n: Node) -> bool:
        """Is n's only use a sum with another contribution (gradient accumulation), where pending
        sums can be added first and reduced together?"""
        users = self.users[n]
        while len(users) == 1 and users[0].op in (Op.RESHAPE, Op.TRANSPOSE):  # (torch views [b·s, d] as [b, s, d])
            n, users = users[0], self.users[users[0]]
        if len(users) != 1 or users[0].op not in (Op.ADD, Op.SUB):
            return False
        others = [x for x in users[0].inputs if x is not n]
        while len(others) == 1 and others[0].op in (Op.RESHAPE, Op.TRANSPOSE):
            others = [others[0].inputs[0]]
        return len(others) == 1 and others[0].op in (Op.DOT_GENERAL, Op.ADD, Op.SUB, Op.REDUCE_SUM)

    def _feeds_scatter_add(self, n: Node, hops: int = 4) -> Node | None:
        """The scatter-add whose updates n reaches through single-use linear ops that do not
        grow, if any (MoE dispatch: a masked local gather of tokens, scaled, scattered into
        expert slots)."""
        cur = n
        for _ in range(hops):
            users = self.users[cur]
            if len(users) != 1:
                return None
            u = users[0]
            pos = [i for i, x in enumerate(u.inputs) if x is cur]
            if len(pos) != 1:
                return None
            if u.op is Op.SCATTER and pos == [2] and is_zero(u.inputs[0]):
                return u
            if not (tuple(pos) in self.rule(u).linear and u.size <= cur.size):
                return None
            cur = u
        return None

    def _mask_reduced(self, x: Node, dims: list[list[int]], req: Sharding, shape, rule: FactorRule,
                      red: dict[int, str]) -> Node:
        for d, fs in enumerate(dims):
            for f in fs:
                if f in red:
                    x = self.mask(x, d, shape[d], req.dims[d], _identity(red[f], x.dtype))
        return x

    def compute(self, n: Node, args, reqs, natural: Sharding, rule, fa, red) -> Node:
        """n on this device's blocks: the same op on the local operands, their split reduction
        dims masked to the reduction's identity and a `shape` attr naming the local shape; the
        ops in _LOCAL_FORMS need index arithmetic of their own."""
        form = _LOCAL_FORMS.get(n.op)
        if form is not None:
            return form(self, n, args, reqs, natural, red)
        if red:
            args = [self._mask_reduced(a, dims, r, x.shape, rule, red)
                    for a, dims, r, x in zip(args, rule.operands, reqs, n.inputs)]
        attrs = dict(n.attrs)
        if "shape" in attrs:
            attrs["shape"] = local_shape(n.shape, natural, self.mesh)
        return self.b.add(n.op, args, name=n.name, **attrs)

    def _constant(self, n: Node, args, reqs, natural: Sharding, red) -> Node:
        b, value = self.b, n.attrs["value"]
        if isinstance(value, np.ndarray):  # whole array, then this device's block
            full = b.add(Op.CONSTANT, [], out_shape=n.shape, out_dtype=n.dtype, value=value)
            self.why = (n.name or "constant", n.source, "local block of a constant")
            return self.reshard(full, n.shape, Sharding.replicated(n.rank), natural)
        loc_shape = local_shape(n.shape, natural, self.mesh)
        return b.add(Op.CONSTANT, [], name=n.name, out_shape=loc_shape, out_dtype=n.dtype, value=value)

    def _iota(self, n: Node, args, reqs, natural: Sharding, red) -> Node:
        b, d = self.b, n.attrs["dimension"]
        loc_shape = local_shape(n.shape, natural, self.mesh)
        if not natural.dims[d].axes:
            return b.add(Op.IOTA, [], name=n.name, out_shape=loc_shape, out_dtype=n.dtype, dimension=d)
        g = b.cast(self.global_index(n.shape[d], natural.dims[d]), n.dtype)
        return b.add(Op.BROADCAST, [g], name=n.name, shape=loc_shape, dims=[d])

    def _pad(self, n: Node, args, reqs, natural: Sharding, red) -> Node:
        """A whole block of k: the same block of the local dim."""
        low, high = list(n.attrs["low"]), list(n.attrs["high"])
        for d, ds in enumerate(reqs[0].dims):
            if ds.axes:
                s, s_loc = n.inputs[0].shape[d], args[0].shape[d]
                low[d], high[d] = low[d] // s * s_loc, high[d] // s * s_loc
        return self.b.add(Op.PAD, args, name=n.name, **{**n.attrs, "low": low, "high": high})

    def _slice(self, n: Node, args, reqs, natural: Sharding, red) -> Node:
        return self.b.add(Op.SLICE, args, name=n.name, **self._local_slice_attrs(n, reqs[0], args[0]))

    def _local_slice_attrs(self, n: Node, req: Sharding, x: Node) -> dict:
        start, limit, stride = list(n.attrs["start"]), list(n.attrs["limit"]), list(n.attrs["stride"])
        for d, ds in enumerate(req.dims):
            if not ds.axes:
                continue
            k = limit[d] - start[d]
            size = n.inputs[0].shape[d]
            if ds.strided and k < size:  # one whole block of a fused dim: the same local block
                per = x.shape[d] // (size // k)
                blk = start[d] // k
                start[d], limit[d], stride[d] = blk * per, (blk + 1) * per, 1
            else:
                start[d], limit[d], stride[d] = 0, x.shape[d], 1
        return {"start": start, "limit": limit, "stride": stride}

    def _table_rows(self, n: Node, idx: Node, size: int, ds: DimSharding) -> tuple[Node, Node]:
        """For global row indices: where each row sits in this device's block of the table, and
        whether this device holds it at all."""
        b = self.b
        idx = b.cast(idx, DType.i32)
        n_dev = self.mesh.group_size(ds.axes)
        if ds.parts:
            return self._compound_rows(idx, size, ds)
        r = self.group_rank(ds.axes)
        if ds.outer > 1:
            inner = size // ds.outer
            per = inner // n_dev
            blk = b.floor_div(idx, inner)
            within = b.binary(Op.SUB, b.binary(Op.SUB, idx, b.binary(Op.MUL, blk, inner)),
                              b.binary(Op.MUL, r, b.const(per, DType.i32)))
            local = b.binary(Op.ADD, b.binary(Op.MUL, blk, per), within)
            ok = b.binary(Op.AND, b.binary(Op.GE, within, 0), b.binary(Op.LT, within, per))
            return local, ok
        per = local_dim(size, ds, self.mesh)
        local = b.binary(Op.SUB, idx, b.binary(Op.MUL, r, b.const(per, DType.i32)))
        ok = b.binary(Op.AND, b.binary(Op.GE, local, 0), b.binary(Op.LT, local, per))
        return local, ok

    def _compound_rows(self, idx: Node, size: int, ds: DimSharding) -> tuple[Node, Node]:
        """_table_rows for a compound layout: each factor of the row index in the block of it
        this device holds."""
        b, mesh = self.b, self.mesh
        locs = [-(-s // mesh.group_size(a)) for s, a in ds.parts]
        gstride, lstride = size, math.prod(locs)
        local, ok = None, None
        for (s, a), ls in zip(ds.parts, locs):
            gstride //= s
            lstride //= ls
            gi = b.binary(Op.REM, b.floor_div(idx, gstride), s) if gstride > 1 or s < size else idx
            if a:
                gi = b.binary(Op.SUB, gi, b.binary(Op.MUL, self.group_rank(a), b.const(ls, DType.i32)))
                inside = b.binary(Op.AND, b.binary(Op.GE, gi, 0), b.binary(Op.LT, gi, ls))
                ok = inside if ok is None else b.binary(Op.AND, ok, inside)
            term = b.binary(Op.MUL, gi, lstride)
            local = term if local is None else b.binary(Op.ADD, local, term)
        return local, ok

    def _gather(self, n: Node, args, reqs, natural: Sharding, red) -> Node:
        """Vocab-parallel lookup when the table dim is split: local rows only, zeros elsewhere."""
        b = self.b
        x, idx = args
        axis, bd = n.attrs["axis"], n.attrs.get("batch_dims", 0)
        ds = reqs[0].dims[axis]
        if not ds.axes:
            return b.add(Op.GATHER, [x, idx], name=n.name, axis=axis, batch_dims=bd)
        li, ok = self._table_rows(n, idx, n.inputs[0].shape[axis], ds)
        got = b.add(Op.GATHER, [x, b.binary(Op.MIN, b.binary(Op.MAX, li, 0), x.shape[axis] - 1)],
                    axis=axis, batch_dims=bd)
        dims = list(range(bd)) + [axis + i for i in range(idx.rank - bd)]
        ok = b.add(Op.BROADCAST, [ok], shape=got.shape, dims=dims)
        return b.add(Op.SELECT, [ok, got, b.const(0, got.dtype, got.shape)], name=n.name)

    def _scatter(self, n: Node, args, reqs, natural: Sharding, red) -> Node:
        """Each device applies the updates it holds to the rows it holds; with split updates the
        result is a partial sum, so only the first device of those axes contributes the operand."""
        b = self.b
        x, idx, upd = args
        axis, bd = n.attrs["axis"], n.attrs.get("batch_dims", 0)
        ds = reqs[0].dims[axis]
        if ds.axes:  # rows this device does not hold become -1: out of range, dropped
            li, ok = self._table_rows(n, idx, n.inputs[0].shape[axis], ds)
            idx = b.select(ok, li, b.const(-1, DType.i32))
        if red:
            rule = self.rule(n)
            upd = self._mask_reduced(upd, rule.operands[2], reqs[2], n.inputs[2].shape, rule, red)
        fresh = tuple(a for a in natural.partial if a not in reqs[0].partial)
        if fresh and not is_zero(n.inputs[0]):
            # over axes the operand is not itself pending on, only the first device adds it
            first = b.binary(Op.EQ, self.group_rank(fresh), 0)
            x = b.add(Op.SELECT, [b.add(Op.BROADCAST, [first], shape=x.shape, dims=[]), x,
                                  b.const(0, x.dtype, x.shape)])
        return b.add(Op.SCATTER, [x, idx, upd], name=n.name, axis=axis, batch_dims=bd)

    def run(self, output_shardings: list[Sharding]) -> tuple[Graph, list[Sharding]]:
        for n in self.g.nodes:
            self.lower_node(n)
        outs = []
        for o, want, name in zip(self.g.outputs, output_shardings, self.g.output_names):
            outs.append(self.value(o, want, None, f" for output {name!r}"))
        local = self.b.build(outs, self.g.output_names)
        return verify(local), output_shardings


# ops whose local form is more than the same op on the local blocks
_LOCAL_FORMS = {Op.CONSTANT: Lowerer._constant, Op.IOTA: Lowerer._iota, Op.PAD: Lowerer._pad,
                Op.SLICE: Lowerer._slice, Op.GATHER: Lowerer._gather, Op.SCATTER: Lowerer._scatter,
                Op.RAGGED_DOT: lower_ragged_dot}


def lower(g: Graph, mesh: Mesh, shardings: dict[Node, Sharding], origins: dict[Node, str],
          output_shardings: list[Sharding], priorities: dict[Node, int], pinned: frozenset = frozenset(),
          rounds: int = 3, gathered: dict[Node, Sharding] | None = None) -> SpmdProgram:
    """Greedy lowering, then up to `rounds` - 1 more in which the values that were gathered for
    some users move once where they are made; the program sending the fewest bytes wins.
    `gathered`: inputs stored as `shardings` says but used in this layout, moved once on entry."""
    best, hoist, memo = None, dict(gathered or {}), {}
    regions = find_regions(g, mesh, shardings)
    for _ in range(rounds):
        lw = Lowerer(g, mesh, shardings, priorities, hoist, pinned, memo, regions)
        local, outs = lw.run(output_shardings)
        score = (sum(c.wire_bytes for c in lw.ledger), sum(c.bytes for c in lw.ledger))
        if best is not None and score >= best[0]:
            break
        best = (score, lw, local, outs)
        more = {n: s for n, s in lw.hoistable().items() if n not in hoist}
        if not more:
            break
        hoist = {**hoist, **more}
    _, lw, local, outs = best
    prog = SpmdProgram(g, mesh, local, shardings, origins, [shardings[p] for p in g.inputs], outs, lw.ledger)
    prog.value_map = dict(lw.local)  # global node → (local node, its natural sharding): for debugging
    return prog
