"""Collective matmul (XLA's windowed einsum, PyTorch's async tensor parallelism): an all-gather
feeding matmuls, or a matmul feeding a reduce-scatter, becomes a loop of collective-permutes
around a ring of the group, each overlapped with a partial matmul of the block at hand.

    all-gather → matmul   Every device starts with its own block of the gathered dim; each step
                          multiplies the block it holds and passes it on around the ring
                          (unidirectional: k-1 rounds of one permute; bidirectional: blocks travel
                          both ways round the ring, ⌊k/2⌋ rounds of two permutes on the two
                          directions of its links). The partial results sit in arrival order; one
                          device-dependent gather puts the blocks back in global order.
    matmul → reduce-scatter  Each step multiplies the rows of the block that the accumulator now
                          travelling through this device is collecting, adds it, and passes the
                          accumulator on; after k-1 permutes each device holds its own block,
                          summed over the group (bidirectional: two accumulators, one per
                          direction, each collecting half of every block's rows).

The gathered (scattered) dim must be a free dim of the matmul's left operand (the sequence dim of
tensor + sequence parallelism), split evenly. "auto" rewrites where the cost model says the
loop is faster than the collective followed by the matmul (the scheduler then overlaps each
permute with the matmul of the step before it); "always" rewrites every match (tests)."""
from __future__ import annotations

import numpy as np

from ..ir import DType, Graph, Node, Op
from .passes_common import PassReport, make_node, relink, rewrite, users_of
from .program import CollectiveRecord, SpmdProgram, wire_bytes


def _lhs_out_dim(dot: Node, d: int) -> int | None:
    """Where lhs dim d lands in the dot's result (None: batch or contracted)."""
    lb, lc = tuple(dot.attrs.get("lhs_batch", ())), tuple(dot.attrs["lhs_contract"])
    if d in lb or d in lc:
        return None
    free = [x for x in range(dot.inputs[0].rank) if x not in lb + lc]
    return len(lb) + free.index(d)


class _Ring:
    """Index arithmetic for a ring over the group of `axes` (built into the rewritten program)."""

    def __init__(self, axes, mesh, made: list[Node]):
        self.axes, self.k, self.made, self.mesh_axes = tuple(axes), mesh.group_size(axes), made, dict(mesh.axes)
        r = None
        for a in axes:
            i = self.node(Op.AXIS_INDEX, [], axis=a)
            r = i if r is None else self.node(Op.ADD, [self.node(Op.MUL, [r, self.const(mesh.axes[a])]), i])
        self.rank = r

    def node(self, op, inputs, **attrs) -> Node:
        n = make_node(op, inputs, None, None, self.mesh_axes, **attrs)
        self.made.append(n)
        return n

    def const(self, v) -> Node:
        arr = np.asarray(v, dtype=np.int32)
        n = Node(Op.CONSTANT, (), {"value": np.ascontiguousarray(arr) if arr.ndim else int(arr)}, arr.shape, DType.i32)
        self.made.append(n)
        return n

    def permute(self, x: Node, shift: int, source) -> Node:
        pairs = tuple((i, (i + shift) % self.k) for i in range(self.k))
        n = make_node(Op.COLLECTIVE_PERMUTE, [x], source, None, self.mesh_axes, axes=self.axes, pairs=pairs,
                      ring=True)  # a ring step: priced as the hardware runs rings (Hardware.ring)
        self.made.append(n)
        return n

    def block_rows(self, offsets_of_block, m: int) -> Node:
        """i32 [k·m]: for each row of a dim cut in k blocks of m, the row of the entry that holds its
        block, where entry e holds block (rank + offsets[e]) mod k."""
        k = self.k
        table = np.zeros(k, np.int32)  # (block - rank) mod k -> entry
        for e, o in enumerate(offsets_of_block):
            table[o % k] = e
        b = np.repeat(np.arange(k), m)
        rel = self.node(Op.REM, [self.node(Op.ADD, [self.const(b + k), self.node(Op.BROADCAST, [
            self.node(Op.SUB, [self.const(0), self.rank])], shape=(k * m,), dims=())]), self.const(np.full(k * m, k))])
        entry = self.node(Op.GATHER, [self.const(table), rel], axis=0)
        return self.node(Op.ADD, [self.node(Op.MUL, [entry, self.const(np.full(k * m, m))]),
                                  self.const(np.tile(np.arange(m), k))])

    def block_index(self, block: Node, m: int, offset: int = 0, length: int | None = None) -> Node:
        """i32 [length]: rows offset.. of block `block` (a scalar node) of a dim cut in blocks of m."""
        length = m - offset if length is None else length
        start = self.node(Op.BROADCAST, [self.node(Op.MUL, [block, self.const(m)])], shape=(length,), dims=())
        return self.node(Op.ADD, [start, self.const(np.arange(offset, offset + length))])

    def shifted(self, s: int) -> Node:
        """(rank + s) mod k, a scalar."""
        return self.node(Op.REM, [self.node(Op.ADD, [self.rank, self.const(s % self.k + self.k)]), self.const(self.k)])


def _dot_like(dot: Node, lhs: Node, rhs: Node) -> Node:
    return make_node(Op.DOT_GENERAL, [lhs, rhs], dot.source, None, None, **dot.attrs)


def ring_blocks(ag: Node, new: dict, mesh, bidirectional: bool):
    """(nodes made, [(block held, its offset)], row index that puts entries in global order) for
    the ring that replaces all-gather `ag`: entry e holds block (rank + offset_e) mod k."""
    made: list[Node] = []
    ring = _Ring(ag.attrs["axes"], mesh, made)
    k, x = ring.k, new[ag.inputs[0]]
    entries = [(x, 0)]
    if bidirectional:
        right = left = x
        for s in range(1, k // 2 + 1):
            right = ring.permute(right, +1, ag.source)  # comes from rank - s
            entries.append((right, -s))
            if s < k - s:
                left = ring.permute(left, -1, ag.source)  # comes from rank + s
                entries.append((left, s))
    else:
        cur = x
        for s in range(1, k):
            cur = ring.permute(cur, +1, ag.source)
            entries.append((cur, -s))
    idx = ring.block_rows([o for _, o in entries], x.shape[ag.attrs["dim"]])
    return made, entries, idx


def gathered_dot(dot: Node, dim: int, entries, idx: Node, new: dict) -> list[Node]:
    """`dot` of the gathered value, as one partial dot per block held, put back in global order;
    the last node made is the result."""
    e = _lhs_out_dim(dot, dim)
    parts = [_dot_like(dot, blk, new[dot.inputs[1]]) for blk, _ in entries]
    cat = make_node(Op.CONCATENATE, parts, dot.source, None, None, axis=e)
    return parts + [cat, make_node(Op.GATHER, [cat, idx], dot.source, dot.name, None, axis=e)]


def matmul_scatter(rs: Node, dot: Node, new: dict, mesh, bidirectional: bool = False):
    """Nodes replacing `dot` → `rs`; the last is rs's value. One accumulator per direction travels
    the ring (bidirectional: the first half of each block's rows goes one way, the second half
    the other, each permute carrying half the bytes on its own direction of the links)."""
    made: list[Node] = []
    ring = _Ring(rs.attrs["axes"], mesh, made)
    k, e = ring.k, rs.attrs["dim"]
    lhs, rhs = new[dot.inputs[0]], new[dot.inputs[1]]
    d = next(x for x in range(lhs.rank) if _lhs_out_dim(dot, x) == e)
    m = lhs.shape[d] // k
    halves = [(+1, 0, m // 2), (-1, m // 2, m - m // 2)] if bidirectional and m > 1 else [(+1, 0, m)]
    accs = []
    for way, offset, length in halves:
        acc = None
        for s in range(k):  # step s collects block (rank ∓ (s + 1)) mod k; the last step this device's own
            rows = ring.block_index(ring.shifted(-way * (s + 1)), m, offset, length)
            part = _dot_like(dot, ring.node(Op.GATHER, [lhs, rows], axis=d), rhs)
            made.append(part)
            if acc is None:
                acc = part
            else:
                acc = make_node(Op.ADD, [ring.permute(acc, way, rs.source), part], rs.source, None, None)
                made.append(acc)
        accs.append(acc)
    if len(accs) == 2:
        accs.append(make_node(Op.CONCATENATE, accs[:2], rs.source, None, None, axis=e))
        made.append(accs[-1])
    return made, accs[-1]


def _loop_seconds(pricer, coll: Node, k: int, dots: list[Node], block_bytes: int, moved_bytes: int,
                  ways: int = 1) -> tuple[float, float]:
    """(modeled seconds of the ring loop, of the collective followed by the matmul(s)): k-1 steps,
    each `ways` permutes of 1/ways of `block_bytes` (one each way round: at once where the two ways
    are different links, a torus axis with wraparound; else one after the other) behind a 1/k
    matmul, plus `moved_bytes` of copies to cut or reorder blocks, plus launches."""
    from ..analysis.cost import LAUNCH_S
    mm = sum(pricer(d) for d in dots)
    x = Node(Op.PARAMETER, [], {}, (max(1, block_bytes // 2 // ways),), DType.bf16)
    halves = [Node(Op.COLLECTIVE_PERMUTE, [x], {"axes": coll.attrs["axes"], "pairs": ((0, shift % k),), "ring": True},
                   x.shape, x.dtype) for shift in (+1, -1)[:ways]]
    apart = ways == 2 and not set(pricer.links(halves[0])) & set(pricer.links(halves[1]))
    step = max(map(pricer, halves)) if apart else sum(map(pricer, halves))
    loop = mm / k + (k - 1) * max(mm / k, step) + moved_bytes / pricer.hw.hbm_bw + 2 * k * len(dots) * ways * LAUNCH_S
    return loop, pricer(coll) + mm + (1 + len(dots)) * LAUNCH_S


def _seconds_pay(pricer, coll: Node, k: int, dots: list[Node], block_bytes: int, moved_bytes: int) -> bool:
    """Does the (one-permute-a-step) ring loop beat the collective and the matmul(s) by 5%?"""
    loop, sequential = _loop_seconds(pricer, coll, k, dots, block_bytes, moved_bytes)
    return loop < 0.95 * sequential


def collective_matmul(prog: SpmdProgram, mode: str = "auto", bidirectional: bool = True) -> PassReport:
    """Rewrite the matches (mode "auto": where they pay on the cost model of `prog.hardware`;
    "always": all of them)."""
    from ..errors import ShardingError
    from ..analysis.analyze import op_pricer
    if mode not in ("auto", "always"):
        raise ShardingError(f"collective_matmul: mode {mode!r}; modes: auto, always")
    g: Graph = prog.local
    before = len(prog.collectives)
    users, outputs = users_of(g), set(g.outputs)
    pricer = op_pricer(prog.hardware or "h200", prog.mesh)
    gathers, scatters, two_way = {}, {}, {}
    for n in g.nodes:
        if n.op is Op.ALL_GATHER:
            dots = [u for u in users[n] if u.op is Op.DOT_GENERAL and u.inputs[0] is n and u.inputs[1] is not n
                    and _lhs_out_dim(u, n.attrs["dim"]) is not None]
            k = prog.mesh.group_size(n.attrs["axes"])
            if k > 1 and dots:
                moved = 2 * sum(d.nbytes for d in dots)  # partial results concatenated, then reordered
                if len(dots) < len(users[n]) or n in outputs:  # the others read the blocks put together
                    moved += 2 * n.nbytes
                if mode == "always" or _seconds_pay(pricer, n, k, dots, n.inputs[0].nbytes, moved):
                    gathers[n] = dots
        if n.op is Op.REDUCE_SCATTER and n.inputs[0].op is Op.DOT_GENERAL:
            dot, k = n.inputs[0], prog.mesh.group_size(n.attrs["axes"])
            lhs_dims = [x for x in range(dot.inputs[0].rank) if _lhs_out_dim(dot, x) == n.attrs["dim"]]
            if (k > 1 and users[dot] == [n] and dot not in outputs and lhs_dims
                    and dot.inputs[0].shape[lhs_dims[0]] % k == 0):
                uni, seq = _loop_seconds(pricer, n, k, [dot], n.nbytes, dot.inputs[0].nbytes)
                bi = _loop_seconds(pricer, n, k, [dot], n.nbytes, dot.inputs[0].nbytes, ways=2)[0]
                if mode == "always" or min(uni, bi if bidirectional else uni) < 0.95 * seq:
                    # both ways where asked and (auto) where the model prices it faster: the two
                    # half permutes of a step run at once only where they hold different links
                    scatters[n] = dot
                    two_way[n] = bidirectional and (mode == "always" or bi < uni)
    if not gathers and not scatters:
        return PassReport("collective_matmul", before, before, "no all-gather → matmul or matmul → reduce-scatter pays")
    replace_at, rings, permutes = {}, {}, {}
    for ag, dots in gathers.items():
        def at_ag(new, ag=ag):
            """The ring at the all-gather's place; its value (for readers other than the dots: the
            weight gradient's matmul contracts over the gathered dim) is the blocks put together
            (dropped when nothing reads it)."""
            made, entries, idx = rings[ag] = ring_blocks(ag, new, prog.mesh, bidirectional)
            permutes[ag] = [n for n in made if n.op is Op.COLLECTIVE_PERMUTE]
            d = ag.attrs["dim"]
            cat = make_node(Op.CONCATENATE, [b for b, _ in entries], ag.source, None, None, axis=d)
            whole = make_node(Op.GATHER, [cat, idx], ag.source, ag.name, None, axis=d)
            return made + [cat, whole], whole
        replace_at[ag] = at_ag
        for dot in dots:
            replace_at[dot] = lambda new, ag=ag, dot=dot: (lambda made: (made, made[-1]))(
                gathered_dot(dot, ag.attrs["dim"], rings[ag][1], rings[ag][2], new))
    for rs, dot in scatters.items():
        def at_rs(new, rs=rs, dot=dot):
            made, res = matmul_scatter(rs, dot, new, prog.mesh, two_way[rs])
            permutes[rs] = [n for n in made if n.op is Op.COLLECTIVE_PERMUTE]
            return made, res
        replace_at[rs] = at_rs
        replace_at[dot] = lambda new: ([], None)  # its only reader is the loop, which computes it
    prog.local, new = rewrite(g, replace_at)
    records = {}
    for rec in prog.collectives:
        if rec.node in permutes:
            records[rec.node] = [CollectiveRecord("collective_permute", rec.axes, p.nbytes,
                                                  wire_bytes("collective_permute", p.nbytes, 2), rec.tensor, rec.source,
                                                  f"{rec.reason}; collective matmul step {i + 1}", p)
                                 for i, p in enumerate(permutes[rec.node])]
    prog.collectives = relink(prog, new, records)
    kind = "bidirectional" if bidirectional else "unidirectional"
    rs_kind = f"{sum(two_way.values())} bidirectional"
    return PassReport("collective_matmul", before, len(prog.collectives),
                      f"{len(gathers)} all-gather → matmul ({kind}) and {len(scatters)} matmul → reduce-scatter ({rs_kind}) "
                      f"loops of collective-permutes")
