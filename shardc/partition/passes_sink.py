"""All-gathers moved across elementwise ops where that moves fewer bytes (the `sink` pass).

Two rewrites, both exact (an elementwise op commutes with gathering the blocks it works on):

- **Gathered, computed on, then cut back to the block** (FSDP's optimizer step: Adam's m and v
  are gathered over the data axis, scaled, and each device keeps its own block of the result).
  When every way out of an all-gather through elementwise ops ends in a gather of this device's
  block of the gathered dim (read off the program as reduce_scatter does: device-only indices
  equal to the block on every device), the ops run on the block instead: the all-gather's own
  operand, the other operands cut to the block locally. The all-gather is gone where nothing
  else reads it (zero bytes instead of its result), and the update no longer waits for it.
- **Gathered, then narrowed** (an all-gather of f32 read only by a cast to bf16): the cast runs
  first, on the block, and the all-gather moves the narrow values.

Reduce-scatters are not moved: the elementwise op that would shrink one is a cast to a
narrower type before the sum, which changes what the sum rounds to (not exact)."""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node, Op
from ..ir.ops import ELEMENTWISE
from .passes_common import PassReport, make_node, relink, rewrite, users_of
from .passes_scatter import DeviceValues, block_outer
from .program import SpmdProgram, wire_bytes


def _block_reader(u: Node, x: Node, d: int, axes, values: DeviceValues, mesh) -> bool:
    """Is u a gather of this device's block (over `axes`, one contiguous block) of dim d of x?"""
    if (u.op is not Op.GATHER or u.inputs[0] is not x or u.inputs[1] is x or u.attrs.get("batch_dims", 0)
            or u.attrs["axis"] != d or u.inputs[1].rank != 1):
        return False
    v = values(u.inputs[1])
    return v is not None and block_outer(v, x.shape[d], axes, mesh) == 1


def _region(ag: Node, users, values: DeviceValues, mesh, outputs) -> tuple[list[Node], list[Node]] | None:
    """(elementwise ops on the gathered value, block readers) when every way out of `ag` through
    elementwise ops of its shape ends in a block reader; None otherwise. Readers of `ag` that are
    neither (a matmul reading the gathered weight) keep the all-gather."""
    d, axes = ag.attrs["dim"], tuple(ag.attrs["axes"])
    region, readers, seen = [], [], {ag}
    frontier = [u for u in users[ag] if u.op in ELEMENTWISE or _block_reader(u, ag, d, axes, values, mesh)]
    while frontier:
        u = frontier.pop()
        if u in seen:
            continue
        seen.add(u)
        if u.op is Op.GATHER:
            readers.append(u)
            continue
        if u.shape != ag.shape or u in outputs:
            return None
        region.append(u)
        for w in users[u]:
            if w.op in ELEMENTWISE:
                frontier.append(w)
            elif _block_reader(w, u, d, axes, values, mesh):
                frontier.append(w)
            else:
                return None
    return (region, readers) if readers else None


def _clone(n: Node, memo: dict, made: list) -> Node:
    """A copy of a device-only value (indices from axis_index, iota, constants) placed here."""
    if n not in memo:
        ins = [_clone(i, memo, made) for i in n.inputs]
        memo[n] = Node(n.op, ins, n.attrs, n.shape, n.dtype, n.source, None)
        made.append(memo[n])
    return memo[n]


def sink_all_gathers(prog: SpmdProgram) -> PassReport:
    g: Graph = prog.local
    before = len(prog.collectives)
    users, values, outputs = users_of(g), DeviceValues(prog.mesh), set(g.outputs)
    order = {n: i for i, n in enumerate(g.nodes)}
    replace_at, blocks, narrowed = {}, 0, {}
    taken: set[Node] = set()
    for ag in [n for n in g.nodes if n.op is Op.ALL_GATHER and n not in outputs]:
        found = _region(ag, users, values, prog.mesh, outputs)
        if found is not None and not (taken & set(found[0])):
            region, readers = found
            taken.update(region)
            blocks += 1
            _to_block(ag, sorted(region, key=order.get), readers, replace_at, g.mesh_axes)
            continue
        u = users[ag][0] if len(users[ag]) == 1 else None
        if (u is not None and u.op is Op.CAST and u not in taken
                and u.dtype.itemsize < ag.dtype.itemsize):
            taken.add(u)
            narrowed[ag] = u

            def narrow_first(new, ag=ag, u=u):
                c = make_node(Op.CAST, [new[ag.inputs[0]]], u.source, None, g.mesh_axes, **u.attrs)
                a = make_node(Op.ALL_GATHER, [c], ag.source, ag.name, g.mesh_axes, **ag.attrs)
                return [c, a], a
            replace_at[u] = narrow_first
    if not replace_at:
        return PassReport("sink", before, before, "no all-gather cut back to its block or narrowed after it")
    bytes_before = sum(r.bytes for r in prog.collectives)
    prog.local, new = rewrite(g, replace_at)
    records = {}
    for rec in prog.collectives:
        if rec.node in narrowed:
            a = new[narrowed[rec.node]]
            n = prog.mesh.group_size(rec.axes)
            records[rec.node] = [replace(rec, node=a, bytes=a.nbytes, wire_bytes=wire_bytes("all_gather", a.nbytes, n),
                                         reason=f"{rec.reason}; the cast to {a.dtype} runs first, on the block")]
    prog.collectives = relink(prog, new, records)
    bytes_after = sum(r.bytes for r in prog.collectives)
    return PassReport("sink", before, len(prog.collectives),
                      f"{blocks} all-gathers' elementwise readers run on the block they were cut back to, "
                      f"{len(narrowed)} narrowing casts before their all-gather "
                      f"(bytes per device {bytes_before} → {bytes_after})")


def _to_block(ag: Node, region: list[Node], readers: list[Node], replace_at: dict, mesh_axes) -> None:
    """Each op of `region` rebuilt on the block (other operands cut to it by the readers'
    indices, cloned where the region starts); each reader becomes what it read, rebuilt."""
    d = ag.attrs["dim"]
    idx = readers[0].inputs[1]
    inside = set(region)
    state: dict = {}

    def cut(x: Node, new: dict, made: list) -> Node:
        if x is ag or (x.op is Op.ALL_GATHER and x.attrs["dim"] == d
                       and tuple(x.attrs["axes"]) == tuple(ag.attrs["axes"])):
            return new[x.inputs[0]]   # (the block of a gather of blocks: the block itself)
        if x in inside:
            return state[x]
        if "idx" not in state:
            state["idx"] = _clone(idx, {}, made)
        k = make_node(Op.GATHER, [new[x], state["idx"]], x.source, None, mesh_axes, axis=d, batch_dims=0)
        made.append(k)
        return k

    for u in region:
        def on_block(new, u=u):
            made: list = []
            ins = [cut(x, new, made) for x in u.inputs]
            state[u] = make_node(u.op, ins, u.source, u.name, mesh_axes, **u.attrs)
            return made + [state[u]], state[u]
        replace_at[u] = on_block
    for r in readers:
        x = r.inputs[0]
        replace_at[r] = (lambda new, x=x: ([], new[ag.inputs[0]] if x is ag else state[x]))
