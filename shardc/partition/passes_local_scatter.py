"""Local scatters: a scatter-add into a constant whose readers each keep only this device's
contiguous block of rows (an MoE's dispatch buffer [experts·capacity, d] with the experts split
over a mesh axis, and the buffer's gradient) scatters into that block alone: each device writes
L·C rows instead of every expert's E·C, and its readers read the block without a gather.

"Keeps only its block" is read off the program, as the reduce-scatter pass does: every reader is
a gather along the scattered dim (or along the first of the dims a reshape splits it into:
[experts, capacity]) whose indices depend on nothing but the device, and on every device they are
`start + arange(L)`, in range. The indices shift by start·C; updates that land outside the block
are dropped, as they are by every scatter (an update outside the whole buffer stays outside)."""
from __future__ import annotations

import numpy as np

from ..ir import DType, Graph, Node, Op
from .passes_common import PassReport, make_node, rewrite, users_of, relink
from .passes_scatter import DeviceValues
from .program import SpmdProgram


def _splat(n: Node) -> Node | None:
    """The scalar constant `n` broadcasts, or None."""
    while n.op in (Op.BROADCAST, Op.RESHAPE):
        n = n.inputs[0]
    return n if n.op is Op.CONSTANT and not isinstance(n.attrs["value"], np.ndarray) else None


def _block(s: Node, users: dict, values: DeviceValues, outputs) -> tuple | None:
    """(readers, start of each device's block, rows per block index C, blocks L) when every
    reader of scatter `s` gathers one contiguous in-range block of its scattered dim."""
    a = s.attrs["axis"]
    if s.attrs.get("batch_dims", 0) or s.inputs[1].rank != 1 or _splat(s.inputs[0]) is None or s in outputs:
        return None
    gathers, C, n_idx = [], None, s.shape[a]
    for u in users[s]:
        if u.op is Op.RESHAPE and u.shape[:a] == s.shape[:a] and u.shape[a + 2:] == s.shape[a + 1:] \
                and u.rank == s.rank + 1 and u not in outputs:
            c, v = u.shape[a + 1], users[u]
        elif u.op is Op.GATHER:
            c, v = 1, [u]
        else:
            return None
        if C not in (None, c) or not v:
            return None
        C = c
        for gt in v:
            if gt.op is not Op.GATHER or gt.attrs["axis"] != a or gt.attrs.get("batch_dims", 0) \
                    or gt.inputs[1].rank != 1 or gt.inputs[0] is gt.inputs[1]:
                return None
            gathers.append(gt)
    if not gathers:
        return None
    idx = [values(g.inputs[1]) for g in gathers]
    if any(v is None for v in idx) or any(not all(np.array_equal(p, q) for p, q in zip(v, idx[0])) for v in idx):
        return None
    rows, L = n_idx // C, len(idx[0][0])
    starts = [int(v[0]) for v in idx[0]]
    if L >= rows or not all(np.array_equal(v, st + np.arange(L)) and st >= 0 and st + L <= rows
                            for v, st in zip(idx[0], starts)):
        return None
    return gathers, C, L


def _local(s: Node, sel: Node, C: int, L: int, new: dict) -> list[Node]:
    """The scatter into this device's block: indices shifted by (its first gathered index)·C."""
    a = s.attrs["axis"]
    x, ind, upd = (new[i] for i in s.inputs)
    sel = new[sel]
    made = [make_node(Op.SLICE, [sel], s.source, None, start=(0,), limit=(1,))]  # this device's first block
    made.append(make_node(Op.RESHAPE, [made[-1]], s.source, None, shape=()))
    if made[-1].dtype is not ind.dtype:
        made.append(make_node(Op.CAST, [made[-1]], s.source, None, to=ind.dtype))
    made.append(Node(Op.CONSTANT, (), {"value": C}, (), ind.dtype, s.source, None))
    made.append(make_node(Op.MUL, [made[-2], made[-1]], s.source, None))
    made.append(make_node(Op.BROADCAST, [made[-1]], s.source, None, dims=(), shape=ind.shape))
    made.append(make_node(Op.SUB, [ind, made[-1]], s.source, None))
    local_ind = made[-1]
    shape = list(s.shape)
    shape[a] = L * C
    z = _splat(x)  # (a torch zeros(...) is a splat constant of the buffer's shape: its scalar)
    made.append(Node(Op.CONSTANT, (), {"value": z.attrs["value"]}, (), z.dtype, s.source, None))
    made.append(make_node(Op.BROADCAST, [made[-1]], s.source, None, dims=(), shape=tuple(shape)))
    made.append(make_node(Op.SCATTER, [made[-1], local_ind, upd], s.source, s.name, axis=a, batch_dims=0))
    return made


def localize_scatters(prog: SpmdProgram) -> PassReport:
    g: Graph = prog.local
    n_coll = len(prog.collectives)
    users, values, outputs = users_of(g), DeviceValues(prog.mesh), set(g.outputs)
    found = {s: b for s in g.nodes if s.op is Op.SCATTER and s.dtype is not DType.bool
             for b in [_block(s, users, values, outputs)] if b is not None}
    if not found:
        return PassReport("local_scatter", n_coll, n_coll, "no scatter whose readers keep one block")
    replace_at, saved = {}, 0
    order = {n: i for i, n in enumerate(g.nodes)}
    for s, (gathers, C, L) in found.items():
        made_of = {}
        replace_at[s] = lambda new, s=s: ([], s)  # (dead: every reader is replaced)

        def at_g(new, s=s, C=C, L=L, gt=None):
            made = []
            if s not in made_of:  # the first reader makes it: its block indices exist from there on
                made = _local(s, gt.inputs[1], C, L, new)
                made_of[s] = made[-1]
            local = made_of[s]
            if local.shape != gt.shape:
                made.append(make_node(Op.RESHAPE, [local], gt.source, gt.name, shape=gt.shape))
            return made, made[-1] if made else local
        for gt in sorted(gathers, key=order.get):
            replace_at[gt] = lambda new, gt=gt, f=at_g: f(new, gt=gt)
        saved += s.nbytes - s.nbytes * L * C // s.shape[s.attrs["axis"]]
    prog.local, new = rewrite(g, replace_at)
    prog.collectives = relink(prog, new)
    return PassReport("local_scatter", n_coll, n_coll,
                      f"scatters into this device's block of rows alone: {len(found)} "
                      f"({saved} bytes fewer written per device)")
