"""Collective chunking: a collective that would hold the collective stream much longer than the
compute between the program's collectives is split into pieces along a dim it does not gather,
scatter or split; each piece is its own collective and the results are concatenated back.

Why: the collective stream is a queue. A 5 ms all-gather of an untied LM head, started while the
layers still run, makes every tensor-parallel all-gather of those layers wait behind it, and no
order of whole collectives avoids that. In pieces, the scheduler slips the critical ones in
between. The pieces move the same bytes; each pays the collective's launch once more, and the
concatenation is a copy on the compute stream. The pass tries a few piece lengths (multiples of
the mean compute per collective) and keeps the one whose scheduled program models shortest, or
none when none is shorter."""
from __future__ import annotations

import math

from ..ir import Graph, Node, Op
from .passes_common import PassReport, make_node, relink, rewrite
from .program import CollectiveRecord, SpmdProgram, wire_bytes

SPLITTABLE = (Op.ALL_GATHER, Op.REDUCE_SCATTER, Op.ALL_REDUCE, Op.ALL_TO_ALL)
MAX_PIECES = 16


def free_dim(c: Node) -> int | None:
    """The largest dim of the operand that the collective does not gather, scatter or split."""
    x = c.inputs[0]
    taken = {c.attrs[k] % x.rank for k in ("dim", "split_dim", "concat_dim") if k in c.attrs} if x.rank else set()
    dims = [d for d in range(x.rank) if d not in taken and x.shape[d] > 1]
    return max(dims, key=lambda d: x.shape[d]) if dims else None


def pieces(c: Node, new: dict, k: int, mesh_axes) -> list[Node]:
    """Nodes computing collective `c` as k pieces along its free dim; the last is its value."""
    x, d = new[c.inputs[0]], free_dim(c)
    bounds = [round(i * x.shape[d] / k) for i in range(k + 1)]
    made, outs = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        start, limit = [0] * x.rank, list(x.shape)
        start[d], limit[d] = lo, hi
        part = make_node(Op.SLICE, [x], c.source, None, mesh_axes, start=tuple(start), limit=tuple(limit),
                         stride=(1,) * x.rank)
        outs.append(make_node(c.op, [part], c.source, None, mesh_axes, **c.attrs))
        made += [part, outs[-1]]
    return made + [make_node(Op.CONCATENATE, outs, c.source, c.name, mesh_axes, axis=d)]


def chunk_collectives(prog: SpmdProgram, piece_s: float | None = None, max_pieces: int = MAX_PIECES) -> PassReport:
    """Split every collective longer than `piece_s` seconds (on the cost model of `prog.hardware`)
    into pieces of at most that (at most `max_pieces`); None: the piece length the cost model
    prefers (or none)."""
    from ..analysis.analyze import op_pricer
    g: Graph = prog.local
    before = len(prog.collectives)
    price = op_pricer(prog.hardware or "h200", prog.mesh)
    colls = [n for n in g.nodes if n.op in SPLITTABLE and free_dim(n) is not None]
    if not colls:
        return PassReport("chunk", before, before, "no collective with a dim to split along")
    why = ""
    if piece_s is None:
        piece_s, why = _choose(prog, price, colls)
    counts = {c: min(max_pieces, math.ceil(price(c) / piece_s), c.inputs[0].shape[free_dim(c)])
              for c in colls} if piece_s else {}
    counts = {c: k for c, k in counts.items() if k > 1}
    if not counts:
        return PassReport("chunk", before, before, f"no collective split{why}")
    made_of: dict[Node, list[Node]] = {}

    def at(c):
        def replace(new):
            made = pieces(c, new, counts[c], g.mesh_axes)
            made_of[c] = [m for m in made if m.op is c.op]
            return made, made[-1]
        return replace
    prog.local, new = rewrite(g, {c: at(c) for c in counts})
    records = {}
    for rec in prog.collectives:
        if rec.node in made_of:
            n = prog.mesh.group_size(rec.axes)
            parts = made_of[rec.node]
            records[rec.node] = [CollectiveRecord(
                rec.kind, rec.axes, (p.nbytes if p.op is Op.ALL_GATHER else p.inputs[0].nbytes),
                wire_bytes(rec.kind, p.nbytes if p.op is Op.ALL_GATHER else p.inputs[0].nbytes, n),
                rec.tensor, rec.source, f"{rec.reason}; piece {i + 1} of {len(parts)}", p) for i, p in enumerate(parts)]
    prog.collectives = relink(prog, new, records)
    return PassReport("chunk", before, len(prog.collectives),
                      f"{len(counts)} collectives split into {sum(counts.values())} pieces of at most "
                      f"{piece_s * 1e6:.4g} µs{why}")


def _choose(prog: SpmdProgram, price, colls) -> tuple[float | None, str]:
    """The piece length whose scheduled program models shortest: none, or 8, 4 or 2 times the mean
    compute per collective (a piece must fit between the collectives the compute waits on)."""
    import copy
    from .passes_schedule import best_order, memory_limit
    g = prog.local
    n_colls = sum(1 for n in g.nodes if n.op in SPLITTABLE or n.op is Op.COLLECTIVE_PERMUTE)
    spacing = sum(price(n) for n in g.nodes if n.op not in SPLITTABLE and n.op is not Op.COLLECTIVE_PERMUTE) / n_colls
    if not any(price(c) > 2 * spacing for c in colls):
        return None, "; none is much longer than the compute between collectives"
    limit = memory_limit(prog.hardware or "h200")
    best = (best_order(prog, price, limit, price.links)[1], None)
    for f in (8, 4, 2):
        trial = copy.copy(prog)
        chunk_collectives(trial, f * spacing)
        step = best_order(trial, price, limit, price.links)[1]
        if step < best[0] * (1 - 1e-3):  # splitting must pay for its launches and copies
            best = (step, f * spacing)
    if best[1] is None:
        return None, "; splitting does not shorten the modeled step"
    return best[1], f"; chosen by the cost model ({best[0] * 1e6:.4g} µs modeled)"
