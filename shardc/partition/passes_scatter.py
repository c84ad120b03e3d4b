"""Reduce-scatter creation: an all-reduce (sum) whose readers each keep only this device's block
of one dim becomes a reduce-scatter, as XLA's ReduceScatterCreator: every device receives just
its block, half the bytes on the wire of a ring all-reduce.

"Keeps only its block" is read off the program, not guessed from its shape: every reader is a
gather along one dim whose indices depend on nothing but the device (axis_index, iota,
constants), and evaluated on every device they are the block the reduce-scatter over the
all-reduce's axes hands that device, either one contiguous block (plain split) or one per
`outer` row (a strided 'dp'/3 layout: the operand is viewed as [outer, inner] and the inner dim
scattered). Padded blocks (a dim that does not divide) are left alone: the gather clamps at the
edge where a reduce-scatter of a padded operand would give zeros."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op
from ..ir.evaluate import eval_node
from ..ir.ops import COLLECTIVES
from .mesh import Mesh
from .passes_common import PassReport, make_node, relink, rewrite, users_of
from .program import CollectiveRecord, SpmdProgram, wire_bytes

_DEVICE_ONLY = (Op.AXIS_INDEX, Op.CONSTANT, Op.IOTA)


class DeviceValues:
    """The value of each node that depends on the device alone, on every device (None where it
    reads data: parameters or collectives)."""

    def __init__(self, mesh: Mesh):
        self.mesh, self.memo = mesh, {}

    def __call__(self, n: Node):
        if n not in self.memo:
            if n.op is Op.AXIS_INDEX:
                v = [np.asarray(self.mesh.coords(d)[n.attrs["axis"]], np.int32) for d in range(self.mesh.size)]
            elif n.op is Op.PARAMETER or n.op in COLLECTIVES or (not n.inputs and n.op not in _DEVICE_ONLY):
                v = None
            else:
                ins = [self(i) for i in n.inputs]
                v = None if any(x is None for x in ins) else [
                    eval_node(n, [x[d] for x in ins]) for d in range(self.mesh.size)]
            self.memo[n] = v
        return self.memo[n]


def block_outer(idx: list[np.ndarray], size: int, axes, mesh: Mesh) -> int | None:
    """`outer` (1: one contiguous block) such that each device's indices `idx[d]` are exactly its
    block of a reduce-scatter over `axes` of a dim of `size` viewed as [outer, size/outer]; None if
    no view fits."""
    k = mesh.group_size(axes)
    length = len(idx[0])
    if length * k != size:
        return None
    for outer in (o for o in range(1, length + 1) if length % o == 0 and size % o == 0):
        inner, per = size // outer, length // outer
        p = np.arange(length)
        if all(np.array_equal(idx[d], (p // per) * inner + mesh.group_rank(d, axes) * per + p % per)
               for d in range(mesh.size)):
            return outer
    return None


def _candidate(r: Node, readers: list[Node], values: DeviceValues, mesh: Mesh, outputs) -> tuple | None:
    """(dim, outer) when every reader of all-reduce `r` gathers this device's block of one dim."""
    if r.attrs.get("reduce", "sum") != "sum" or not readers or r in outputs:
        return None
    dims, idx = set(), None
    for u in readers:
        if (u.op is not Op.GATHER or u.inputs[0] is not r or u.inputs[1] is r or u.attrs.get("batch_dims", 0)
                or u.inputs[1].rank != 1):
            return None
        v = values(u.inputs[1])
        if v is None or (idx is not None and not all(np.array_equal(a, b) for a, b in zip(v, idx))):
            return None
        dims.add(u.attrs["axis"])
        idx = v
    if len(dims) != 1:
        return None
    d = dims.pop()
    outer = block_outer(idx, r.shape[d], r.attrs["axes"], mesh)
    return None if outer is None else (d, outer)


def _scatter(r: Node, d: int, outer: int, x: Node, mesh_axes) -> list[Node]:
    """reduce-scatter of `x` (r's new operand) into each device's block of dim d."""
    axes = tuple(r.attrs["axes"])
    if outer == 1:
        return [make_node(Op.REDUCE_SCATTER, [x], r.source, r.name, mesh_axes, axes=axes, dim=d)]
    view = list(x.shape)
    view[d:d + 1] = [outer, x.shape[d] // outer]
    v = make_node(Op.RESHAPE, [x], r.source, None, shape=tuple(view))
    rs = make_node(Op.REDUCE_SCATTER, [v], r.source, r.name, mesh_axes, axes=axes, dim=d + 1)
    back = list(rs.shape)
    back[d:d + 2] = [back[d] * back[d + 1]]
    return [v, rs, make_node(Op.RESHAPE, [rs], r.source, None, shape=tuple(back))]


def create_reduce_scatters(prog: SpmdProgram) -> PassReport:
    g: Graph = prog.local
    before = len(prog.collectives)
    users, values = users_of(g), DeviceValues(prog.mesh)
    outputs = set(g.outputs)
    found = {r: c for r in g.nodes if r.op is Op.ALL_REDUCE
             for c in [_candidate(r, users[r], values, prog.mesh, outputs)] if c is not None}
    if not found:
        return PassReport("reduce_scatter", before, before, "no all-reduce whose readers keep one block")
    made_rs: dict[Node, Node] = {}
    replace_at = {}
    for r, (d, outer) in found.items():
        def at_r(new, r=r, d=d, outer=outer):
            made = _scatter(r, d, outer, new[r.inputs[0]], g.mesh_axes)
            made_rs[r] = next(m for m in made if m.op is Op.REDUCE_SCATTER)
            return made, made[-1]
        replace_at[r] = at_r
        for u in users[r]:
            replace_at[u] = lambda new, r=r: ([], new[r])
    prog.local, new = rewrite(g, replace_at)
    records, wire_before = {}, 0
    for rec in prog.collectives:
        if rec.node in found:
            rs = made_rs[rec.node]
            n = prog.mesh.group_size(rec.axes)
            wire_before += rec.wire_bytes
            records[rec.node] = [CollectiveRecord(
                "reduce_scatter", rec.axes, rec.bytes, wire_bytes("reduce_scatter", rec.bytes, n), rec.tensor,
                rec.source, f"{rec.reason}; each reader kept one block: reduce-scatter (dim {rs.attrs['dim']})", rs)]
    prog.collectives = relink(prog, new, records)
    wire_after = sum(r.wire_bytes for recs in records.values() for r in recs)
    return PassReport("reduce_scatter", before, len(prog.collectives),
                      f"{len(found)} all-reduces + block gathers became reduce-scatters "
                      f"(wire bytes per device {wire_before} → {wire_after})")
