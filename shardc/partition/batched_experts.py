"""transformers' `batched_mm` experts gather each token-slot's expert weights and multiply slot by
slot: bmm(W[ids], x[:, :, None]). With the experts dim of W split over an axis, that gather would
move the weights to every device. This rewrite states the same product as a grouped matmul over
the slots sorted by expert (argsort(ids), ragged_dot with W's group sizes, the inverse order back),
which routing.py then lowers by moving the routed rows to the experts' devices instead.

Only where nothing else reads the gathered weights (a forward pass); a training step also reads
them in its backward, so there the gather stays (the factor rules lower it exactly)."""
from __future__ import annotations

from ..ir import DType, Graph, Node, Op
from ..ir.emitter import Emitter
from .passes_common import rewrite
from .routed_regions import index_of


def _gathered_experts(d: Node, split: set) -> tuple[Node, Node, Node] | None:
    """(weights [E, a, b], slot expert ids [S], slot rows [S, b]) when d = bmm(W[ids], x[:, :, None])."""
    if d.op is not Op.DOT_GENERAL or d.rank != 3:
        return None
    a = d.attrs
    if (a["lhs_batch"], a["rhs_batch"], a["lhs_contract"], a["rhs_contract"]) != ((0,), (0,), (2,), (1,)):
        return None
    g, x3 = d.inputs
    if g.op is not Op.GATHER or g.attrs["axis"] != 0 or g.attrs.get("batch_dims") or g.inputs[1].rank != 1:
        return None
    w = g.inputs[0]
    if w not in split or x3.shape[2] != 1 or w.rank != 3:
        return None
    return w, index_of(g.inputs[1]), x3


def rewrite_batched_experts(g: Graph, split: set) -> Graph:
    """`g` with each bmm of gathered expert weights (W in `split`: nodes whose dim 0 a spec splits)
    whose gathered weights nothing else reads made a sorted grouped matmul."""
    users = g.users()
    found = {d: m for d in g.nodes if (m := _gathered_experts(d, split)) is not None
             and all(u.op is Op.DOT_GENERAL and _gathered_experts(u, split) for u in users[d.inputs[0]])}
    if not found:
        return g
    routes: dict = {}  # ids -> (perm, inverse, sizes), made once per routing

    def grouped(d: Node, w: Node, ids: Node, x3: Node):
        def make(new):
            b = Emitter(g.name, g.mesh_axes)
            with b.loc(d.source):
                if ids not in routes:
                    key = b.reshape(new[ids], (x3.shape[0],))
                    perm = b.sort(key, 0)[1]
                    inverse = b.sort(perm, 0)[1]
                    E, S = w.shape[0], key.shape[0]
                    hit = b.binary(Op.EQ, b.add(Op.BROADCAST, [b.cast(key, DType.i32)], shape=(S, E), dims=[0]),
                                   b.iota((S, E), 1, DType.i32))
                    routes[ids] = (perm, inverse, b.reduce(Op.REDUCE_SUM, b.cast(hit, DType.i32), 0))
                perm, inverse, sizes = routes[ids]
                rows = b.add(Op.GATHER, [b.reshape(new[x3], x3.shape[:2]), perm], axis=0)
                out = b.add(Op.RAGGED_DOT, [rows, b.transpose(new[w], [0, 2, 1]), sizes], name=d.name)
                back = b.reshape(b.add(Op.GATHER, [out, inverse], axis=0), d.shape)
            return b.nodes, back
        return make

    new_g, _ = rewrite(g, {d: grouped(d, *m) for d, m in found.items()})
    return new_g
