"""Stacked layer weights → one input per layer, so that a `lax.scan` over them folds (ir/fold.py).

A scan over stacked weights (`params['w1']` of shape [N, d, f], one slice per step) comes out of
the JAX frontend unrolled: step t reads `slice(w1, t)`, and a training step's gradient and update
of w1 are a concatenation of N per-step values (and elementwise ops on [N, ...] arrays). Here
each stacked input becomes N inputs `params['w1'][layers.{t}.]` of shape [d, f]: slices read
their piece, elementwise ops on stacked values run per piece, a stacked output becomes N outputs.
The graph then has per-layer parameters, as a Python loop's would, and `fold` can hold them
once. `SplitStacked` (its flatten_args) splits the caller's stacked arrays into pieces and
`Restack` puts the pieces of each output back together, so the folded graph's evaluate and
simulate take and give what the capture does; `spec_names` lets a spec name the stacked array
(P(None, ...) on its layer dim: each piece gets the rest).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .graph import Graph, Node, ancestors
from .ops import ELEMENTWISE, Op


def piece_name(name: str, t: int) -> str:
    return f"{name}[layers.{t}.]"


class SplitStacked:
    """The capture's arguments → the unstacked graph's input arrays (stacked ones in pieces)."""

    def __init__(self, flatten, free_names: list[str], stacked: dict[str, int]):
        self.flatten, self.free_names, self.stacked = flatten, list(free_names), dict(stacked)

    def __call__(self, *args) -> list:
        flat = self.flatten(*args) if self.flatten else list(args)
        out = []
        for name, a in zip(self.free_names, flat):
            if name in self.stacked:
                a = np.asarray(a)
                out += [a[t] for t in range(self.stacked[name])]
            else:
                out.append(a)
        return out


class Restack:
    """Outputs of the unstacked program → the capture's (each stacked output's pieces stacked)."""

    def __init__(self, counts: list[int]):
        self.counts = list(counts)   # per output of the capture: 0 (one array) or its pieces

    def __call__(self, outs: list) -> list:
        res, k = [], 0
        for n in self.counts:
            if n:
                res.append(np.stack([np.asarray(o) for o in outs[k:k + n]]))
                k += n
            else:
                res.append(outs[k])
                k += 1
        return res


def unstack(g: Graph, min_depth: int) -> Graph | None:
    """`g` with its stacked layer weights split (see the module doc), or None when it has none."""
    users = g.users()
    depth = _depth(g, users, min_depth)
    if depth is None:
        return None
    stacked_inputs = {p for p in g.inputs if p.rank and p.shape[0] == depth and p.name not in g.bound
                      and any(_step(u, depth) is not None for u in users[p])}
    new: dict[Node, Node] = {}
    pieces: dict[Node, list[Node]] = {}
    expanded: dict[Node, Node] = {}    # a [1, ...] reshape made of a piece → the piece
    nodes, inputs = [], []

    def emit(n: Node) -> Node:
        nodes.append(n)
        return n

    def reshape(x: Node, shape) -> Node:
        shape = tuple(shape)
        if x.shape == shape:
            return x
        if x in expanded:
            x = expanded[x]
        while x.op is Op.RESHAPE:     # (a chain of reshapes is one: the steps' slices and stacks)
            x = x.inputs[0]
        if x.shape == shape:
            return x
        out = emit(Node(Op.RESHAPE, (x,), {"shape": list(shape)}, shape, x.dtype, x.source))
        if shape[:1] == (1,) and shape[1:] == x.shape:
            expanded[out] = x
        return out

    def value(x: Node) -> Node:       # a stacked value, when read whole, is its pieces concatenated
        if x not in new:
            parts = [reshape(p, (1,) + p.shape) for p in pieces[x]]
            new[x] = emit(Node(Op.CONCATENATE, tuple(parts), {"axis": 0}, x.shape, x.dtype, x.source))
        return new[x]

    for n in g.nodes:
        if n.op is Op.PARAMETER:
            if n in stacked_inputs:
                pieces[n] = [emit(Node(Op.PARAMETER, (), {}, n.shape[1:], n.dtype, n.source, piece_name(n.name, t)))
                             for t in range(depth)]
                inputs += pieces[n]
            else:
                new[n] = emit(n)
                inputs.append(n)
            continue
        t = _step(n, depth)
        if t is not None and n.inputs[0] in pieces:               # step t's slice: its piece
            new[n] = reshape(pieces[n.inputs[0]][t], n.shape)
        elif (n.op is Op.CONCATENATE and n.attrs["axis"] == 0 and len(n.inputs) == depth
              and all(x.shape[0] == 1 for x in n.inputs)):       # the steps' values stacked
            pieces[n] = [reshape(_new(x, new, value, pieces), x.shape[1:]) for x in n.inputs]
        elif n.op in ELEMENTWISE and any(x in pieces for x in n.inputs) and all(
                x in pieces or _uniform(x, depth) for x in n.inputs):
            shape = n.shape[1:]
            pieces[n] = [emit(Node(n.op, tuple(pieces[x][t] if x in pieces else _per_step(x, new, emit, value, pieces)
                                               for x in n.inputs), n.attrs, shape, n.dtype, n.source))
                         for t in range(depth)]
        elif n.op is Op.RESHAPE:
            new[n] = reshape(_new(n.inputs[0], new, value, pieces), n.shape)
        else:
            new[n] = emit(n.with_inputs(tuple(_new(x, new, value, pieces) for x in n.inputs)))
    outputs, names, counts = [], [], []
    for o, name in zip(g.outputs, g.output_names):
        if o in pieces:
            outputs += pieces[o]
            names += [piece_name(name, t) for t in range(depth)]
            counts.append(depth)
        else:
            outputs.append(_new(o, new, value, pieces))
            names.append(name)
            counts.append(0)
    nodes = _live(nodes, outputs, inputs)
    free = [p.name for p in g.inputs if p.name not in g.bound]
    out = Graph(nodes, inputs, outputs, names, g.name, g.mesh_axes, g.bound,
                SplitStacked(g.flatten_args, free, {p.name: depth for p in stacked_inputs}))
    for attr in ("shape_only", "sharding_constraints"):
        if attr in vars(g):
            setattr(out, attr, getattr(g, attr))
    out.restack = Restack(counts) if any(counts) else None
    out.spec_names = {p.name: [(piece_name(p.name, t), True) for t in range(depth)] for p in stacked_inputs}
    out.spec_names.update({name: [(piece_name(name, t), True) for t in range(depth)]
                           for name, n in zip(g.output_names, counts) if n})
    return out


def _depth(g: Graph, users: dict, min_depth: int) -> int | None:
    """The scan's length: the leading dim most inputs are sliced along, step by step."""
    found = Counter(p.shape[0] for p in g.inputs if p.rank and p.shape[0] >= min_depth
                    and any(_step(u, p.shape[0]) is not None for u in users[p]))
    return found.most_common(1)[0][0] if found else None


def _step(n: Node, depth: int) -> int | None:
    """t when n is `x[t:t+1]` of a [depth, ...] x (the unrolled scan's read of step t)."""
    if n.op is not Op.SLICE or not n.inputs or n.inputs[0].rank == 0 or n.inputs[0].shape[0] != depth:
        return None
    x = n.inputs[0]
    start, limit, stride = n.attrs["start"], n.attrs["limit"], n.attrs["stride"]
    if limit[0] - start[0] != 1 or any(s != 1 for s in stride) or any(
            (start[i], limit[i]) != (0, x.shape[i]) for i in range(1, x.rank)):
        return None
    return start[0]


def _uniform(x: Node, depth: int) -> bool:
    """The same in every step: a broadcast along the stacked dim, or a splat constant."""
    if x.op is Op.BROADCAST:
        return 0 not in x.attrs["dims"]
    return x.op is Op.CONSTANT and np.ndim(x.attrs["value"]) == 0


def _per_step(x: Node, new: dict, emit, value, pieces) -> Node:
    """One step's part of a uniform value (made once per step; CSE-like sharing is not needed)."""
    shape = x.shape[1:]
    if x.op is Op.CONSTANT:
        return emit(Node(Op.CONSTANT, (), x.attrs, shape, x.dtype, x.source))
    src = _new(x.inputs[0], new, value, pieces)
    return emit(Node(Op.BROADCAST, (src,), {"shape": list(shape), "dims": [d - 1 for d in x.attrs["dims"]]},
                     shape, x.dtype, x.source))


def _new(x: Node, new: dict, value, pieces) -> Node:
    return new[x] if x in new else value(x)


def _live(nodes: list[Node], outputs: list[Node], inputs: list[Node]) -> list[Node]:
    live = ancestors(outputs) | set(inputs)
    return [n for n in nodes if n in live]
