"""The per-device step list every engine runs: ops in program order, each collective started as
soon as its operand exists and waited on only just before its first use, so that independent ops
run while it is in flight. In a scheduled program (`g.scheduled`, by the latency-hiding scheduler
of partition/passes_schedule.py) a collective starts at its own place in the order instead: the
scheduler chose that place (to bound memory, to queue the link in critical-path order). Every
rank derives the same list from the same program, so all ranks issue collectives in one global
order (no deadlock with asynchronous collectives).

A compiled launch plan (codegen) is scheduled the same way by `schedule_plan`: "kernel" and
"view" steps in plan order, collectives started early and waited late."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, Op
from ..ir.ops import COLLECTIVES


@dataclass(frozen=True)
class Step:
    kind: str       # "op" | "start" (issue a collective) | "wait" (its result is needed next)
    node: Node
    index: int      # the node's position in the local program (for traces and error reports)

    def __repr__(self) -> str:
        return f"{self.kind} #{self.index} {self.node.op.value}"

    @property
    def reads(self) -> tuple[Node, ...]:
        """What the step reads (an engine frees a value after its last reader); a wait reads nothing new."""
        return () if self.kind == "wait" else self.node.inputs


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
            for i in dict.fromkeys(n.inputs):
                readers.setdefault(i, []).append(n)

    def have(v: Node):
        """v's value exists: start every collective that reads it (all it reads exists), right away
        (unscheduled programs)."""
        done.add(v)
        for c in () if g.scheduled else readers.get(v, ()):
            if c not in pending and c not in done and all(i in done for i in c.inputs):
                steps.append(Step("start", c, index[c]))
                pending.add(c)

    def need(v: Node):
        if v in done:
            return
        if v not in pending:  # (only collectives can be missing here)
            for i in dict.fromkeys(v.inputs):
                need(i)  # (when that was a collective, waiting on it started v)
        if v not in pending:
            steps.append(Step("start", v, index[v]))
            pending.add(v)
        steps.append(Step("wait", v, index[v]))
        pending.discard(v)
        have(v)

    for p in g.inputs:
        have(p)
    for n in g.nodes:
        if g.scheduled and n.op in COLLECTIVES and n not in pending and n not in done:
            for i in dict.fromkeys(n.inputs):
                need(i)
            steps.append(Step("start", n, index[n]))  # a scheduled collective starts at its place
            pending.add(n)
        if n.op is Op.PARAMETER or n.op in COLLECTIVES:
            continue  # (unscheduled) collectives start as soon as their operands exist
        for i in dict.fromkeys(n.inputs):
            need(i)
        steps.append(Step("op", n, index[n]))
        have(n)
    for o in dict.fromkeys(g.outputs):
        need(o)
    while pending:  # results nobody reads: still complete them
        need(min(pending, key=index.get))
    return steps


@dataclass(frozen=True, eq=False)
class PlanStep:
    """One step of a compiled launch plan on a rank: kind "kernel" | "view" | "start" | "wait";
    `node` is what it produces (a kernel's first output), `index` that node's position in the
    local program (traces, status, faults), `item` the plan entry (KernelLaunch / ViewStep /
    CollectiveStep)."""
    kind: str
    node: Node
    index: int
    item: object

    def __repr__(self) -> str:
        return f"{self.kind} #{self.index} {self.node.op.value}"

    @property
    def reads(self) -> tuple[Node, ...]:
        """The plan entry's reads (a wait reads nothing new)."""
        return () if self.kind == "wait" else tuple(self.item.reads)


def schedule_plan(plan: list, g: Graph) -> list[PlanStep]:
    """`schedule` for a compiled launch plan of the per-device program `g`: kernels and views in
    plan order, each collective started as soon as its operand exists and waited on just before
    its first reader. Every rank derives the same list (one global collective order)."""
    from ..errors import Error
    index = {n: i for i, n in enumerate(g.nodes)}
    colls = {s.node: s for s in plan if s.step == "collective"}
    steps: list[PlanStep] = []
    pending: set[Node] = set()
    done: set[Node] = set()
    readers: dict[Node, list[Node]] = {}
    for c in colls:
        readers.setdefault(c.inputs[0], []).append(c)

    def have(v: Node):
        done.add(v)
        for c in () if g.scheduled else readers.get(v, ()):
            if c not in pending and c not in done:
                steps.append(PlanStep("start", c, index[c], colls[c]))
                pending.add(c)

    def need(v: Node):
        if v in done:
            return
        if v not in colls:
            raise Error(f"launch plan: nothing produces {v.describe()}")
        if v not in pending:
            need(v.inputs[0])
        if v not in pending:
            steps.append(PlanStep("start", v, index[v], colls[v]))
            pending.add(v)
        steps.append(PlanStep("wait", v, index[v], colls[v]))
        pending.discard(v)
        have(v)

    for n in g.nodes:
        if n.op is Op.PARAMETER or (n.op is Op.CONSTANT and isinstance(n.attrs["value"], np.ndarray)):
            have(n)  # buffer leaves (codegen's is_buffer_leaf): there before any step
    for s in plan:
        if s.step == "collective":
            c = s.node
            if g.scheduled and c not in pending and c not in done:  # starts at its place
                for i in dict.fromkeys(c.inputs):
                    need(i)
                steps.append(PlanStep("start", c, index[c], s))
                pending.add(c)
            continue  # (unscheduled: started by have()); waited by need()
        for r in dict.fromkeys(s.reads):
            need(r)
        out = s.writes
        steps.append(PlanStep(s.step, out[0], index[out[0]], s))
        for o in out:
            have(o)
    for o in dict.fromkeys(g.outputs):
        need(o)
    while pending:
        need(min(pending, key=index.get))
    return steps
