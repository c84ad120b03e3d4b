"""Collective passes over the per-device program: each rewrites `prog.local` and the ledger, keeps
what the program computes (the simulator checks it), and says what it changed in `prog.passes`.

    cse             identical values (all-gathers of one value above all) merged (passes_cse.py)
    reduce_scatter  an all-reduce whose readers each keep one block becomes a reduce-scatter
                    (passes_scatter.py)
    local_scatter   a scatter-add into a constant whose readers each keep one block of rows (an
                    MoE dispatch buffer with its experts split) scatters into that block alone
                    (passes_local_scatter.py)
    sink            all-gathers moved across elementwise ops where that moves fewer bytes: ops on a
                    gathered value that each device then cuts back to its block run on the block
                    (FSDP's optimizer step), a narrowing cast runs before its all-gather
                    (passes_sink.py)
    combine         independent all-reduces of one kind (axes, dtype, reduction) merged into
                    buckets of at most `threshold` bytes, as XLA's all-reduce combiner and DDP's
                    gradient buckets: operands flattened and concatenated, one all-reduce, the
                    results sliced back out. A bucket is emitted where its last member was; what
                    reads an earlier member waits for it (a stable topological order keeps
                    everything else where it was). The threshold is the cost model's choice
                    (`choose_threshold`: smaller buckets where they overlap the backward).
    collective_matmul  all-gather → matmul and matmul → reduce-scatter as rings of permutes with
                    partial matmuls, where the cost model says it pays (passes_collective_matmul.py)
    chunk           a collective much longer than the compute between collectives split into pieces
                    along a dim it does not move, so the scheduler can slip others in between
                    (passes_chunk.py)
    schedule        the latency-hiding scheduler: collectives started where they overlap compute,
                    critical path first, under a per-device memory limit; top-down and bottom-up,
                    the shorter modeled order kept (passes_schedule.py)

Passes are named in PASSES; `partition(..., passes="default")` runs DEFAULT, `passes=()` none.
"""
from __future__ import annotations

import copy
import heapq

from .. import flags
from ..errors import ShardingError
from ..ir import Graph, Node, Op
from ..ir.graph import cyclic_gc_paused
from .passes_chunk import chunk_collectives
from .passes_collective_matmul import collective_matmul
from .passes_common import PassReport, make_node as _node
from .passes_cse import eliminate_common_collectives
from .passes_local_scatter import localize_scatters
from .passes_scatter import create_reduce_scatters
from .passes_schedule import schedule
from .passes_sink import sink_all_gathers
from .program import CollectiveRecord, SpmdProgram, wire_bytes

XLA_COMBINE_THRESHOLD = 30 * 2 ** 20  # bytes: XLA's default all-reduce combine threshold


def _ancestor_masks(nodes: list[Node], bit: dict[Node, int]) -> dict[Node, int]:
    """For every node, the set (a bit mask) of the all-reduces it depends on, itself included."""
    masks: dict[Node, int] = {}
    for n in nodes:
        m = bit.get(n, 0)
        for i in n.inputs:
            m |= masks[i]
        masks[n] = m
    return masks


def _buckets(g: Graph, threshold: int, group=None) -> list[list[Node]]:
    """Greedy in program order: an all-reduce joins the open bucket of its kind unless it depends
    on a member (combining would need its own result first) or the bucket would pass `threshold`.
    `group(node)` (optional) splits kinds further: a pipeline's stages never share a bucket."""
    colls = [n for n in g.nodes if n.op is Op.ALL_REDUCE]
    bit = {n: 1 << i for i, n in enumerate(colls)}
    masks = _ancestor_masks(g.nodes, bit)
    open_: dict[tuple, tuple[list[Node], int, int]] = {}   # kind → (members, member bits, bytes)
    done: list[list[Node]] = []
    for n in colls:
        key = (tuple(n.attrs["axes"]), n.dtype, n.attrs.get("reduce", "sum"), group(n) if group else None)
        members, bits, size = open_.get(key, ([], 0, 0))
        if members and (masks[n.inputs[0]] & bits or size + n.nbytes > threshold):
            done.append(members)
            members, bits, size = [], 0, 0
        open_[key] = (members + [n], bits | bit[n], size + n.nbytes)
    done.extend(m for m, _, _ in open_.values())
    return [b for b in done if len(b) > 1]


def _combined(members: list[Node], operand: dict[Node, Node], mesh_axes: dict) -> tuple[list[Node], dict[Node, Node]]:
    """Nodes computing the bucket's all-reduce from the (new) operands, and member → its result."""
    first = members[0]
    flats = [_node(Op.RESHAPE, [operand[m]], m.source, shape=(m.size,)) for m in members]
    cat = _node(Op.CONCATENATE, flats, first.source, axis=0)
    red = _node(Op.ALL_REDUCE, [cat], first.source, f"combined_{first.name or 'all_reduce'}", mesh_axes,
                axes=tuple(first.attrs["axes"]), reduce=first.attrs.get("reduce", "sum"))
    made, results, at = flats + [cat, red], {}, 0
    for m in members:
        part = _node(Op.SLICE, [red], m.source, start=(at,), limit=(at + m.size,), stride=(1,))
        results[m] = _node(Op.RESHAPE, [part], m.source, m.name, shape=m.shape)
        made += [part, results[m]]
        at += m.size
    return made, results


def choose_threshold(prog: SpmdProgram, group=None) -> tuple[int, str]:
    """The bucket threshold the cost model prefers, and why: XLA's 30 MiB, or a fraction of the
    largest kind's all-reduce bytes (1/2 ... 1/16) when smaller buckets, started while the
    backward still runs, give a shorter modeled step under the scheduler (the last bucket is all
    that must wait for the end). Not searched where splitting cannot pay: where the extra start-up
    of a second bucket costs more than the most it could hide (small, latency-bound steps)."""
    from ..analysis.analyze import op_pricer
    from .passes_schedule import list_schedule
    groups: dict[tuple, list[Node]] = {}
    for n in prog.local.nodes:
        if n.op is Op.ALL_REDUCE:
            groups.setdefault((tuple(n.attrs["axes"]), n.dtype, n.attrs.get("reduce", "sum")), []).append(n)
    if not groups:
        return XLA_COMBINE_THRESHOLD, "XLA's default"
    members = max(groups.values(), key=lambda ms: sum(m.nbytes for m in ms))
    total = sum(m.nbytes for m in members)
    price = op_pricer(prog.hardware or "h200", prog.mesh)
    def flat(nbytes: int) -> Node:  # an all-reduce of `nbytes`, to price
        x = Node(Op.PARAMETER, [], {}, (nbytes // members[0].dtype.itemsize,), members[0].dtype)
        return Node(Op.ALL_REDUCE, [x], members[0].attrs, x.shape, x.dtype)

    whole, half = price(flat(total)), price(flat(total // 2))
    if 2 * half - whole >= whole - half:
        return XLA_COMBINE_THRESHOLD, "XLA's default (latency-bound: smaller buckets cannot pay)"
    cands = sorted({min(XLA_COMBINE_THRESHOLD, -(-total // k)) for k in (1, 2, 4, 8, 16)} | {XLA_COMBINE_THRESHOLD},
                   reverse=True)
    best = None
    for t in cands:
        trial = copy.copy(prog)
        combine_all_reduces(trial, t, group)
        step = list_schedule(trial.local, price, float("inf"), links=price.links)[1]
        if best is None or step < best[0] * (1 - 1e-3):  # a smaller bucket must pay for itself
            best = (step, t)
    return best[1], f"chosen by the cost model ({best[0] * 1e6:.4g} µs modeled)"


def combine_all_reduces(prog: SpmdProgram, threshold: int | None = XLA_COMBINE_THRESHOLD, group=None) -> PassReport:
    """Combine with `threshold` bytes per bucket (None: `choose_threshold`'s); `group(node)`: only
    all-reduces of one group share a bucket (default: the program's `bucket_group`, if any)."""
    group = group or getattr(prog, "bucket_group", None)
    why = ""
    if threshold is None:
        threshold, why = choose_threshold(prog, group)
        why = f"; threshold {threshold} B: {why}"
    g = prog.local
    before = len(prog.collectives)
    buckets = _buckets(g, threshold, group)
    if not buckets:
        return PassReport("combine", before, before, "nothing to combine" + why)
    index = {n: i for i, n in enumerate(g.nodes)}
    bucket_of = {m: b for b, members in enumerate(buckets) for m in members}
    # items to order: every node outside a bucket, and each bucket as one item at its last member
    item_of = {n: ("b", bucket_of[n]) if n in bucket_of else ("n", n) for n in g.nodes}
    key = {("n", n): index[n] for n in g.nodes if n not in bucket_of}
    key.update({("b", b): max(index[m] for m in members) for b, members in enumerate(buckets)})
    deps: dict = {it: set() for it in key}
    for n in g.nodes:
        ins = [x for m in buckets[bucket_of[n]] for x in m.inputs] if n in bucket_of else n.inputs
        deps[item_of[n]].update(item_of[x] for x in ins if item_of[x] != item_of[n])
    users: dict = {it: [] for it in key}
    for it, ds in deps.items():
        for d in ds:
            users[d].append(it)
    waiting = {it: len(ds) for it, ds in deps.items()}
    ready = [(key[it], it) for it, w in waiting.items() if w == 0]  # keys are unique: items never compared
    heapq.heapify(ready)
    new: dict[Node, Node] = {}
    nodes: list[Node] = []
    combined: dict[int, Node] = {}
    while ready:
        _, it = heapq.heappop(ready)
        if it[0] == "b":
            members = buckets[it[1]]
            made, results = _combined(members, {m: new[m.inputs[0]] for m in members}, g.mesh_axes)
            nodes += made
            new.update(results)
            combined[it[1]] = made[len(members) + 1]
        else:
            n = it[1]
            ins = tuple(new[i] for i in n.inputs)
            m = n if ins == n.inputs else Node(n.op, ins, n.attrs, n.shape, n.dtype, n.source, n.name)
            new[n] = m
            nodes.append(m)
        for u in users[it]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (key[u], u))
    if len(nodes) != len(g.nodes) + sum(3 * len(b) + 2 for b in buckets) - sum(len(b) for b in buckets):
        raise ShardingError("combine: the reordered program lost nodes (a dependency cycle)")  # never expected
    prog.local = Graph(nodes, [new[p] for p in g.inputs], [new[o] for o in g.outputs], g.output_names, g.name,
                       g.mesh_axes, g.bound, g.flatten_args)
    prog.collectives = _ledger(prog, buckets, combined, new)
    after = len(prog.collectives)
    sizes = ", ".join(str(sum(m.nbytes for m in b)) for b in buckets)
    return PassReport("combine", before, after,
                      f"{sum(len(b) for b in buckets)} all-reduces into {len(buckets)} buckets of {sizes} B{why}")


def _ledger(prog: SpmdProgram, buckets, combined: dict[int, Node], new: dict[Node, Node]) -> list[CollectiveRecord]:
    """Records of combined all-reduces become one record per bucket (same bytes in all); the rest
    follow their (possibly copied) nodes."""
    member_bucket = {m: b for b, members in enumerate(buckets) for m in members}
    out, seen = [], set()
    for r in prog.collectives:
        b = member_bucket.get(r.node)
        if b is None:
            out.append(CollectiveRecord(r.kind, r.axes, r.bytes, r.wire_bytes, r.tensor, r.source, r.reason,
                                        new.get(r.node, r.node)))
        elif b not in seen:
            seen.add(b)
            members = [x for x in prog.collectives if member_bucket.get(x.node) == b]
            nbytes = sum(x.bytes for x in members)
            n = prog.mesh.group_size(r.axes)
            out.append(CollectiveRecord(r.kind, r.axes, nbytes, wire_bytes(r.kind, nbytes, n),
                                        f"{len(members)} tensors ({members[0].tensor} ...)", r.source,
                                        f"combined {len(members)} independent all-reduces "
                                        f"({', '.join(x.tensor for x in members[:4])}{' ...' if len(members) > 4 else ''})",
                                        combined[b]))
    return out


PASSES = {"cse": eliminate_common_collectives, "reduce_scatter": create_reduce_scatters,
          "sink": sink_all_gathers,
          "combine": lambda prog: combine_all_reduces(prog, None), "collective_matmul": collective_matmul,
          "chunk": chunk_collectives, "schedule": schedule, "local_scatter": localize_scatters}
DEFAULT = ("cse", "reduce_scatter", "local_scatter", "sink", "combine", "collective_matmul", "chunk", "schedule")


class _LayerOf:
    """node → its layer in the program's current per-device program (ir/blocks.labels)."""

    def __init__(self, prog: SpmdProgram):
        self.prog, self.graph, self.layer = prog, None, {}

    def __call__(self, n: Node) -> int:
        if self.graph is not self.prog.local:
            from ..ir.blocks import labels
            self.graph, self.layer = self.prog.local, labels(self.prog.local)
        return self.layer.get(n, -1)


def run_passes(prog: SpmdProgram, passes="default", hardware="h200") -> SpmdProgram:
    """Run the named passes (a name list, "default", or () for none) in order, planning for
    `hardware` (the cost model the scheduler orders by); `prog.passes` says what each changed."""
    with cyclic_gc_paused():
        return _run_passes(prog, passes, hardware)


def _run_passes(prog: SpmdProgram, passes, hardware) -> SpmdProgram:
    prog.hardware = hardware
    prog.before_passes = prog.local
    names = DEFAULT if passes == "default" else (passes,) if isinstance(passes, str) else tuple(passes or ())
    unknown = [p for p in names if p not in PASSES]
    if unknown:
        raise ShardingError(f"unknown pass(es) {unknown}; passes: {', '.join(PASSES)}")
    if prog.repeat is not None and getattr(prog, "bucket_group", None) is None:
        prog.bucket_group = _LayerOf(prog)   # buckets of one layer each: the block stays one block
    for i, name in enumerate(names):
        report = PASSES[name](prog)
        prog.passes.append(report)
        flags.log(1, str(report))
        flags.dump(4 + i, f"pass-{name}", lambda: f"# {report}\n{prog.local}\n\n# ledger\n{prog.ledger()}\n")
    return prog
