"""Finding the sorted region of a mixture-of-experts layer (see routing.py): the global argsort of
the expert ids as the frontends build it, the gathers into and out of sorted order (the
backward's scatters too), the grouped matmuls and the row-wise ops between them. A region is
kept only when everything reading its values is understood."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import flags
from ..ir import Node, Op
from ..ir.ops import ELEMENTWISE
from .mesh import Mesh

_ROWWISE = ELEMENTWISE | {Op.BROADCAST, Op.RESHAPE, Op.SLICE, Op.CONCATENATE, Op.REDUCE_SUM, Op.REDUCE_MAX,
                          Op.REDUCE_MIN, Op.TRANSPOSE, Op.PAD}


def _strip(n: Node, ops=(Op.RESHAPE, Op.BROADCAST, Op.CAST, Op.TRANSPOSE)) -> Node:
    while n.op in ops and n.inputs:
        n = n.inputs[0]
    return n


def argsort_key(order: Node) -> Node | None:
    """The 1-d key whose stable argsort `order` is, when `order` is the frontends' sort (ranks
    from pairwise comparisons, then the source of each rank), else None."""
    n = order
    if n.op is Op.GATHER and _strip(n.inputs[0]).op is Op.IOTA:  # jax: take_along_axis(iota, order)
        n = n.inputs[1]
    n = _strip(n, (Op.RESHAPE, Op.TRANSPOSE, Op.CAST))
    if n.op is not Op.REDUCE_SUM or n.rank != 1 or n.attrs["axes"] != (1,):
        return None
    sel = n.inputs[0]
    if sel.op is not Op.SELECT or sel.inputs[0].op is not Op.EQ:
        return None
    rank = _strip(sel.inputs[0].inputs[0])
    if rank.op is not Op.REDUCE_SUM or rank.attrs["axes"] != (1,):
        return None
    before = _strip(rank.inputs[0], (Op.CAST,))
    if before.op is not Op.OR or before.inputs[0].op is not Op.LT:
        return None
    kj, ki = before.inputs[0].inputs
    if ki.op is not Op.BROADCAST or ki.attrs["dims"] != (0,) or kj.op is not Op.BROADCAST or kj.attrs["dims"] != (1,):
        return None
    key = _vector(ki.inputs[0])
    if key is None or _vector(kj.inputs[0]) is not key:
        return None
    return key


def _vector(n: Node) -> Node | None:
    """The furthest 1-d value a chain of reshapes starts from (view(-1) of top-k ids)."""
    found = n if n.rank == 1 else None
    while n.op is Op.RESHAPE:
        n = n.inputs[0]
        if n.rank == 1:
            found = n
    return found


def _same_elements(n: Node) -> Node:
    """Through casts, reshapes and broadcasts that only add size-1 dims (the same vector)."""
    while n.op in (Op.CAST, Op.RESHAPE, Op.BROADCAST) and n.inputs and n.inputs[0].size == n.size:
        n = n.inputs[0]
    return n


def index_of(n: Node) -> Node:
    """An index with the frontends' negative-index wrap (select(i < 0, i + n, i)), casts and
    size-1 dims taken off."""
    n = _same_elements(n)
    if n.op is Op.SELECT and n.inputs[0].op is Op.LT and n.inputs[1].op is Op.ADD:
        i = _same_elements(n.inputs[2])
        if _same_elements(n.inputs[0].inputs[0]) is i and _same_elements(n.inputs[1].inputs[0]) is i:
            return i
    return n


def _same_value(a: Node, b: Node, memo: dict) -> bool:
    """Structurally the same computation (two group-size nodes made from one offsets tensor)."""
    if a is b:
        return True
    key = (id(a), id(b))
    if key not in memo:
        memo[key] = (a.op is b.op and a.shape == b.shape and a.dtype == b.dtype and a.op is not Op.PARAMETER
                     and _attrs_equal(a.attrs, b.attrs) and len(a.inputs) == len(b.inputs)
                     and all(_same_value(x, y, memo) for x, y in zip(a.inputs, b.inputs)))
    return memo[key]


def _attrs_equal(a: dict, b: dict) -> bool:
    import numpy as np
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(a[k], b[k]) if hasattr(a[k], "shape") else a[k] == b[k] for k in a)


@dataclass
class Region:
    perm: Node                   # argsort(key): token-slot of each sorted row
    inverse: Node | None         # argsort(perm)
    key: Node                    # the expert ids the rows are sorted by
    sizes: Node                  # the group sizes every grouped matmul of the region uses
    experts: tuple[str, ...]     # the mesh axes the experts are split over
    rows: int                    # S: token-slots
    nodes: set = field(default_factory=set)      # values in sorted coordinates
    exits: set = field(default_factory=set)      # nodes that leave them (token rows, expert blocks, sums)
    alias: dict = field(default_factory=dict)    # node -> the region value it is, row for row
    entries: list = field(default_factory=list)  # token rows put in sorted order, in program order


def find_regions(g, mesh: Mesh, shardings: dict) -> list[Region]:
    users = g.users()
    orders = {n: k for n in g.nodes if n.rank == 1 and (k := argsort_key(n)) is not None}
    inverse_of = {orders[n]: n for n in orders if orders[n] in orders}   # perm -> argsort(perm)
    regions = []
    for n in g.nodes:
        if n.op is not Op.RAGGED_DOT or n.attrs["mode"] != "rows" or len(n.inputs) != 3:
            continue
        axes = shardings[n.inputs[1]].dims[0].axes
        entry = _strip(n.inputs[0], (Op.CAST,))
        if not axes or entry.op is not Op.GATHER or index_of(entry.inputs[1]) not in orders or entry.attrs["axis"] != 0:
            continue
        perm = index_of(entry.inputs[1])
        if any(r.perm is perm for r in regions):
            continue
        reg = Region(perm, inverse_of.get(perm), orders[perm], n.inputs[2], axes, perm.shape[0])
        why = _grow(reg, g, users, shardings, mesh)
        if why is None:
            regions.append(reg)
        else:
            flags.log(2, f"expert parallelism: {n.describe()} keeps the factor rules: {why}")
    return regions


def _grow(reg: Region, g, users, shardings, mesh: Mesh) -> str | None:
    """Collects the region's nodes and exits; says why not when something reads them that this
    lowering does not understand (or the split does not fit)."""
    S, memo = reg.rows, {}
    n_exp = mesh.group_size(reg.experts)
    if reg.sizes.shape[0] % n_exp:
        return f"{reg.sizes.shape[0]} experts do not divide over {n_exp} devices"
    inside = reg.nodes

    def by(n, which):
        return which is not None and n.attrs["axis"] == 0 and not n.attrs.get("batch_dims") \
            and index_of(n.inputs[1]) is which

    def is_entry(n):
        if n.op is Op.GATHER and by(n, reg.perm):
            return True
        return n.op is Op.SCATTER and by(n, reg.inverse) and _zero(n.inputs[0])

    def is_exit(n):
        if n.op is Op.GATHER and by(n, reg.inverse) and n.inputs[0] in inside:
            return True
        return n.op is Op.SCATTER and by(n, reg.perm) and _zero(n.inputs[0]) and n.inputs[2] in inside

    for n in g.nodes:
        if n in inside or n.rank == 0:
            continue
        if is_entry(n):
            inside.add(n)
            reg.entries.append(n)
        elif is_exit(n):
            reg.exits.add(n)
        elif n.op is Op.RAGGED_DOT and n.inputs[0] in inside:
            if n.attrs["mode"] != "rows" or len(n.inputs) != 3 or not _same_value(n.inputs[2], reg.sizes, memo):
                return f"{n.describe()} groups the rows otherwise"
            if shardings[n.inputs[1]].dims[0].axes != reg.experts:
                return f"{n.describe()}: its experts are not split over {reg.experts}"
            inside.add(n)
        elif n.op is Op.RAGGED_DOT and n.attrs["mode"] == "contract" and n.inputs[0].op is Op.TRANSPOSE \
                and n.inputs[0].inputs[0] in inside and n.inputs[1] in inside and len(n.inputs) == 3:
            if not _same_value(n.inputs[2], reg.sizes, memo):
                return f"{n.describe()} groups the rows otherwise"
            reg.exits.add(n)
        elif n.op in (Op.REDUCE_SUM,) and 0 in n.attrs["axes"] and n.inputs[0] in inside:
            reg.exits.add(n)
        elif n.op is Op.TRANSPOSE and n.inputs[0] in inside and all(
                u.op is Op.RAGGED_DOT and u.attrs["mode"] == "contract" and u.inputs[0] is n for u in users[n]):
            continue  # read through the weight gradients it feeds
        elif any(x in inside for x in n.inputs):
            if not _rowwise(n, S) or not all(x in inside or _row_free(x, S) for x in n.inputs):
                return f"{n.describe()} reads the sorted rows"
            inside.add(n)
    _absorb(reg, g, users, S)
    # everything reading a region value must be handled here (a transpose feeding a weight
    # gradient is read through that gradient)
    for n in inside:
        for u in users[n]:
            if u in inside or u in reg.exits:
                continue
            if u.op is Op.TRANSPOSE and all(w in reg.exits for w in users[u]):
                continue
            return f"{u.describe()} reads the sorted rows"
    return None


def _absorb(reg: Region, g, users, S: int):
    """Rows that leave sorted order only to come back (transformers' batched_mm: each bmm's result
    unsorted, an activation on the token-slots, the next bmm's rows sorted again) stay inside: the
    exit, the row-wise ops after it and the re-entry are the same rows as the region's value."""
    for e in [x for x in reg.exits if x.op is Op.GATHER]:
        chain = {e}
        for n in g.nodes:  # program order: every operand is classified before its readers
            if n not in chain and any(i in chain for i in n.inputs) and _rowwise(n, S) and all(
                    i in chain or i in reg.nodes or _row_free(i, S) for i in n.inputs) and n not in reg.nodes:
                chain.add(n)
        entries = {u for x in chain for u in users[x] if u in reg.nodes and u.op is Op.GATHER
                   and index_of(u.inputs[1]) is reg.perm and u.inputs[0] in chain}
        leaks = [u for x in chain for u in users[x] if u not in chain and u not in entries]
        if leaks or not entries:
            if entries:
                flags.log(2, f"expert parallelism: rows leave sorted order for good at {leaks[0].describe()}")
            continue
        reg.exits.discard(e)
        reg.nodes.update(chain)
        reg.alias[e] = e.inputs[0]
        for u in entries:
            reg.alias[u] = u.inputs[0]


def _zero(n: Node) -> bool:
    n = _strip(n, (Op.BROADCAST, Op.RESHAPE, Op.CAST))
    return n.op is Op.CONSTANT and not hasattr(n.attrs["value"], "shape") and n.attrs["value"] == 0


def _rowwise(n: Node, S: int) -> bool:
    """An op that maps each row (dim 0, size S) on its own and keeps it as dim 0."""
    if n.op not in _ROWWISE or n.rank == 0 or n.shape[0] != S:
        return False
    a = n.attrs
    if n.op is Op.BROADCAST:
        return bool(a["dims"]) and a["dims"][0] == 0 and n.inputs[0].shape[0] == S
    if n.op is Op.RESHAPE:
        return n.inputs[0].rank >= 1 and n.inputs[0].shape[0] == S
    if n.op is Op.SLICE:
        return a["start"][0] == 0 and a["limit"][0] == S and a["stride"][0] == 1
    if n.op is Op.CONCATENATE:
        return a["axis"] != 0
    if n.op in (Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN):
        return 0 not in a["axes"]
    if n.op is Op.TRANSPOSE:
        return a["perm"][0] == 0
    if n.op is Op.PAD:
        return a["low"][0] == 0 and a["high"][0] == 0
    return True


def _row_free(n: Node, S: int) -> bool:
    """The same for every row: a splat, an iota along another dim, a broadcast along the rows."""
    if n.rank == 0 or n.shape[0] != S:
        return n.rank == 0
    if n.op is Op.CONSTANT:
        return not hasattr(n.attrs["value"], "shape")
    if n.op is Op.IOTA:
        return n.attrs["dimension"] != 0
    if n.op is Op.BROADCAST:
        return 0 not in n.attrs["dims"]
    if n.op in ELEMENTWISE:
        return all(_row_free(x, S) for x in n.inputs)
    return False


def token_axes(reg: Region, shardings: dict) -> tuple[str, ...] | None:
    """The axes the token-slots are split over in the region (those of the entries' rows, with
    the experts axes added: a device's slots stay with it)."""
    entry = next(n for n in reg.entries if n not in reg.alias)
    src = entry.inputs[0] if entry.op is Op.GATHER else entry.inputs[2]
    ds = shardings[src].dims[0]
    if ds.strided:
        return None
    return tuple(ds.axes) + tuple(a for a in reg.experts if a not in ds.axes)
