"""What the collective passes share: their report, making a node with inferred shape, rewriting
the per-device program (nodes replaced at their place, dead ones dropped) and re-linking the
collective ledger to the rewritten program."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..ir import Graph, Node, Op
from ..ir.ops import COLLECTIVES
from ..ir.shapes import infer
from .program import CollectiveRecord, SpmdProgram


@dataclass(frozen=True)
class PassReport:
    """What one pass changed: collectives before and after, and a line for people."""
    name: str
    before: int
    after: int
    summary: str

    def __str__(self) -> str:
        return f"{self.name}: {self.summary} ({self.before} → {self.after} collectives)"


def make_node(op: Op, inputs, source=None, name=None, mesh_axes=None, **attrs) -> Node:
    shape, dtype = infer(op, inputs, attrs, mesh_axes=mesh_axes)
    return Node(op, inputs, attrs, shape, dtype, source, name)


def users_of(g: Graph) -> dict[Node, list[Node]]:
    users: dict[Node, list[Node]] = {n: [] for n in g.nodes}
    for n in g.nodes:
        for i in dict.fromkeys(n.inputs):
            users[i].append(n)
    return users


Replacement = Callable[[dict], tuple[list[Node], Node]]  # new-node map → (nodes made, result)


def rewrite(g: Graph, replace_at: dict[Node, Replacement]) -> tuple[Graph, dict[Node, Node]]:
    """`g` with each node of `replace_at` replaced, at its place in program order, by the nodes its
    function makes (from the rewritten inputs, `new[old]`); every other node keeps its place (copied
    when an input changed). Nodes nothing needs any more are dropped. Returns the graph and old →
    new."""
    new: dict[Node, Node] = {}
    nodes: list[Node] = []
    for n in g.nodes:
        if n in replace_at:
            made, new[n] = replace_at[n](new)
            nodes += made
            continue
        ins = tuple(new[i] for i in n.inputs)
        m = n if all(a is b for a, b in zip(ins, n.inputs)) else Node(n.op, ins, n.attrs, n.shape, n.dtype,
                                                                       n.source, n.name)
        new[n] = m
        nodes.append(m)
    outputs = [new[o] for o in g.outputs]
    live = set(outputs)
    for n in reversed(nodes):
        if n in live:
            live.update(n.inputs)
    inputs = [new[p] for p in g.inputs]
    live.update(inputs)
    kept = [n for n in nodes if n in live]
    return Graph(kept, inputs, outputs, g.output_names, g.name, g.mesh_axes, g.bound, g.flatten_args), new


def relink(prog: SpmdProgram, new: dict[Node, Node], replaced: dict | None = None) -> list[CollectiveRecord]:
    """The ledger after a rewrite: each record follows its node; `replaced` maps an old node to
    the record(s) that stand for it now; a record whose node is gone, or became one another
    record already holds, is dropped."""
    live = {id(n) for n in prog.local.nodes if n.op in COLLECTIVES}
    out, held = [], set()
    for r in prog.collectives:
        if replaced and r.node in replaced:
            recs = replaced[r.node]
        else:
            m = new.get(r.node, r.node)
            recs = [replace(r, node=m)] if m is not None else []
        for rec in recs:
            if id(rec.node) in live and id(rec.node) not in held:
                held.add(id(rec.node))
                out.append(rec)
    return out
