"""Fusion planning once per repeated block.

A repeated program (ir/blocks.py) unrolled for codegen runs its block body `copies` times, and
planning every copy again makes codegen linear in depth. Instead the planner runs on a short
instance of the same program, `PROBE` body copies deep, and its steps stand for the whole
program's by where they write (their home copy):
- a step of no body copy (layer 0, the last two layers, values of no layer) is the whole
  program's, once; so is a step that writes outside the body and reads its first or last copy;
- a step homed in the first or last copy stands for the whole program's first or last copy (next
  to layer 0, and to layer depth-2: fusion reaches across a layer's edge, so these differ);
- a step homed in copy 2 stands for every copy in between, shifted, reading the copy below and
  above it as copy 2 reads copies 1 and 3.
The planner places steps and merges neighbours by program order, so the short instance is
ordered as the whole program is: where the latency-hiding scheduler reordered the unrolled
program, its copies 1, 2, 3 and 4 take the order of the whole program's first, two middle and
last copies, and a replicated group lists its values in the whole program's order.
Replicating assumes that the planner's choices in a middle copy do not depend on how many copies
there are. The short instance checks it: its two middle copies (2 and 3) must plan the same up to
the shift, every value a step reads must be written by one, and the steps must order without a
cycle; where not, the whole program is planned instead. The launches are then those of planning
the whole program, except where the planner's merging of neighbouring row groups (within a few
steps of each other) sees other neighbours in the short instance than in the whole program: an
Adam step's updates of the parameters outside the block may merge differently (Llama small, 12
layers: one launch fewer than planning the whole program).
"""
from __future__ import annotations

from collections import Counter

from ..ir import Graph, Node, Op
from ..ir.blocks import CAPTURED, Repeat, unroll
from ..errors import Error
from ..flags import log
from .fusion import CollectiveStep, FusionGroup, ViewStep
from .plan_order import topological

PROBE = 4   # body copies planned: the first, two middle ones (2 and 3, compared), the last


def plan_once_per_block(prog, whole, plan) -> list[tuple] | None:
    """[(step, share)] for `whole.local` (the unrolled program of `prog`, whose `repeat` is
    set), planned by `plan(graph) -> steps` on a short instance: steps with the same `share`
    (not None) are copies of one step of the short instance listing their values alike, so their
    kernel text is the same. None where the whole program must be planned itself (see the
    module doc)."""
    rep, u = prog.repeat, getattr(whole, "unrolled_local", None)
    if rep is None or u is None or rep.copies <= PROBE:
        return None
    short = unroll(prog.local, Repeat(CAPTURED - 1 + PROBE))
    r, made = rep.copies, u.made
    order = {n: i for i, n in enumerate(whole.local.nodes)}
    if whole.local is not u.graph:   # reordered (the scheduler): the short instance in the same order
        stands = {1: 1, 2: r // 2, 3: r // 2 + 1, PROBE: r}   # its copies → the whole program's
        at = {m: order[made[(n, stands[c] if c else 0)]] for (n, c), m in short.made.items()}
        g = short.graph
        short = short._replace(graph=Graph(sorted(g.nodes, key=at.__getitem__), g.inputs, g.outputs, g.output_names,
                                           g.name, g.mesh_axes, g.bound, g.flatten_args))
    steps = plan(short.graph)
    where = {m: key for key, m in short.made.items()}   # short instance's node → (block node, copy)
    homes: dict = {}
    for s in steps:
        home = _home(s, where)
        if home is None:
            return _refuse(f"a step writes outside the body and in its middle copies: {s}")
        homes.setdefault(home, []).append(s)
    middle, after = homes.get(2, []), homes.get(3, [])
    if Counter(_signature(s, where, 2) for s in middle) != Counter(_signature(s, where, 3) for s in after):
        return _refuse("the short instance's middle copies plan differently")
    out = []
    for home, group in homes.items():
        if home == 3:
            continue
        shifts = (range(0, r - 2) if home == 2 else (r - PROBE,) if home in (PROBE, "end") else (0,))
        for d in shifts:
            for k, s in enumerate(group):
                step, listed = _instance(s, where, made, d, order)
                out.append((step, (k, listed) if home == 2 else None))
    if len(out) != len(steps) - len(after) + (r - 3) * len(middle):
        return _refuse("replicated steps do not add up")
    written = {w for s, _ in out for w in s.writes}
    if any(x not in written and x.op not in (Op.PARAMETER, Op.CONSTANT) for s, _ in out for x in s.reads):
        return _refuse("a replicated step reads a value no step writes")
    out.sort(key=lambda st: _position(st[0], order))
    by_id = {id(s): t for s, t in out}
    try:
        return [(s, by_id[id(s)]) for s in topological([s for s, _ in out])]
    except Error:   # (a merge the short instance made that the whole program's order forbids)
        return _refuse("the replicated steps depend on each other in a cycle")


def _refuse(why: str) -> None:
    log(1, f"codegen: planning every copy of the repeated block ({why})")
    return None


def _nodes(s) -> list[Node]:
    if isinstance(s, FusionGroup):
        return [*s.roots, *s.nodes, *s.inputs] + ([s.anchor] if s.anchor is not None else [])
    return [s.node, *s.reads]


def _home(s, where) -> int | str | None:
    """The body copy `s` writes in (its last); for a step writing outside the body (0: it reads
    none), "start" or "end" when it reads the first or last copies only (fusion across the
    edge of layer 0 or layer depth-2); None when it cannot stand for the whole program's steps."""
    written = {where[w][1] for w in s.writes}
    if 0 not in written:
        return max(written)
    touched = {where[x][1] for x in _nodes(s)} - {0}
    if not touched:
        return 0
    return "start" if touched <= {1, 2} else "end" if touched <= {PROBE - 1, PROBE} else None


def _signature(s, where, home: int) -> tuple:
    """What `s` computes relative to its home copy (its values as block node and copy offset; a
    group's values as sets: a reordered program may list a copy's values in another order)."""
    def rel(x):
        n, c = where[x]
        return n, (c - home if c else None)
    if isinstance(s, FusionGroup):
        return (s.kind, s.reason, tuple(map(rel, s.roots)), frozenset(map(rel, s.nodes)), frozenset(map(rel, s.inputs)),
                None if s.anchor is None else rel(s.anchor), _frozen(_map(s.pattern, rel)))
    return (s.step, tuple(map(rel, [s.node, *s.reads])))


def _frozen(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return frozenset(v)
    if isinstance(v, (list, tuple)):
        return tuple(map(_frozen, v))
    return v


def _instance(s, where, made, shift: int, order: dict) -> tuple:
    """(step `s` of the short instance in the whole program, its body copies shifted by `shift`;
    how it lists its values, as positions in `s`'s lists). A group lists its nodes and inputs
    in the whole program's order, as the planner does: a reordered program (the scheduler's)
    need not order a copy's values as the short instance does, and the kernel text follows."""
    def at(x):
        n, c = where[x]
        return made[(n, c + shift if c else 0)]

    def listed(xs):
        xs = [at(x) for x in xs]
        ks = sorted(range(len(xs)), key=lambda k: order[xs[k]])
        return [xs[k] for k in ks], tuple(ks)
    if isinstance(s, FusionGroup):
        (nodes, kn), (inputs, ki) = listed(s.nodes), listed(s.inputs)
        return (FusionGroup(s.kind, [at(x) for x in s.roots], nodes, inputs, s.reason,
                            None if s.anchor is None else at(s.anchor), _map(s.pattern, at)), (kn, ki))
    if isinstance(s, CollectiveStep):
        return CollectiveStep(at(s.node)), ()
    return ViewStep(at(s.node), at(s.source)), ()


def _map(v, f):
    """`v` (a group's pattern: nodes, in dicts, lists, tuples and sets) with each node x as f(x)."""
    if isinstance(v, Node):
        return f(v)
    if isinstance(v, dict):
        return {k: _map(x, f) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return type(v)(_map(x, f) for x in v)
    return v


def _position(s, order) -> int:
    """Where the planner places a step: at its last written value."""
    return max(order[w] for w in s.writes)
