"""Expert parallelism: routed tokens travel to their experts (dropless, exact).

A mixture-of-experts layer as Hugging Face and MaxText write it sorts its token-slots by expert
(perm = argsort(expert ids)), runs grouped matmuls on the sorted rows (ragged_dot, the group
sizes counted from the ids) and puts the rows back (gather by argsort(perm)). Globally that sort
mixes every device's tokens; when a spec splits the experts dim of the grouped matmul's weights
over an axis, this module lowers the sorted region per device instead:

- token coordinates: each device keeps its own token-slots, in their order (the rows a
  `gather(x, perm)` entry reads, the rows a `gather(y, argsort(perm))` exit writes);
- dispatch: each slot's expert is its own id (routed_regions.routing_why_not proves that equals
  the global sort's grouping: ids never negative, group sizes their counts), so each device sorts
  its own slots by expert (a counting sort: the ids are small integers), tells each expert device
  how many slots it sends per expert (one all-to-all of E counts: the only routing metadata) and
  sends each its segment with one ragged_all_to_all over the experts axis, into a buffer sized
  for the worst case (every slot of the experts axis' group to one device); the receiver
  regroups the segments by expert;
- expert coordinates: the grouped matmuls run there on the device's own experts (group sizes:
  the counts received), with the ops between them (activation, gating);
- combine: the reverse regrouping, ragged_all_to_all back, and the device's own order.

Values convert lazily (each once, cached), and a row-wise op whose operands sit in different
coordinates runs in expert coordinates only when a grouped matmul needs its result. Reductions
over the rows (the group-size histogram, gradients of routing weights) reduce locally into a
pending sum over the token axes. Weight gradients (ragged_dot "contract" mode) are made on the
expert's device: split over the experts axis, pending sums over the other token axes.

A region is lowered this way only when everything reading its values is understood (else the
factor rules lower the graph as written: exact, with the tokens all-gathered)."""
from __future__ import annotations

from ..ir import DType, Node, Op
from ..ir.ops import ELEMENTWISE
from .mesh import DimSharding, Mesh, Sharding
from .routed_regions import Region, index_of, token_axes


TOK, EXP = "token", "expert"


def routed_lowerings(lw, regions: list[Region]) -> tuple[dict, set]:
    """node -> its region's RoutedLowering (region values and exits), and the nodes nothing needs
    any more (the global sorts, the global gathers) that the Lowerer skips."""
    routed = {}
    for reg in regions:
        tokens = token_axes(reg, lw.shardings)
        mesh = lw.mesh
        if tokens is None or reg.rows % mesh.group_size(tokens) or any(
                n.name in lw.g.output_names for n in reg.nodes) or any(n in reg.nodes for n in lw.g.outputs):
            continue
        rl = RoutedLowering(lw, reg, tokens)
        for n in reg.nodes | reg.exits:
            routed[n] = rl
    if not routed:
        return {}, set()
    needed, stack = set(), list(lw.g.outputs)
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        rl = routed.get(n)
        if rl is None:
            stack.extend(n.inputs)
            continue
        stack.append(rl.reg.key)
        if n.op in (Op.GATHER, Op.SCATTER) and n in rl.reg.nodes:
            stack.append(n.inputs[0] if n.op is Op.GATHER else n.inputs[2])
        elif n.op is Op.RAGGED_DOT and n.attrs["mode"] == "contract":
            stack += [n.inputs[0].inputs[0], n.inputs[1]]
        elif n.op is Op.GATHER or (n.op is Op.SCATTER and n in rl.reg.exits):
            stack.append(n.inputs[0] if n.op is Op.GATHER else n.inputs[2])
        else:
            for x in n.inputs:
                if x in rl.reg.nodes or x.op is not Op.BROADCAST:
                    stack.append(x)
                else:
                    stack.extend(x.inputs)
    return routed, {n for n in lw.g.nodes if n not in needed}


class RoutedLowering:
    """The per-device lowering of one region (see the module doc), driven by the Lowerer: `exit(n)`
    gives an exit's local value and natural sharding; region values are made on demand."""

    def __init__(self, lw, reg: Region, tokens: tuple[str, ...]):
        self.lw, self.reg, self.tokens = lw, reg, tokens
        mesh = lw.mesh
        self.n_exp, self.n_tok = mesh.group_size(reg.experts), mesh.group_size(tokens)
        self.E = reg.sizes.shape[0]
        self.E_l = self.E // self.n_exp
        self.S_l = reg.rows // self.n_tok
        self.R = self.n_exp * self.S_l  # the worst case: every slot of the experts group to one device
        self.vals: dict = {}           # (node, coords) -> (local node, Sharding over (rows, *dims))
        self._plan = None

    # ---- values ---------------------------------------------------------------------------
    def have(self, n: Node, coords: str) -> bool:
        while n in self.reg.alias:
            n = self.reg.alias[n]
        return (n, coords) in self.vals

    def value(self, n: Node, coords: str):
        if n in self.reg.alias:
            return self.value(self.reg.alias[n], coords)
        if (n, coords) not in self.vals:
            natural = self._natural(n)
            if (n, natural) not in self.vals:
                self.vals[(n, natural)] = self._compute(n, natural)
            if coords != natural:
                x, sh = self.vals[(n, natural)]
                self.vals[(n, coords)] = (self._convert(x, n, natural, coords), sh)
        return self.vals[(n, coords)]

    def _natural(self, n: Node) -> str:
        if n in self.reg.alias:
            return self._natural(self.reg.alias[n])
        if n.op is Op.RAGGED_DOT:
            return EXP
        if n.op in (Op.GATHER, Op.SCATTER) and index_of(n.inputs[1]) in (self.reg.perm, self.reg.inverse):
            return TOK
        ins = [x for x in n.inputs if x in self.reg.nodes]
        coords = {self._natural(x) for x in ins}
        if len(coords) == 1:
            return coords.pop()
        if all(self.have(x, EXP) for x in ins):
            return EXP
        if all(self.have(x, TOK) for x in ins):
            return TOK
        return EXP if self._feeds_grouped(n) else TOK

    def _feeds_grouped(self, n: Node, depth: int = 8) -> bool:
        """Does a grouped matmul (rows lhs, or a weight gradient) read n, through row-wise ops?"""
        for u in self.lw.users[n]:
            if u.op is Op.RAGGED_DOT or (u.op is Op.TRANSPOSE and u in self.lw.users and
                                          any(w.op is Op.RAGGED_DOT for w in self.lw.users[u])):
                return True
            if depth and u in self.reg.nodes and self._feeds_grouped(u, depth - 1):
                return True
        return False

    def _rows(self, coords: str) -> int:
        return self.S_l if coords == TOK else self.R

    def _fake(self, n: Node, coords: str) -> tuple[int, ...]:
        return (self._rows(coords),) + tuple(n.shape[1:])

    def _reshard(self, x: Node, n: Node, coords: str, have: Sharding, want: Sharding) -> Node:
        if have == want:
            return x
        self.lw.why = (n.name or n.op.value, n.source, f"{have} → {want} inside routed experts")
        return self.lw.reshard(x, self._fake(n, coords), have, want)

    def _compute(self, n: Node, coords: str):
        lw, b = self.lw, self.lw.b
        with b.loc(n.source):
            if n.op in (Op.GATHER, Op.SCATTER):  # an entry: the source's own token-slots
                src = n.inputs[0] if n.op is Op.GATHER else n.inputs[2]
                want = Sharding((DimSharding(self.tokens),) + tuple(DimSharding() for _ in src.shape[1:]))
                x = lw.value(src, want, n)
                return x, Sharding((DimSharding(),) + want.dims[1:])
            if n.op is Op.RAGGED_DOT:
                return self._grouped(n)
            return self._rowwise(n, coords)

    def _operand(self, x: Node, coords: str, like: Node):
        """A row-wise op's operand in `coords`: a region value, or a row-free one made locally."""
        if x in self.reg.nodes:
            return self.value(x, coords)
        return self._row_free(x, coords), Sharding.replicated(x.rank)

    def _row_free(self, x: Node, coords: str) -> Node:
        b, rows = self.lw.b, self._rows(coords)
        if x.rank == 0:
            return self.lw.value(x, Sharding.replicated(0), None, " (a scalar inside routed experts)")
        shape = (rows,) + tuple(x.shape[1:])
        if x.op is Op.CONSTANT:
            return b.add(Op.CONSTANT, [], out_shape=shape, out_dtype=x.dtype, value=x.attrs["value"])
        if x.op is Op.IOTA:
            return b.add(Op.IOTA, [], out_shape=shape, out_dtype=x.dtype, dimension=x.attrs["dimension"])
        if x.op is Op.BROADCAST:
            v = self.lw.value(x.inputs[0], Sharding.replicated(x.inputs[0].rank), None, " (broadcast inside routed experts)")
            return b.add(Op.BROADCAST, [v], shape=shape, dims=x.attrs["dims"])
        return b.add(x.op, [self._row_free(i, coords) for i in x.inputs], **x.attrs)

    def _rowwise(self, n: Node, coords: str):
        from .rules import rule_for
        b = self.lw.b
        ops = [self._operand(x, coords, n) for x in n.inputs]
        lead = next((sh for x, (_, sh) in zip(n.inputs, ops) if x in self.reg.nodes), ops[0][1])
        pending = [i for i, (_, sh) in enumerate(ops) if sh.partial]
        keep_partial = bool(pending) and tuple(pending) in rule_for(n).linear and \
            len({ops[i][1].partial for i in pending}) == 1
        args, shs = [], []
        for x, (v, sh) in zip(n.inputs, ops):
            want = sh if keep_partial or not sh.partial else sh.without_partial()
            if n.op in ELEMENTWISE and x.rank == n.rank:  # operands share the lead's dims
                want = Sharding(lead.without_partial().dims, want.partial)
            elif n.op is Op.RESHAPE and _unit_dims_map(x.shape, n.shape) is not None:
                pass  # only size-1 dims come or go: the split dims keep their split
            elif n.op is Op.CONCATENATE and _stacks_blocks(n, [o[1] for o in ops], self.lw.mesh):
                want = Sharding(ops[0][1].dims, want.partial)  # each operand's block, side by side
            elif n.op in (Op.RESHAPE, Op.CONCATENATE, Op.PAD) or (n.op in (Op.REDUCE_MAX, Op.REDUCE_MIN)):
                want = Sharding(Sharding.replicated(x.rank).dims, want.partial)  # layout changes: whole dims
            elif n.op is Op.SLICE:  # a split dim sliced: one whole block of a fused (strided) dim, or gathered
                want = Sharding(tuple(ds if not ds.axes or _block_slice(n, d, ds) or (n.attrs["start"][d], n.attrs["limit"][d],
                                                                                      n.attrs["stride"][d]) == (0, x.shape[d], 1)
                                      else DimSharding() for d, ds in enumerate(want.dims)), want.partial)
            v = self._reshard(v, x, coords, sh, want) if x.rank else v
            args.append(v)
            shs.append(want)
        partial = shs[pending[0]].partial if keep_partial else ()
        rows = self._rows(coords)
        attrs = dict(n.attrs)
        sh0 = shs[0]
        if n.op is Op.BROADCAST:
            dims = [DimSharding()] * n.rank
            for i, d in enumerate(attrs["dims"]):
                dims[d] = sh0.dims[i]
            attrs["shape"] = (rows,) + tuple(self._local(n, Sharding(tuple(dims)))[1:])
            out_sh = Sharding(tuple(dims), partial)
        elif n.op is Op.RESHAPE:
            where = _unit_dims_map(n.inputs[0].shape, n.shape)
            dims = tuple(DimSharding() if d is None else sh0.dims[d] for d in where) if where else \
                Sharding.replicated(n.rank).dims
            attrs["shape"] = (rows,) + tuple(self._local(n, Sharding(dims))[1:])
            out_sh = Sharding(dims, partial)
        elif n.op is Op.SLICE:
            attrs = self._slice_attrs(n, sh0, args[0], rows)
            out_sh = Sharding(tuple(DimSharding(ds.axes) if _block_slice(n, d, ds) else ds
                                    for d, ds in enumerate(sh0.dims)), partial)
        elif n.op is Op.TRANSPOSE:
            out_sh = Sharding(tuple(sh0.dims[p] for p in attrs["perm"]), partial)
        elif n.op is Op.CONCATENATE and sh0.dims[attrs["axis"]].axes:  # blocks side by side: the strided layout
            d = attrs["axis"]
            out_sh = Sharding(sh0.dims[:d] + (DimSharding(sh0.dims[d].axes, len(args)),) + sh0.dims[d + 1:], partial)
        elif n.op in (Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN):
            red = tuple(a for d in attrs["axes"] for a in sh0.dims[d].axes)
            out_sh = Sharding(tuple(ds for d, ds in enumerate(sh0.dims) if d not in attrs["axes"]), partial + red)
            for d in attrs["axes"]:
                args[0] = self.lw.mask(args[0], d, n.inputs[0].shape[d], sh0.dims[d], 0) if sh0.dims[d].axes else args[0]
        else:
            out_sh = Sharding(lead.without_partial().dims if n.op in ELEMENTWISE else sh0.dims, partial)
        return b.add(n.op, args, **attrs), out_sh

    def _local(self, n: Node, sh: Sharding) -> tuple[int, ...]:
        from .mesh import local_shape
        return local_shape(n.shape, sh, self.lw.mesh)

    def _slice_attrs(self, n: Node, sh: Sharding, x: Node, rows: int) -> dict:
        """The lowerer's local slice, with the routed rows (dim 0) taken whole: `rows` of them."""
        attrs = self.lw._local_slice_attrs(n, sh, x)
        attrs["start"][0], attrs["limit"][0], attrs["stride"][0] = 0, rows, 1
        return attrs

    # ---- grouped matmuls ------------------------------------------------------------------
    def _grouped(self, n: Node):
        lw, b = self.lw, self.lw.b
        lhs, lsh = self.value(n.inputs[0], EXP)
        w = n.inputs[1]
        wsh = lw.shardings[w]
        wsh = Sharding((DimSharding(self.reg.experts),) + wsh.dims[1:])
        if any(a in self.tokens and a not in self.reg.experts for a in wsh.used_axes):
            wsh = Sharding((wsh.dims[0], DimSharding(), DimSharding()))
        rhs = lw.value(w, wsh, n)
        want = Sharding((DimSharding(), wsh.dims[1]), () if set(lsh.partial) & set(wsh.used_axes) else lsh.partial)
        lhs = self._reshard(lhs, n.inputs[0], EXP, lsh, want)
        plan = self.plan()
        out = b.add(Op.RAGGED_DOT, [lhs, rhs, plan["tot"]], name=n.name)
        return out, Sharding((DimSharding(), wsh.dims[2]), want.partial + tuple(wsh.dims[1].axes))

    # ---- exits ----------------------------------------------------------------------------
    def exit(self, n: Node) -> tuple[Node, Sharding]:
        lw, b = self.lw, self.lw.b
        with b.loc(n.source):
            if n.op is Op.RAGGED_DOT:  # a weight gradient, on the experts' devices
                bt, csrc = n.inputs[0].inputs[0], n.inputs[1]
                x, xsh = self.value(bt, EXP)
                y, ysh = self.value(csrc, EXP)
                if xsh.partial and ysh.partial:
                    x, xsh = self._reshard(x, bt, EXP, xsh, xsh.without_partial()), xsh.without_partial()
                if set(xsh.dims[1].axes) & set(ysh.dims[1].axes):
                    nsh = Sharding((DimSharding(), DimSharding()), ysh.partial)
                    y, ysh = self._reshard(y, csrc, EXP, ysh, nsh), nsh
                out = b.add(Op.RAGGED_DOT, [b.transpose(x, [1, 0]), y, self.plan()["tot"]], name=n.name,
                            mode="contract")
                rest = tuple(a for a in self.tokens if a not in self.reg.experts)
                return out, Sharding((DimSharding(self.reg.experts), xsh.dims[1], ysh.dims[1]),
                                     _axes(lw.mesh, rest + xsh.partial + ysh.partial))
            if n.op is Op.REDUCE_SUM:  # a sum over the rows: local rows, pending over the token axes
                src = n.inputs[0]
                coords = TOK if self.have(src, TOK) or not self.have(src, EXP) else EXP
                x, sh = self.value(src, coords)
                axes = n.attrs["axes"]
                for d in axes:
                    if d and sh.dims[d].axes:
                        x = lw.mask(x, d, src.shape[d], sh.dims[d], 0)
                red = tuple(a for d in axes for a in sh.dims[d].axes)
                out = b.add(Op.REDUCE_SUM, [x], name=n.name, axes=axes)
                dims = tuple(ds for d, ds in enumerate(sh.dims) if d not in axes)
                return out, Sharding(dims, _axes(lw.mesh, self.tokens + sh.partial + red))
            src = n if n in self.reg.nodes else n.inputs[0] if n.op is Op.GATHER else n.inputs[2]
            x, sh = self.value(src, TOK)  # back to token-slots
            out = b.add(Op.RESHAPE, [x], name=n.name, shape=x.shape)
            return out, Sharding((DimSharding(self.tokens),) + sh.dims[1:], sh.partial)

    # ---- dispatch and combine ---------------------------------------------------------------
    def _convert(self, x: Node, n: Node, have: str, want: str) -> Node:
        p = self.plan()
        b = self.lw.b
        with b.loc(n.source):
            if want == EXP:
                sent = b.add(Op.GATHER, [x, p["order"]], axis=0)
                got = self._exchange(sent, p["send"], self.R, n, "dispatch to the experts' devices")
                return b.add(Op.GATHER, [got, p["p_of_q"]], axis=0)
            back = b.add(Op.GATHER, [x, p["q_of_p"]], axis=0)
            got = self._exchange(back, p["recv"], self.S_l, n, "combine: back to the tokens' devices")
            return b.add(Op.GATHER, [got, p["inv_order"]], axis=0)

    def _exchange(self, x: Node, sizes: Node, rows: int, n: Node, why: str) -> Node:
        from ..analysis.cost import wire_bytes
        from .program import CollectiveRecord
        lw = self.lw
        out = lw.b.add(Op.RAGGED_ALL_TO_ALL, [x, sizes], axes=self.reg.experts, rows=rows)
        nbytes = max(x.nbytes, out.nbytes)
        lw.ledger.append(CollectiveRecord("ragged_all_to_all", self.reg.experts, nbytes,
                                          wire_bytes("ragged_all_to_all", nbytes, self.n_exp),
                                          n.name or n.op.value, n.source,
                                          f"{why} (rows of {self.R} padded for any routing)", out))
        return out

    def plan(self) -> dict:
        """Where each of this device's token-slots goes, and how received rows regroup by expert."""
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    def _make_plan(self) -> dict:
        lw, b, reg = self.lw, self.lw.b, self.reg
        i32 = DType.i32
        S_l, E, E_l, P, R = self.S_l, self.E, self.E_l, self.n_exp, self.R
        lw.why = (reg.key.name or "expert ids", reg.key.source, "routing: this device's slots")
        key = b.cast(lw.value(reg.key, Sharding((DimSharding(self.tokens),)), None, " (routing: this device's slots)"), i32)
        # each slot's expert is its own id (routed_regions.routing_why_not proves it); E: none
        e = b.select(b.binary(Op.LT, key, b.const(E, i32, (S_l,))), key, b.const(E, i32, (S_l,)))
        hot = b.cast(b.binary(Op.EQ, b.add(Op.BROADCAST, [e], shape=(S_l, E + 1), dims=[0]),
                              b.iota((S_l, E + 1), 1, i32)), i32)                  # [S_l, E + 1]
        counts = b.reduce(Op.REDUCE_SUM, hot, 0)                                     # [E + 1]
        # counting sort by expert, stable: slots of lower experts, then earlier slots of the same
        before = b.binary(Op.SUB, _prefix_sum(b, hot), hot)                          # same expert, earlier
        start = b.add(Op.BROADCAST, [_exclusive(b, counts, 0)], shape=(S_l, E + 1), dims=[1])
        inv_order = b.reduce(Op.REDUCE_SUM, b.binary(Op.MUL, hot, b.binary(Op.ADD, start, before)), 1)
        order = b.add(Op.SCATTER, [b.const(0, i32, (S_l,)), inv_order, b.iota((S_l,), 0, i32)], axis=0)
        per_peer = b.reshape(b.slice(counts, 0, 0, E), (P, E_l))                     # [P, E_l]
        send = b.reduce(Op.REDUCE_SUM, per_peer, 1)                                  # [P]
        # the receivers learn their segments' sizes per expert: a tiny all-to-all of counts
        lw.why = (reg.key.name or "expert ids", reg.key.source, "routing: slots per expert, to each expert's device")
        mine = lw.collective(Op.ALL_TO_ALL, per_peer, reg.experts, split_dim=0, concat_dim=0)  # [P, E_l]
        recv = b.reduce(Op.REDUCE_SUM, mine, 1)
        tot = b.reduce(Op.REDUCE_SUM, mine, 0)
        src_start = b.binary(Op.ADD, b.add(Op.BROADCAST, [_exclusive(b, recv, 0)], shape=(P, E_l), dims=[0]),
                             _exclusive(b, mine, 1))
        dst_start = b.binary(Op.ADD, b.add(Op.BROADCAST, [_exclusive(b, tot, 0)], shape=(P, E_l), dims=[1]),
                             _exclusive(b, mine, 0))
        flat = lambda x: b.reshape(x, (P * E_l,))
        p_of_q = _remap(b, flat(dst_start), flat(src_start), flat(mine), R)
        q_of_p = _remap(b, flat(src_start), flat(dst_start), flat(mine), R)
        return {"order": order, "inv_order": inv_order, "send": send, "recv": recv, "tot": tot,
                "p_of_q": p_of_q, "q_of_p": q_of_p}


def _prefix_sum(b, x: Node) -> Node:
    """Inclusive sum along dim 0 in log2(n) shifted adds (Hillis-Steele): O(n log n), exact for ints."""
    n, shift = x.shape[0], 1
    while shift < n:
        moved = b.add(Op.PAD, [b.slice(x, 0, 0, n - shift)], low=[shift] + [0] * (x.rank - 1),
                      high=[0] * x.rank, value=0)
        x = b.binary(Op.ADD, x, moved)
        shift *= 2
    return x


def _unit_dims_map(src: tuple, dst: tuple) -> list | None:
    """For a reshape that only adds or drops size-1 dims (keeping dim 0): the source dim of each
    destination dim (None: a new size-1 dim), else None."""
    if not src or not dst or src[0] != dst[0] or [d for d in src if d != 1] != [d for d in dst if d != 1]:
        return None
    real = [i for i, d in enumerate(src) if d != 1]
    out, k = [], 0
    for d in dst:
        if d == 1:
            out.append(None)
        else:
            out.append(real[k])
            k += 1
    out[0] = 0
    return out


def _stacks_blocks(n: Node, shs: list, mesh: Mesh) -> bool:
    """Can concat n keep its operands split as they are (equal operands, split alike, evenly and
    in one block on the concat dim): the result in the strided layout of such blocks."""
    d, x0 = n.attrs["axis"], n.inputs[0]
    ds = shs[0].dims[d]
    return all(sh.dims == shs[0].dims for sh in shs) and all(x.shape == x0.shape for x in n.inputs) \
        and ds.outer == 1 and not ds.parts and x0.shape[d] % mesh.group_size(ds.axes) == 0


def _block_slice(n: Node, d: int, ds: DimSharding) -> bool:
    """Does slice n take one whole block of dim d, split in the strided layout of such blocks?"""
    start, limit, stride = n.attrs["start"][d], n.attrs["limit"][d], n.attrs["stride"][d]
    size, k = n.inputs[0].shape[d], limit - start
    return bool(ds.axes) and ds.outer > 1 and not ds.parts and stride == 1 and 0 < k < size \
        and size % k == 0 and start % k == 0 and ds.outer == size // k


def _exclusive(b, x: Node, axis: int) -> Node:
    return b.binary(Op.SUB, b.cast(b.cumsum(x, axis), DType.i32), x)


def _remap(b, start: Node, other: Node, count: Node, rows: int) -> Node:
    """For each position q < rows: other + (q - start) of the block [start, start + count) that
    holds q (0 where none does: padding, read by no group)."""
    nb = start.shape[0]
    q = b.iota((rows, nb), 0, DType.i32)
    st = b.add(Op.BROADCAST, [start], shape=(rows, nb), dims=[1])
    inside = b.binary(Op.AND, b.binary(Op.GE, q, st),
                      b.binary(Op.LT, q, b.binary(Op.ADD, st, b.add(Op.BROADCAST, [count], shape=(rows, nb), dims=[1]))))
    at = b.binary(Op.ADD, b.add(Op.BROADCAST, [other], shape=(rows, nb), dims=[1]), b.binary(Op.SUB, q, st))
    return b.reduce(Op.REDUCE_SUM, b.select(inside, at, b.const(0, DType.i32, (rows, nb))), 1)


def _axes(mesh: Mesh, axes) -> tuple[str, ...]:
    """Distinct axes in mesh order."""
    return tuple(a for a in mesh.axis_names if a in set(axes))
