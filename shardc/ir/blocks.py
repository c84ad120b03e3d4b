"""Repeated blocks: a model of `depth` identical layers held as four of them, one standing for all
the middle ones.

A graph with `g.repeat = Repeat(depth)` holds layers 0, 1, 2 and 3 (by parameter name:
`layers.{i}.`, `h.{i}.`, `blocks.{i}.`) of a model that has `depth` of them: layer 0 and the
last two are themselves (layers 0, depth-2, depth-1) and layer 1 is the block body, which stands
for layers 1 .. depth-3. Everything is partitioned, passed and analyzed once per block; what needs
the whole program (codegen, the engines, simulate, evaluate) takes `unroll(g, repeat)`, which
instantiates the body `depth - 3` times.

Which layer a value belongs to comes from dataflow, on the global graph and on the per-device
program alike (`labels`): a value is in layer i when i is both the last layer whose parameters it
depends on (the forward) and, in a training step, the last layer whose outputs it reaches (the
backward: layer i's gradients flow to layers i, i-1, ..., 0; an update reaches only its own
parameter). Values of no
layer that only one layer reads (a layer's constants) are that layer's. Layers 1 and 2 must then
be the same computation node for node; layer 2 is also how a copy reads its neighbours: where
layer 1 reads a value of layer 0 (its input), copy c reads copy c-1's value that layer 2 reads in
that place, and where layer 1 reads layer 2 (the gradient from above), copy c reads copy c+1's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import IRError
from .graph import Graph, Node, ancestors
from .ops import Op

# "layers.3.", "h.3.", "blocks.3." (module paths, flat dicts) or "['layers'][3]" (a pytree's list)
LAYER = re.compile(r"(?:^|[.\['\"])(?:layers|h|blocks)(?:\.|['\"]\]\[)(\d+)[.\]]")
CAPTURED = 4          # layers a repeated graph holds: first, body, the body's successor, last
BODY, NEXT, LAST = 1, 2, 3


def layer_index(name: str | None) -> int | None:
    m = LAYER.search(name or "")
    return int(m.group(1)) if m else None


def rename(name: str, layer: int) -> str:
    """`name` with its layer index replaced by `layer`."""
    m = LAYER.search(name)
    return name[:m.start(1)] + str(layer) + name[m.end(1):]


@dataclass(frozen=True)
class Repeat:
    """The graph holds layers 0..3 of a model with `depth` identical layers (see the module doc).
    `flatten_args`: the full model's arguments → the unrolled graph's input arrays. `order`:
    the whole program's (input names, output names) when it had them in another order than the
    unroller makes (a folded capture, ir/fold.py: its arguments and results stay the capture's)."""
    depth: int
    flatten_args: object = None
    order: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.depth < CAPTURED:
            raise IRError(f"a repeated graph stands for at least {CAPTURED} layers, not {self.depth}")

    @property
    def copies(self) -> int:
        """Instances of the body in the whole program."""
        return self.depth - (CAPTURED - 1)

    def layer_of(self, captured: int, copy: int = 1) -> int:
        """The unrolled layer index of captured layer `captured` (for the body: of its `copy`)."""
        return {0: 0, BODY: copy, NEXT: self.depth - 2, LAST: self.depth - 1}[captured]


def labels(g: Graph) -> dict[Node, int]:
    """Node → its layer index (-1: no layer), by dataflow (see the module doc)."""
    up: dict[Node, int] = {}
    for n in g.nodes:
        if n.op is Op.PARAMETER:
            i = layer_index(n.name)
            up[n] = -1 if i is None else i
        else:
            up[n] = max((up[i] for i in n.inputs), default=-1)
    down: dict[Node, int] = {}
    for o, name in zip(g.outputs, g.output_names):
        i = layer_index(name)
        down[o] = max(down.get(o, -1), -1 if i is None else i)
    users: dict[Node, list[Node]] = {}
    for n in reversed(g.nodes):
        for i in n.inputs:
            users.setdefault(i, []).append(n)
            if n in down and (i not in down or down[i] < down[n]):
                down[i] = down[n]
    live = set(down)   # the values some output needs (the partitioner may leave others)
    if all(layer_index(name) is None for name in g.output_names):   # a forward: no layer's own outputs
        down = {}
    out = {}
    for n in g.nodes:   # (a value no output reads, left by the partitioner: where it comes from)
        out[n] = up[n] if n.op is Op.PARAMETER else min(up[n], down.get(n, up[n]))
    for n in reversed(g.nodes):   # a layer's own constants and the values only it reads
        if out[n] == -1 and n.op is not Op.PARAMETER and n in users and n not in g.outputs:
            seen = {out[u] for u in users[n] if u in live}
            if len(seen) == 1 and min(seen) >= 0:
                out[n] = seen.pop()
    return _windows(g, out)


def _windows(g: Graph, lab: dict[Node, int]) -> dict[Node, int]:
    """A value of a neighbouring layer that sits inside a layer's stretch of the program (the
    residual gradient a layer's backward adds first, a prefetched gather of the next layer's
    weight) goes with that stretch: the program then repeats stretch by stretch."""
    seq = [n for n in g.nodes if n.op is not Op.PARAMETER and lab[n] >= 0]
    out = dict(lab)
    for k in range(1, len(seq) - 1):
        m, here = lab[seq[k - 1]], lab[seq[k]]
        if lab[seq[k + 1]] == m and abs(m - here) == 1:
            out[seq[k]] = m
    return out


def _signature(n: Node):
    return (n.op, n.shape, n.dtype, tuple(sorted((k, repr(v)) for k, v in n.attrs.items())))


def _pair_by_structure(g: Graph, lab: dict, body: list[Node], nxt: list[Node]) -> list[Node]:
    """Layer 2's values in the order of their counterparts in layer 1, where the two layers are
    the same computation in different orders (the partitioner may emit a layer's re-broadcast of
    a weight at another place in one layer than in the next): values pair up by what they compute
    from their layer's parameters and values, and from which neighbour's values of what type."""
    ids: dict = {}

    def key(n: Node, layer: int, own: dict):
        parts = []
        for x in n.inputs:
            lx = lab[x]
            if lx == layer:
                parts.append(("p", rename(x.name, BODY)) if x.op is Op.PARAMETER else own[x])
            elif lx < 0:
                parts.append(("shared", id(x)))
            else:
                parts.append((lx - layer, _signature(x)))
        return ids.setdefault((_signature(n), tuple(parts)), len(ids))

    keyed = []
    for layer, values in ((BODY, body), (NEXT, nxt)):
        own: dict = {}
        for n in values:
            own[n] = key(n, layer, own)
        keyed.append(own)
    waiting: dict = {}
    for n in nxt:
        waiting.setdefault(keyed[1][n], []).append(n)
    for k in waiting.values():
        k.reverse()
    out = []
    for n in body:
        left = waiting.get(keyed[0][n])
        if not left:
            raise IRError(f"graph {g.name!r}: layers {BODY} and {NEXT} are not the same computation (layer "
                          f"{BODY}'s {n.describe()} has no counterpart), so layer 1 cannot stand for the middle layers")
        out.append(left.pop())
    _hand_to_last(g, lab, {n for v in waiting.values() for n in v})
    return out


def _hand_to_last(g: Graph, lab: dict, extra: set) -> None:
    """Values of layer 2 without a counterpart in layer 1 that only the last layer reads are the
    last layer's (the partitioner prepares layer 2's output for the last layer's own needs: a
    residual masked to one device to keep a sum pending into the head)."""
    if not extra:
        return
    users = g.users()
    outputs = set(g.outputs)
    for n in reversed(g.nodes):
        if n in extra:
            if n in outputs or not users[n] or any(lab[u] != LAST for u in users[n]):
                raise IRError(f"graph {g.name!r}: layers {BODY} and {NEXT} are not the same computation (layer "
                              f"{NEXT}'s {n.describe()} has no counterpart), so layer 1 cannot stand for the middle layers")
            lab[n] = LAST


class _Unroller:
    def __init__(self, g: Graph, repeat: Repeat):
        self.g, self.repeat, self.r = g, repeat, repeat.copies
        self.lab = lab = labels(g)
        live = ancestors(g.outputs)   # (values no output needs, left by the partitioner, are not unrolled)
        body = [n for n in g.nodes if lab[n] == BODY and n.op is not Op.PARAMETER and n in live]
        nxt = [n for n in g.nodes if lab[n] == NEXT and n.op is not Op.PARAMETER and n in live]
        if len(body) != len(nxt) or any(_signature(a) != _signature(b) for a, b in zip(body, nxt)):
            nxt = _pair_by_structure(g, lab, body, nxt)
        self.twin = dict(zip(body, nxt))
        self.back = dict(zip(nxt, body))
        params = {p.name: p for p in g.inputs}
        for p in g.inputs:
            if lab[p] == BODY:
                q = params.get(rename(p.name, NEXT))
                if q is None:
                    raise IRError(f"graph {g.name!r}: {p.name!r} has no counterpart in layer {NEXT}")
                self.twin[p] = q
                self.back[q] = p

    def check(self, a: Node, s: int, x: Node) -> None:
        """Layer 2 reads, at the place where layer 1 reads x, what a copy's neighbour reads."""
        y, lx = self.twin[a].inputs[s], self.lab[x]
        ok = (y is self.twin.get(x) if lx == BODY else self.lab[y] == BODY if lx == 0 else
              self.lab[y] == LAST if lx == NEXT else y is x)
        if not ok:
            raise IRError(f"graph {self.g.name!r}: layer {NEXT}'s {self.twin[a].describe()} does not read its "
                          f"neighbours as layer {BODY}'s {a.describe()} does (input {s})")

    def run(self) -> tuple[Graph, dict]:
        g, lab, r, rep = self.g, self.lab, self.r, self.repeat
        made: dict = {}     # (node, copy or 0) → new node

        def param(p: Node, c: int) -> Node:
            layer = lab[p]
            name = p.name if layer < 0 else rename(p.name, rep.layer_of(layer, c))
            return p.with_inputs((), name)

        inputs, input_from, position = [], [], {p: k for k, p in enumerate(g.inputs)}
        for group in _groups(g.inputs, lambda p: lab[p] == BODY):
            for c in (range(1, r + 1) if lab[group[0]] == BODY else (0,)):
                for p in group:
                    made[(p, c)] = param(p, c)
                    inputs.append(made[(p, c)])
                    input_from.append(position[p])

        plans: dict = {}    # body value → what its copy c reads: a node of copy c + delta, or one node

        def copy(a: Node, c: int) -> Node:
            """Copy c of body value a; what it reads first, where a copy made out of its stretch's
            order reads it (a scan's backward reading a value its forward recomputes)."""
            stack = [(a, c)]
            while stack:
                a, c = stack[-1]
                if (a, c) in made:
                    stack.pop()
                    continue
                if a not in plans:
                    plans[a] = [self._source(a, s, x) for s, x in enumerate(a.inputs)]
                need = [(y, c + d) for x, y, d in plans[a] if 1 <= c + d <= r and (y, c + d) not in made]
                if need:
                    stack.extend(need)
                    continue
                stack.pop()
                made[(a, c)] = a.with_inputs(tuple([made[(x, 0)] if not 1 <= c + d <= r else made[(y, c + d)]
                                                    for x, y, d in plans[a]]))
                nodes.append(made[(a, c)])
            return made[(a, c)]

        def read(n: Node, c: int, s: int, x: Node) -> Node:
            lx, ln = lab[x], lab[n]
            if lx == BODY:
                if ln in (0, NEXT):
                    return copy(x, 1 if ln == 0 else r)
                raise IRError(f"graph {g.name!r}: {n.describe()} (layer {ln}) reads the body's {x.describe()}")
            return made[(x, 0)]

        nodes = list(inputs)
        live = ancestors(g.outputs)   # values no output needs (the partitioner leaves some) go
        order = [n for n in g.nodes if n.op is not Op.PARAMETER and n in live]
        k = 0
        while k < len(order):
            n = order[k]
            if lab[n] != BODY:
                made[(n, 0)] = n.with_inputs(tuple([read(n, 0, s, x) for s, x in enumerate(n.inputs)]))
                nodes.append(made[(n, 0)])
                k += 1
                continue
            run = []   # the body's stretch; values of no layer inside it come first, once
            while k < len(order) and lab[order[k]] in (BODY, -1):
                j = k
                while j < len(order) and lab[order[j]] == -1:
                    j += 1
                if j == len(order) or lab[order[j]] != BODY:
                    break
                for n in order[k:j]:
                    made[(n, 0)] = n.with_inputs(tuple([read(n, 0, s, x) for s, x in enumerate(n.inputs)]))
                    nodes.append(made[(n, 0)])
                run.append(order[j])
                k = j + 1
            step = self._direction(run)
            for c in (range(1, r + 1) if step > 0 else range(r, 0, -1)):
                for a in run:
                    copy(a, c)
        outputs, names, output_from = [], [], []
        for group in _groups(list(enumerate(zip(g.outputs, g.output_names))), lambda kon: layer_index(kon[1][1]) == BODY):
            for c in (range(1, r + 1) if layer_index(group[0][1][1]) == BODY else (0,)):
                for k, (o, name) in group:
                    output_from.append(k)
                    layer = layer_index(name)
                    if (lab[o] == BODY) != (layer == BODY):
                        raise IRError(f"graph {g.name!r}: output {name!r} is a value of layer {lab[o]}")
                    outputs.append(made[(o, c)])
                    names.append(name if layer is None else rename(name, rep.layer_of(layer, c)))
        if rep.order is not None:
            inputs, input_from, outputs, names, output_from = _reorder(rep.order, inputs, input_from,
                                                                       outputs, names, output_from)
        flatten = rep.flatten_args or g.flatten_args
        if hasattr(flatten, "for_inputs"):   # by name: the whole model's arguments
            flatten = flatten.for_inputs([p.name for p in inputs if p.name not in g.bound])
        out = Graph(nodes, inputs, outputs, names, g.name, g.mesh_axes, g.bound, flatten)
        out.shape_only = g.shape_only
        out.scheduled = g.scheduled
        return Unrolled(out, made, input_from, output_from)

    def _source(self, a: Node, s: int, x: Node) -> tuple[Node, Node, int]:
        """What a copy c of body value `a` reads as input s (x in the repeated graph): copy
        c + delta's value y, or (out of the copies' range, or delta None) x itself."""
        lx = self.lab[x]
        if lx == BODY:
            return x, x, 0
        if lx == 0:                  # the layer below: copy c-1's value that layer 2 reads here
            return x, self.twin[a].inputs[s], -1
        if lx == NEXT:               # the layer above: copy c+1's counterpart of layer 2's value
            return x, self.back[x], 1
        if lx >= 0:
            raise IRError(f"graph {self.g.name!r}: {a.describe()} of layer {BODY} reads layer {lx}")
        return x, x, -(10 ** 9)      # no layer's: the one value

    def _direction(self, run: list[Node]) -> int:
        """+1: copies in layer order (copy c reads what copy c-1 makes in this stretch: a
        forward), -1: downward (it reads copy c+1's: a backward); else in layer order."""
        lab, step, here = self.lab, 0, set(run)
        for a in run:
            for s, x in enumerate(a.inputs):
                self.check(a, s, x)
                if x.op is Op.PARAMETER:    # there from the start, in every copy
                    continue
                want = (1 if lab[x] == 0 and self.twin[a].inputs[s] in here else
                        -1 if lab[x] == NEXT and self.back[x] in here else 0)
                if want and step and want != step:
                    raise IRError(f"graph {self.g.name!r}: {a.describe()} reads both the layer below and the "
                                  "layer above the body, so no order of its copies works")
                step = step or want
        return step or 1


def _groups(items: list, in_body) -> list[list]:
    """Consecutive items grouped by whether they belong to the body (its inputs and outputs are
    instantiated group by group: layer 1's, then layer 2's, ...)."""
    out: list[list] = []
    for x in items:
        if out and in_body(x) and in_body(out[-1][0]):
            out[-1].append(x)
        else:
            out.append([x])
    return out


def _reorder(order, inputs, input_from, outputs, names, output_from):
    """Inputs and outputs in the whole program's own order (`Repeat.order`)."""
    at = {p.name: k for k, p in enumerate(inputs)}
    ins = [at[n] for n in order[0]]
    at = {n: k for k, n in enumerate(names)}
    outs = [at[n] for n in order[1]]
    return ([inputs[k] for k in ins], [input_from[k] for k in ins], [outputs[k] for k in outs],
            list(order[1]), [output_from[k] for k in outs])


class Unrolled(NamedTuple):
    graph: Graph            # the whole program
    made: dict              # (node of the repeated graph, copy) → its node there; copy 1..copies
                            # for the body's values, 0 for the others
    input_from: list[int]   # each input's position in the repeated graph's inputs
    output_from: list[int]  # each output's position in its outputs


def unroll(g: Graph, repeat: Repeat | None = None) -> Unrolled:
    """The whole program of a repeated graph (`g` itself when it is not repeated), without the
    values no output needs."""
    repeat = repeat or getattr(g, "repeat", None)
    if repeat is None:
        return Unrolled(g, {(n, 0): n for n in g.nodes}, list(range(len(g.inputs))), list(range(len(g.outputs))))
    return _Unroller(g, repeat).run()


def multiplicity(g: Graph, repeat: Repeat | None) -> dict[Node, int]:
    """How many times each value of `g` occurs in the whole program: the body's `copies` times,
    the others once (what the ledger and the analysis multiply by)."""
    if repeat is None:
        return {n: 1 for n in g.nodes}
    lab = labels(g)
    return {n: repeat.copies if lab[n] == BODY else 1 for n in g.nodes}
