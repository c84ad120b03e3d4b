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


def same_value(a: Node, b: Node) -> bool:
    """Structurally the same computation (two nodes made alike from the same inputs)."""
    return _same_value(a, b, {})


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
        why = _grow(reg, g, users, shardings, mesh) or routing_why_not(reg)
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
    for n in inside - reg.exits:  # (an exit's readers read its token rows)
        for u in users[n]:
            if u in inside or u in reg.exits:
                continue
            if u.op is Op.TRANSPOSE and all(w in reg.exits for w in users[u]):
                continue
            return f"{u.describe()} reads the sorted rows"
    return None


def _absorb(reg: Region, g, users, S: int):
    """Rows that leave sorted order only to come back (transformers' batched_mm: each bmm's result
    unsorted, an activation on the token-slots, the next bmm's rows sorted again; in a training
    step the activation's backward too) stay inside: the exits, the row-wise ops after them and the
    re-entries are the same rows as the region's values. A row-wise op read from outside becomes an
    exit itself (its rows go back to the token-slots there)."""
    chain = {x for x in reg.exits if x.op is Op.GATHER}
    if not chain:
        return
    for n in g.nodes:  # program order: every operand is classified before its readers
        if n not in chain and n not in reg.nodes and any(i in chain for i in n.inputs) and _rowwise(n, S) \
                and all(i in chain or i in reg.nodes or _row_free(i, S) for i in n.inputs):
            chain.add(n)
    entries = {u for x in chain for u in users[x] if u in reg.nodes and u.op is Op.GATHER
               and index_of(u.inputs[1]) is reg.perm}
    if not entries:
        return
    leaked = {x for x in chain for u in users[x] if u not in chain and u not in entries}
    for e in chain:
        if e in reg.exits:
            reg.exits.discard(e)
            reg.alias[e] = e.inputs[0]
    reg.nodes.update(chain)
    reg.exits.update(leaked)
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


# ---- what the per-device lowering may assume of the routing ------------------------------------
# routing.py gives each slot its expert straight from its own id (no global sort): that equals the
# graph's grouping when the ids are never negative (so ids past the experts sort after every routed
# slot, in rows no group reads) and the group sizes are the counts of the ids in [0, E). Both are
# proved here from the graph (ids from top-k's argmax lie in [0, n]; histc, bincount and a one-hot
# sum are counts), else the region keeps the factor rules.

def routing_why_not(reg: Region) -> str | None:
    bounds = key_bounds(reg.key)
    if bounds is None or bounds[0] < 0:
        return f"the expert ids {reg.key.describe()} are not provably non-negative"
    if not _counts_of_key(reg, bounds):
        return f"the group sizes {reg.sizes.describe()} are not provably the counts of {reg.key.describe()}"
    return None


def key_bounds(n: Node, memo: dict | None = None) -> tuple[int, int] | None:
    """Integer bounds (lo, hi) of every element of n, by interval arithmetic, or None."""
    import numpy as np
    memo = {} if memo is None else memo
    if n in memo:
        return memo[n]
    memo[n] = None
    op, ins = n.op, n.inputs
    used = ins[:1] if op is Op.GATHER else ins[1:] if op is Op.SELECT else ins  # (not indices, predicates)
    sub = [key_bounds(x, memo) for x in used]
    out = None
    if op is Op.IOTA and n.dtype.is_int:
        out = (0, n.shape[n.attrs["dimension"]] - 1)
    elif op is Op.CONSTANT and n.dtype.is_int:
        v = np.asarray(n.attrs["value"])
        out = (int(v.min()), int(v.max())) if v.size else None
    elif None in sub or not n.dtype.is_int:
        out = None
    elif op in (Op.CAST, Op.RESHAPE, Op.BROADCAST, Op.TRANSPOSE, Op.SLICE, Op.REDUCE_MIN, Op.REDUCE_MAX, Op.GATHER):
        info = np.iinfo(n.dtype.np)
        out = sub[0] if ins[0].dtype.is_int and info.min <= sub[0][0] and sub[0][1] <= info.max else None
    elif op is Op.CONCATENATE:
        out = (min(s[0] for s in sub), max(s[1] for s in sub))
    elif op is Op.SELECT:
        out = (min(sub[0][0], sub[1][0]), max(sub[0][1], sub[1][1]))
    elif op in (Op.MIN, Op.MAX):
        f = min if op is Op.MIN else max
        out = (f(sub[0][0], sub[1][0]), f(sub[0][1], sub[1][1]))
    elif op is Op.ADD:
        out = (sub[0][0] + sub[1][0], sub[0][1] + sub[1][1])
    memo[n] = out
    return out


def _counts_of_key(reg: Region, bounds: tuple[int, int]) -> bool:
    """Are reg.sizes the counts of reg.key's values in [0, E) (histc, bincount, a one-hot sum,
    through cumsum offsets and back)?"""
    E = reg.sizes.shape[0]
    n = _offsets_to_sizes(_strip(reg.sizes, (Op.CAST,)))
    n = _strip(n, (Op.CAST,))
    if n.op is Op.REDUCE_SUM and n.attrs["axes"] == (0,) and n.rank == 1:   # sum of a one-hot [S, E]
        hit = _strip(n.inputs[0], (Op.CAST,))
        if hit.op is not Op.EQ:
            return False
        a, b = hit.inputs
        if a.op is Op.IOTA:
            a, b = b, a
        if b.op is not Op.IOTA or b.attrs["dimension"] != 1 or b.shape[1] != E or a.op is not Op.BROADCAST \
                or a.attrs["dims"] != (0,):
            return False
        idx = a.inputs[0]
    elif n.op is Op.SCATTER and n.attrs["axis"] == 0 and not n.attrs.get("batch_dims") and _zero(n.inputs[0]) \
            and _one(n.inputs[2]):                                           # ones added at the ids
        idx = n.inputs[1]
    else:
        return False
    return _maps_ids_to_bins(idx, reg, E, bounds)


def _offsets_to_sizes(n: Node) -> Node:
    """h for sizes written as offs - [0, offs[:-1]] with offs = cumsum(h) (torch's grouped_mm
    offsets turned back into sizes); else n."""
    if n.op is not Op.SUB or n.rank != 1:
        return n
    offs, before = n.inputs
    if before.op is not Op.PAD or tuple(before.attrs["low"]) != (1,) or before.attrs.get("value", 0) != 0:
        return n
    sl = before.inputs[0]
    if sl.op is not Op.SLICE or sl.inputs[0] is not offs or sl.attrs["start"] != (0,) or sl.attrs["stride"] != (1,):
        return n
    c = _strip(offs, (Op.CAST, Op.TRANSPOSE))
    if c.op is not Op.DOT_GENERAL or c.attrs["lhs_contract"] != (0,) or c.attrs["rhs_contract"] != (0,) \
            or c.attrs["lhs_batch"] or c.rank != 1:
        return n
    import numpy as np
    tri = _static(c.inputs[1])
    k = n.shape[0]
    if tri is None or tri.shape != (k, k) or not np.array_equal(tri != 0, np.triu(np.ones((k, k), bool))):
        return n
    return c.inputs[0]


def _maps_ids_to_bins(idx: Node, reg: Region, E: int, bounds: tuple[int, int]) -> bool:
    """Is idx, element by element, T(ids) (the ids, or the ids in sorted order) with T the identity
    on [0, E) and outside [0, E) above? T is evaluated on every value the ids can take."""
    import numpy as np
    from ..ir.evaluate import eval_node
    lo, hi = bounds
    if hi - lo > 1 << 16:
        return False
    order, statics, sources, memo = [], {}, set(), {}
    key = _same_elements(reg.key)

    def visit(x) -> bool:  # x's elements a function of the same elements of the ids
        if x in statics or x in order or x in sources:
            return True
        s = _same_elements(x)
        if s is key or (s.op is Op.GATHER and s.attrs["axis"] == 0 and _same_elements(s.inputs[0]) is key
                        and index_of(s.inputs[1]) is reg.perm):
            sources.add(x)
            return True
        if (v := _static(x, memo)) is not None:
            statics[x] = v
            return True
        if x.op not in ELEMENTWISE and x.op not in (Op.RESHAPE, Op.BROADCAST) or not x.inputs \
                or any(i.size != x.size for i in x.inputs if _static(i, memo) is None):
            return False
        if not all(visit(i) for i in x.inputs):
            return False
        order.append(x)
        return True
    if not visit(idx) or len(sources) != 1:
        return False
    src = sources.pop()
    values = np.arange(lo, hi + 1)
    S = src.size
    for start in range(0, len(values), S):
        part = values[start:start + S]
        env = dict(statics)
        env[src] = np.resize(part, S).astype(src.dtype.np).reshape(src.shape)
        for m in order:
            env[m] = eval_node(m, [env[x] for x in m.inputs])
        got = env[idx].reshape(-1)[:len(part)]
        if not np.array_equal(np.where((got >= 0) & (got < E), got, -1), np.where(part < E, part, -1)):
            return False
    return True


def _static(n: Node, memo: dict | None = None):
    """n's value when it is made of constants and iotas alone (small), else None."""
    from ..ir.evaluate import eval_node
    memo = {} if memo is None else memo
    if n not in memo:
        memo[n] = None
        if n.op is Op.PARAMETER or n.size > 1 << 16:
            pass
        elif not n.inputs:
            memo[n] = eval_node(n, []) if n.op in (Op.CONSTANT, Op.IOTA) else None
        else:
            args = [_static(x, memo) for x in n.inputs]
            memo[n] = None if any(a is None for a in args) else eval_node(n, args)
    return memo[n]


def _one(n: Node) -> bool:
    n = _strip(n, (Op.BROADCAST, Op.RESHAPE, Op.CAST))
    return n.op is Op.CONSTANT and not hasattr(n.attrs["value"], "shape") and n.attrs["value"] == 1
