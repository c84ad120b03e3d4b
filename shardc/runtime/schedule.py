"""The per-device step list every engine runs: ops in program order, each collective started as
soon as its operand exists and waited on only just before its first use, so that independent ops
run while it is in flight. Every rank derives the same list from the same program, so all ranks
issue collectives in one global order (no deadlock with asynchronous collectives).

A compiled launch plan (codegen) will later replace runs of "op" steps by "kernel" steps; the
executors only need each step's kind, the node(s) it produces and what it reads."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node, Op
from ..ir.ops import COLLECTIVES


@dataclass(frozen=True)
class Step:
    kind: str       # "op" | "start" (issue a collective) | "wait" (its result is needed next)
    node: Node
    index: int      # the node's position in the local program (for traces and error reports)

    def __repr__(self) -> str:
        return f"{self.kind} #{self.index} {self.node.op.value}"


def schedule(g: Graph) -> list[Step]:
    """Steps for `g`: every op once in program order, every collective started once and waited
    once, each wait before the first step that reads the value."""
    index = {n: i for i, n in enumerate(g.nodes)}
    steps: list[Step] = []
    pending: set[Node] = set()    # started, not waited
    done: set[Node] = set()       # values that exist
    readers: dict[Node, list[Node]] = {}
    for n in g.nodes:
        if n.op in COLLECTIVES:
            readers.setdefault(n.inputs[0], []).append(n)

    def have(v: Node):
        """v's value exists: start every collective that reads it, right away."""
        done.add(v)
        for c in readers.get(v, ()):
            if c not in pending and c not in done:
                steps.append(Step("start", c, index[c]))
                pending.add(c)

    def need(v: Node):
        if v in done:
            return
        if v not in pending:  # (only collectives can be missing here)
            need(v.inputs[0])  # (when that was a collective, waiting on it started v)
        if v not in pending:
            steps.append(Step("start", v, index[v]))
            pending.add(v)
        steps.append(Step("wait", v, index[v]))
        pending.discard(v)
        have(v)

    for p in g.inputs:
        have(p)
    for n in g.nodes:
        if n.op is Op.PARAMETER or n.op in COLLECTIVES:
            continue  # collectives start as soon as their operand exists
        for i in dict.fromkeys(n.inputs):
            need(i)
        steps.append(Step("op", n, index[n]))
        have(n)
    for o in dict.fromkeys(g.outputs):
        need(o)
    while pending:  # results nobody reads: still complete them
        need(min(pending, key=index.get))
    return steps
