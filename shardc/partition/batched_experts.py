"""transformers' `batched_mm` experts gather each token-slot's expert weights and multiply slot by
slot: bmm(W[ids], x[:, :, None]). With the experts dim of W split over an axis, that gather would
move the weights to every device. This rewrite states the same products as grouped matmuls over
the slots sorted by expert (argsort(ids), ragged_dot with the ids' counts, the inverse order
back), which routing.py then lowers by moving the routed rows to the experts' devices instead:

- forward  bmm(W[ids], x)                       -> ragged_dot(x sorted, Wᵀ)
- backward bmm(W[ids]ᵀ, dy)  (the input's grad)  -> ragged_dot(dy sorted, W)
- backward scatter_add(0, ids, bmm(dy, xᵀ))      -> ragged_dot(dy sortedᵀ, x sorted) ("contract")
  (the weights' grad: a per-slot outer product summed into its expert).

Only where every reader of the gathered weights is one of these products (else the gather stays
and the factor rules lower it exactly)."""
from __future__ import annotations

from ..ir import DType, Graph, Node, Op
from ..ir.emitter import Emitter
from .passes_common import rewrite
from .routed_regions import index_of, same_value

_BMM = ((0,), (0,), (2,), (1,))


def _bmm(d: Node) -> bool:
    a = d.attrs
    return d.op is Op.DOT_GENERAL and d.rank == 3 and \
        (a["lhs_batch"], a["rhs_batch"], a["lhs_contract"], a["rhs_contract"]) == _BMM


def _gathered(g: Node, split: set) -> tuple[Node, Node] | None:
    """(weights [E, a, b], slot expert ids [S]) when g = W[ids] with W in `split`."""
    if g.op is not Op.GATHER or g.attrs["axis"] != 0 or g.attrs.get("batch_dims") or g.inputs[1].rank != 1:
        return None
    w = g.inputs[0]
    return (w, index_of(g.inputs[1])) if w in split and w.rank == 3 else None


def _product(d: Node, split: set):
    """('fwd', W, ids, x [S,b,1]) for bmm(W[ids], x); ('bwd', W, ids, dy [S,a,1]) for bmm(W[ids]ᵀ, dy)."""
    if not _bmm(d) or d.shape[2] != 1:
        return None
    lhs, rhs = d.inputs
    if (m := _gathered(lhs, split)) is not None:
        return ("fwd",) + m + (rhs,)
    if lhs.op is Op.TRANSPOSE and lhs.attrs["perm"] == (0, 2, 1) and (m := _gathered(lhs.inputs[0], split)):
        return ("bwd",) + m + (rhs,)
    return None


def _weight_grad(s: Node):
    """(ids, dy [S,a,1], x [S,1,b]) when s = scatter_add(0, ids, bmm(dy, xᵀ)) into [E, a, b]."""
    if s.op is not Op.SCATTER or s.attrs["axis"] != 0 or s.attrs.get("batch_dims") or s.rank != 3:
        return None
    zero, ids, upd = s.inputs
    z = zero
    while z.op in (Op.BROADCAST, Op.CAST) and z.inputs:
        z = z.inputs[0]
    if z.op is not Op.CONSTANT or hasattr(z.attrs["value"], "shape") or z.attrs["value"] != 0:
        return None
    if not _bmm(upd) or upd.inputs[0].shape[2] != 1 or ids.rank != 1:
        return None
    return index_of(ids), upd.inputs[0], upd.inputs[1]


def _rows(n: Node) -> Node:
    """Through reshapes and transposes that only add or move size-1 dims: the [S, c] rows."""
    def core(shape):
        return [d for d in shape if d != 1]
    while n.op in (Op.RESHAPE, Op.TRANSPOSE) and core(n.inputs[0].shape) == core(n.shape) \
            and n.inputs[0].shape[0] == n.shape[0]:
        n = n.inputs[0]
    return n


def rewrite_batched_experts(g: Graph, split: set) -> Graph:
    """`g` with the bmm products of gathered expert weights (W in `split`: nodes whose dim 0 a spec
    splits) made sorted grouped matmuls, when every reader of the gathered weights is one."""
    users = g.users()
    gathers = {n for n in g.nodes if _gathered(n, split)}
    products = {d: m for d in g.nodes if (m := _product(d, split)) is not None}

    def product_reader(u):
        return u in products or (u.op is Op.TRANSPOSE and all(v in products for v in users[u]))
    whole = {gth for gth in gathers if all(product_reader(u) for u in users[gth])}
    products = {d: m for d, m in products.items() if (d.inputs[0] if m[0] == "fwd" else d.inputs[0].inputs[0]) in whole}
    if not products:
        return g
    experts = {m[2]: m[1].shape[0] for m in products.values()}   # ids -> E
    grads = {s: m for s in g.nodes if (m := _weight_grad(s)) is not None
             and any(same_value(m[0], i) for i in experts) and s.shape[0] == experts[_canon(m[0], experts)]}
    routes: dict = {}   # ids -> (perm, inverse, sizes), made once per routing
    sorted_rows: list = []   # (rows node, perm, sorted rows): each input sorted once

    def route(b, new, ids, E, S):
        ids = _canon(ids, experts)
        if ids not in routes:
            key = b.reshape(new[ids], (S,))
            perm = b.sort(key, 0)[1]
            inverse = b.sort(perm, 0)[1]
            hit = b.binary(Op.EQ, b.add(Op.BROADCAST, [b.cast(key, DType.i32)], shape=(S, E), dims=[0]),
                           b.iota((S, E), 1, DType.i32))
            routes[ids] = (perm, inverse, b.reduce(Op.REDUCE_SUM, b.cast(hit, DType.i32), 0))
        return routes[ids]

    def sort_rows(b, new, x, perm, S):
        r = _rows(x)
        for src, p, out in sorted_rows:
            if p is perm and same_value(src, r):
                return out
        out = b.add(Op.GATHER, [b.reshape(new[r], (S, x.size // S)), perm], axis=0)
        sorted_rows.append((r, perm, out))
        return out

    def product(d: Node, kind, w, ids, x3):
        def make(new):
            b = Emitter(g.name, g.mesh_axes)
            S = d.shape[0]
            with b.loc(d.source):
                perm, inverse, sizes = route(b, new, ids, w.shape[0], S)
                rows = sort_rows(b, new, x3, perm, S)
                wt = b.transpose(new[w], [0, 2, 1]) if kind == "fwd" else new[w]
                out = b.add(Op.RAGGED_DOT, [rows, wt, sizes], name=d.name)
                back = b.reshape(b.add(Op.GATHER, [out, inverse], axis=0), d.shape)
            return b.nodes, back
        return make

    def weight_grad(s: Node, ids, dy3, xt3):
        def make(new):
            b = Emitter(g.name, g.mesh_axes)
            S = dy3.shape[0]
            with b.loc(s.source):
                perm, _, sizes = route(b, new, ids, s.shape[0], S)
                dy = sort_rows(b, new, dy3, perm, S)
                x = sort_rows(b, new, xt3, perm, S)
                out = b.add(Op.RAGGED_DOT, [b.transpose(dy, [1, 0]), x, sizes], name=s.name, mode="contract")
                out = b.cast(out, s.dtype) if out.dtype != s.dtype else out
            return b.nodes, out
        return make

    todo = {d: product(d, *m) for d, m in products.items()}
    todo.update({s: weight_grad(s, *m) for s, m in grads.items()})
    new_g, _ = rewrite(g, todo)
    return new_g


def _canon(ids: Node, known) -> Node:
    """The known ids node `ids` computes the same value as (the backward may recompute them)."""
    return next((i for i in known if same_value(i, ids)), ids)
