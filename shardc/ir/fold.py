"""Folding: a captured graph of N identical layers → the repeated form of ir/blocks.py (layers 0,
1, N-2 and N-1 held as layers 0-3, `g.repeat = Repeat(N)`), so that partition, the passes and the
analysis work once per block whatever the capture (from_torch, from_jax, a Python loop, lax.scan).

    g = fold(g)            # the folded graph, or `g` itself with `g.fold_note` saying why not

Layers are found by parameter name, or for a `lax.scan` over stacked weights by splitting each
stacked input into one per layer first (ir/unstack.py), (`layers.{i}.`, `h.{i}.`, `blocks.{i}.`, `['layers'][i]`: blocks.LAYER) and each value's layer by dataflow (blocks.labels); the repeat itself is checked
structurally: every middle layer must be layer 1's computation node for node (op, shape, dtype,
attributes, and where each operand comes from: its own layer's value at the same place, the layer
below's, the layer above's, or the very same shared value). The folded graph's whole program
(`unrolled()`) is then compared with the capture node for node before it is returned, so a fold is
exact or does not happen: its evaluate and simulate give the capture's values, with its arguments
and results in its order.
"""
from __future__ import annotations

import numpy as np

from .. import flags
from ..errors import IRError
from .blocks import BODY, CAPTURED, LAST, NEXT, Repeat, labels, layer_index, rename, unroll
from .graph import Graph, Node, ancestors
from .ops import Op
from .unstack import unstack

MIN_DEPTH = CAPTURED + 1   # fewer layers: nothing to fold (the body would stand for one layer)


class NotFolded(Exception):
    """Why a graph is not a repeat of identical layers (the note `fold` leaves)."""


class NoLayers(NotFolded):
    """No input is named as a layer's (a scan's stacked weights may still be split per layer)."""


def fold(g: Graph, min_depth: int = MIN_DEPTH) -> Graph:
    """`g` with its identical layers held once (see the module doc), or `g` unchanged with
    `g.fold_note` saying why not (also logged at SHARDC_DEBUG=1)."""
    if g.repeat is not None:
        return g
    try:
        try:
            out = _fold(g, min_depth)
        except NoLayers:
            split = unstack(g, min_depth)   # a scan over stacked weights: one input per layer first
            if split is None:
                raise
            out = _fold(split, min_depth)
    except NotFolded as e:
        g.fold_note = f"graph {g.name!r} not folded: {e}"
        flags.log(1, g.fold_note)
        return g
    out.folded_from = g   # (partition falls back to it where the per-device program does not repeat)
    flags.log(1, lambda: out.fold_note)
    return out


def _fold(g: Graph, min_depth: int) -> Graph:
    found = {layer_index(p.name) for p in g.inputs} - {None}
    if not found:
        raise NoLayers("no input is a layer's parameter (named layers.{i}. / h.{i}. / blocks.{i}. / ['layers'][i]) "
                       "and none is stacked weights a scan reads step by step")
    depth = max(found) + 1
    if found != set(range(depth)):
        raise NotFolded(f"its layers are not numbered 0..{depth - 1} (missing {sorted(set(range(depth)) - found)[:4]})")
    if depth < min_depth:
        raise NotFolded(f"{depth} layers, fewer than {min_depth}")
    lab = labels(g)
    members: dict[int, list[Node]] = {i: [] for i in range(depth)}   # each layer's values, in order
    params: dict[int, dict[str, Node]] = {i: {} for i in range(depth)}  # its parameters by layer-1 name
    for n in g.nodes:
        i = lab[n]
        if i < 0:
            continue
        if n.op is Op.PARAMETER:
            params[i][rename(n.name, BODY)] = n
        else:
            members[i].append(n)
    place = {n: k for ms in members.values() for k, n in enumerate(ms)}
    place.update({p: name for ps in params.values() for name, p in ps.items()})
    for i in range(2, depth - 1):
        _same_layer(g, i, lab, members, params, place)

    # the folded graph: layers 0, 1, N-2 and N-1 of the capture as layers 0, 1, 2 and 3
    kept = {0: 0, BODY: BODY, depth - 2: NEXT, depth - 1: LAST, -1: -1}
    # what a dropped layer's value is in the folded graph, by who reads it: layer N-2 reads layer
    # N-3 (below it) where layer 1 reads its own values; layer 1 reads layer 2 (above it) where
    # layer N-2 reads its own (at 5 layers, layer 2 is both)
    twin = {depth - 2: {}, BODY: {}}
    for reader, dropped, there in ((depth - 2, depth - 3, BODY), (BODY, 2, depth - 2)):
        twin[reader].update(zip(members[dropped], members[there]))
        twin[reader].update((p, params[there][name]) for name, p in params[dropped].items())
    made: dict[Node, Node] = {}
    nodes, inputs = [], []
    for p in g.inputs:
        if lab[p] in kept:
            made[p] = p if lab[p] < 0 else p.with_inputs((), rename(p.name, kept[lab[p]]))
            inputs.append(made[p])
            nodes.append(made[p])
    live = ancestors(g.outputs)     # (values no output needs, such as unused constants of a trace, are left out)
    for n in g.nodes:   # in the capture's order, each value after those it reads (a layer-1 value
        if lab[n] in kept and n not in made and n in live:   # read by layer N-2 in place of layer N-3's may come later)
            _emit(g, n, made, nodes, twin, lab, kept)
    outputs, names = [], []
    for o, name in zip(g.outputs, g.output_names):
        i = layer_index(name)
        if i is not None and i not in kept:
            continue
        if o not in made:
            raise NotFolded(f"output {name!r} is a value of layer {lab[o]}")
        outputs.append(made[o])
        names.append(name if i is None else rename(name, kept[i]))
    out = Graph(nodes, inputs, outputs, names, g.name, g.mesh_axes, g.bound, g.flatten_args)
    for attr in ("shape_only", "output_tree", "scheduled", "restack"):
        if attr in vars(g):
            setattr(out, attr, getattr(g, attr))
    if hasattr(g, "sharding_constraints"):
        live = {n.name for n in nodes}
        out.sharding_constraints = {k: v for k, v in g.sharding_constraints.items() if k in live}
    out.repeat = Repeat(depth, order=(tuple(g.input_names), tuple(g.output_names)))
    _check_unrolled(g, out)
    out.spec_names = _spec_names(g, out, kept)
    out.fold_note = (f"graph {g.name!r} folded: {depth} identical layers held as 4 ({len(out.nodes)} of "
                     f"{len(g.nodes)} nodes), layers 1..{depth - 3} as one block")
    return out


def _spec_names(g: Graph, folded: Graph, kept: dict) -> dict[str, list[tuple[str, bool]]]:
    """Names a spec may use that the folded graph lacks → the names they stand for there (and
    whether the spec's first entry, a stacked array's layer dim, is dropped): a middle layer's
    inputs and outputs → layer 1's, the last two layers' → layers 2 and 3 (a name the folded
    graph has itself means its own); a scan's stacked array → its pieces (ir/unstack.py)."""
    def there(name: str) -> str:
        i = layer_index(name)
        return name if i is None else rename(name, kept.get(i, BODY))

    out = {name: [(there(name), False)] for name in g.input_names + g.output_names if there(name) != name}
    for name, targets in getattr(g, "spec_names", {}).items():   # (a scan's stacked array: its pieces)
        out[name] = list(dict.fromkeys((there(t), drop) for t, drop in targets))
    return out


def _emit(g: Graph, root: Node, made: dict, nodes: list, twin: dict, lab: dict, kept: dict) -> None:
    """Make kept value `root` (and first what it reads) in the folded graph: it reads what it reads
    in the capture, or where that is in a layer the fold drops (N-3 below layer N-2, 2 above layer
    1), the kept layer's value at its place."""
    def source(n: Node, x: Node) -> Node:
        if lab[x] in kept:
            return x
        if x in twin.get(lab[n], ()):
            return twin[lab[n]][x]
        raise NotFolded(f"{n.describe()} (layer {lab[n]}) reads {x.describe()} of layer {lab[x]}, "
                        "not a neighbouring layer's value")

    stack = [root]
    while stack:
        n = stack[-1]
        if n in made:
            stack.pop()
            continue
        todo = [x for x in (source(n, x) for x in n.inputs) if x not in made]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        made[n] = n.with_inputs(tuple(made[source(n, x)] for x in n.inputs))
        nodes.append(made[n])


def _same_layer(g: Graph, i: int, lab: dict, members: dict, params: dict, place: dict) -> None:
    """Layer i is layer 1's computation node for node (see the module doc), else NotFolded naming
    the first node that differs."""
    if set(params[i]) != set(params[BODY]):
        extra = sorted(set(params[i]) ^ set(params[BODY]))
        raise NotFolded(f"layers {BODY} and {i} have different parameters ({extra[0]!r} is in one only)")
    a_nodes, b_nodes = members[i], members[BODY]
    for k, (a, b) in enumerate(zip(a_nodes, b_nodes)):
        why = _differs(a, b)
        if why is None:
            for s, (x, y) in enumerate(zip(a.inputs, b.inputs)):
                lx, ly = lab[x], lab[y]
                rel = {BODY: i, 0: i - 1, NEXT: i + 1}.get(ly)
                if ly < 0:
                    ok = x is y or (x.op is Op.CONSTANT and _differs(x, y) is None)
                elif rel is None or lx != rel:
                    ok = False
                elif ly == BODY or (ly == NEXT and i + 1 < len(members) - 1):
                    ok = place[x] == place[y]          # its own layer's (or the layer above's) value there
                elif ly == 0 and i >= 3:
                    ok = place[x] == place[members[2][k].inputs[s]]   # as layer 2 reads layer 1
                else:
                    ok = True                          # layer 0 or the last layer: checked unrolled
                if not ok:
                    why = (f"its input {s} is {x.describe()} (layer {lx}) where layer {BODY}'s is "
                           f"{y.describe()} (layer {ly})")
                    break
        if why is not None:
            raise NotFolded(f"layer {i}'s {a.describe()} is not layer {BODY}'s {b.describe()}: {why}")
    if len(a_nodes) != len(b_nodes):
        more, j = (a_nodes, i) if len(a_nodes) > len(b_nodes) else (b_nodes, BODY)
        raise NotFolded(f"layer {i} has {len(a_nodes)} values and layer {BODY} {len(b_nodes)} "
                        f"(layer {j}'s {more[min(len(a_nodes), len(b_nodes))].describe()} has no counterpart)")


def _differs(a: Node, b: Node) -> str | None:
    """Why a and b are not the same operation (None: they are)."""
    if (a.op, a.shape, a.dtype) != (b.op, b.shape, b.dtype):
        return "a different op or type"
    if len(a.inputs) != len(b.inputs):
        return "a different number of operands"
    if a.attrs.keys() != b.attrs.keys():
        return "different attributes"
    for key, v in a.attrs.items():
        w = b.attrs[key]
        if isinstance(v, np.ndarray) or isinstance(w, np.ndarray):
            if not (isinstance(v, np.ndarray) and isinstance(w, np.ndarray) and v.shape == w.shape
                    and v.dtype == w.dtype and np.array_equal(v, w)):
                return f"attribute {key!r} differs"
        elif not _equal(v, w):
            return f"attribute {key!r} differs ({v!r} vs {w!r})"
    return None


def _equal(v, w) -> bool:
    try:
        return bool(v == w) and type(v) is type(w)
    except (TypeError, ValueError):
        return repr(v) == repr(w)


def _check_unrolled(g: Graph, folded: Graph) -> None:
    """The folded graph's whole program is the capture node for node (the values no output needs
    aside), with the same inputs and outputs in the same order."""
    try:
        whole = unroll(folded).graph
    except IRError as e:
        raise NotFolded(str(e)) from None
    if whole.input_names != g.input_names or whole.output_names != g.output_names:
        raise NotFolded("its inputs or outputs do not unroll to the capture's")
    corr: dict[Node, Node] = dict(zip(g.inputs, whole.inputs))
    mine: dict[Node, Node] = {}
    for o, w in zip(g.outputs, whole.outputs):
        stack = [(o, w)]
        while stack:
            a, b = stack.pop()
            if a in corr:
                if corr[a] is not b:
                    raise NotFolded(f"{a.describe()} unrolls to two different values")
                continue
            if b in mine and b.op is not Op.CONSTANT:   # (equal shared constants may become one)
                raise NotFolded(f"{b.describe()} unrolls from two values ({a.describe()})")
            why = _differs(a, b)
            if why is not None:
                raise NotFolded(f"{a.describe()} unrolls to {b.describe()} ({why})")
            corr[a], mine[b] = b, a
            stack.extend(zip(a.inputs, b.inputs))
