"""Gradients of a parameter used on two stages (a tied embedding and LM head), accumulated on each
and sent once per step, as Megatron-LM all-reduces the embedding gradient between its first and
last stage, instead of sending the later stage's per-microbatch values down every microbatch.

A gradient accumulation is all_reduce over "mb" of the step's gradient term; when that term is a
sum (through ops linear in it: transpose, reshape, negation, a product with a step-wide factor)
of addends whose inputs live on different stages, the accumulation distributes over the sum:

    acc(f(a + b))  →  acc(f(a)) + acc(f(b))

each addend's chain and accumulation then run on the stage of its inputs (pinned there), and the
accumulated value is a per-step transfer. Sums of floats in another order: equal up to rounding.
"""
from __future__ import annotations

import copy

from ..ir import Graph, Node, Op

LINEAR = {Op.TRANSPOSE, Op.RESHAPE, Op.NEG, Op.CAST}     # linear in their one input
SCALED = {Op.MUL, Op.DIV}                                # linear in the microbatch operand


def split_shared_gradients(prog):
    """(inner program with the split accumulations, {node: stage} pins), or None if none splits."""
    from .pipeline import MB
    local = prog.inner.local
    users = local.users()
    stage = prog.stage_of
    mb = set()                        # per-microbatch values (forward and backward of every stage)
    for st in prog.stages:
        mb.update(st.forward, st.backward, st.weight)
    plans = []
    for st in prog.stages:
        for c in st.step:
            if c.op is not Op.ALL_REDUCE or MB not in c.attrs["axes"]:
                continue
            plan = _plan(c, users, mb, stage, st.index)
            if plan:
                plans.append(plan)
    if not plans:
        return None
    return _rewrite(prog.inner, plans)


def _only_user(n, users, user) -> bool:
    return list(users.get(n, ())) == [user]


def _plan(c, users, mb, stage, owner):
    """(c, chain, {addend: its stage}) when c's term splits across stages, else None. `chain`:
    the linear ops from the sum up to c, as (node, position of its per-microbatch operand)."""
    chain, n, user = [], c.inputs[0], c
    while n.op in LINEAR | SCALED and _only_user(n, users, user):
        ins = [k for k, i in enumerate(n.inputs) if i in mb]
        if len(ins) != 1 or (n.op is Op.DIV and ins[0] != 0):
            break
        chain.append((n, ins[0]))
        user, n = n, n.inputs[ins[0]]
    if n.op is not Op.ADD or n not in mb or not _only_user(n, users, user):
        return None
    addends, todo = [], [n]
    while todo:                        # the sum's addends (nested adds used only by the sum)
        a = todo.pop()
        for i in a.inputs:
            if i.op is Op.ADD and i in mb and _only_user(i, users, a):
                todo.append(i)
            else:
                addends.append(i)
    if not all(x in mb for x in addends):
        return None
    home = {x: _natural(x, users, mb, stage) for x in addends}
    if len(set(home.values())) < 2 or max(home.values()) <= owner:
        return None
    return c, chain, home


def _natural(x, users, mb, stage) -> int:
    """The latest stage among the inputs of x's own subtree: the nodes that feed only x (through
    per-microbatch values used nowhere else), where x can run without per-microbatch transfers."""
    own = _subtree(x, users, mb)
    outside = [stage[i] for n in own for i in n.inputs if i not in own and i in stage]
    return max(outside, default=stage.get(x, 0))


def _subtree(x, users, mb) -> set:
    """x and the per-microbatch values that feed only x."""
    own, todo = {x}, [x]
    while todo:
        n = todo.pop()
        for i in n.inputs:
            if i in mb and i not in own and all(u in own for u in users.get(i, ())):
                own.add(i)
                todo.append(i)
    return own


def _rewrite(inner, plans):
    """A copy of `inner` whose local graph has each planned accumulation split by stage, and the
    pins of the moved nodes (each addend's subtree, chain copy and accumulation: its stage)."""
    local = inner.local
    users = local.users()
    mb_all = set(local.nodes)   # (subtrees below are already closed over per-microbatch values)
    replace, extra, pins, records = {}, {}, {}, []
    for c, chain, home in plans:
        groups: dict[int, list] = {}
        for x, s in home.items():
            groups.setdefault(s, []).append(x)
        parts = []
        for s, xs in sorted(groups.items()):
            made = []
            y = xs[0]
            for x in xs[1:]:
                y = Node(Op.ADD, (y, x), {}, y.shape, y.dtype, c.source)
                made.append(y)
            for link, k in reversed(chain):
                ins = list(link.inputs)
                ins[k] = y
                y = Node(link.op, tuple(ins), link.attrs, link.shape, link.dtype, link.source, link.name)
                made.append(y)
            acc = Node(Op.ALL_REDUCE, (y,), c.attrs, c.shape, c.dtype, c.source, c.name)
            made.append(acc)
            parts.append((s, acc))
            for x in xs:
                for n in _subtree(x, users, mb_all):
                    pins[n] = s
            for n in made:
                pins[n] = s
            extra.setdefault(c, []).extend(made)
        total = parts[0][1]
        for _, acc in parts[1:]:
            total = Node(Op.ADD, (total, acc), {}, c.shape, c.dtype, c.source)
            extra[c].append(total)
        replace[c] = total
        records.append((c, [acc for _, acc in parts]))
    # the new graph: split accumulations' parts where they stood, every later user re-pointed
    new, nodes = {}, []
    for n in local.nodes:
        if n in replace:
            for m in extra[n]:
                m2 = Node(m.op, tuple(new.get(i, i) for i in m.inputs), m.attrs, m.shape, m.dtype, m.source, m.name)
                new[m] = m2
                nodes.append(m2)
            new[n] = new[replace[n]]
            continue
        ins = tuple(new.get(i, i) for i in n.inputs)
        m = n if ins == n.inputs else Node(n.op, ins, n.attrs, n.shape, n.dtype, n.source, n.name)
        new[n] = m
        nodes.append(m)
    out = copy.copy(inner)
    out.unsplit = inner        # build() starts again from this for another stage count or schedule
    out.local = Graph(nodes, [new[i] for i in local.inputs], [new[o] for o in local.outputs], local.output_names,
                      local.name, local.mesh_axes, local.bound, local.flatten_args)
    split = dict(records)
    recs = []
    for r in inner.collectives:
        if r.node in split:
            for acc in split[r.node]:
                recs.append(dataclasses_replace(r, bytes=acc.nbytes, node=new[acc],
                                                reason=r.reason + " (this stage's share of a shared parameter)"))
        else:
            recs.append(dataclasses_replace(r, node=new.get(r.node, r.node)) if r.node is not None else r)
    out.collectives = recs
    return out, {new[n]: s for n, s in pins.items()}


def dataclasses_replace(r, **kw):
    import dataclasses
    return dataclasses.replace(r, **kw)
