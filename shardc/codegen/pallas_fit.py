"""How a Pallas fusion group is made to fit a TPU core's VMEM (codegen/vmem.py) beyond choosing
smaller blocks:

    summable(grp), accumulation(builder, grp, sums)
        float sums whose rows can be tiled as an "arbitrary" grid axis, each step adding its
        block's partial sum to an f32 VMEM accumulator (a norm backward's dγ/dβ and their SGD
        update; codegen/pallas.emit_rows writes the kernel)
    own_operands(grp)
        a matmul group (the attention backward's, which rebuild QKᵀ) with each dot's right
        operand computed from its own copies of what its left operand also reads (RoPE tables), so
        the queries' and keys' dims are tiled apart (codegen/pallas.emit tries it where a kernel
        passes the default limit; flash attention kernels split their key side in emit_attention)
    key_side_copies(grp)
        a flash attention group's key/value side from its own copies of what the queries' side also
        reads (a fused QKV buffer, RoPE tables), for pallas.emit_attention where one whole block of
        queries and keys would overflow the budget
"""
from __future__ import annotations

import dataclasses

from ..ir import Node, Op
from . import vmem
from .fusion import FusionGroup


def summed_axes(s: Node) -> tuple:
    """The dims of s's first operand that accumulated sum `s` adds up (a gather: its table's)."""
    return (s.attrs["axis"],) if s.op is Op.GATHER else tuple(s.attrs["axes"])


def _users(grp: FusionGroup) -> dict:
    users: dict = {}
    for n in grp.nodes:
        for x in n.inputs:
            users.setdefault(x, []).append(n)
    return users


def _after(users: dict, s: Node, skip=frozenset()) -> set:
    after, stack = set(), [u for u in users.get(s, ()) if u not in skip]
    while stack:
        n = stack.pop()
        if n not in after:
            after.add(n)
            stack.extend(users.get(n, ()))
    return after


def summable(grp: FusionGroup) -> list:
    """The group's float sums whose readers in the group, transitively, are no larger than the sum
    (no broadcast back over its rows): candidates for adding up block by block. A float gather is
    one too, over its table's rows: a one-hot select-and-sum (an embedding lookup in row blocks of
    its table, each adding the rows of its block; exactly one block holds each index), a float max
    or min (a running one), and an online pair's max and Σexp (`online`)."""
    users = _users(grp)
    out = [s for s in grp.nodes if s.op in (Op.REDUCE_SUM, Op.GATHER, Op.REDUCE_MAX, Op.REDUCE_MIN)
           and s.dtype.is_float and s is not grp.anchor and all(n.size <= s.size for n in _after(users, s))]
    maxes = [n for n in grp.nodes if n.op is Op.REDUCE_MAX and n not in out]
    return out + list(online(grp, out + maxes).values())


def online(grp: FusionGroup, sums: list) -> dict:
    """{S: M} for the group's pairs S = Σexp(y - g(M)), M = max y (fused_flash.online_pairs; here g
    is M itself through views, casts and max(-inf, ·)) whose S is in `sums` and whose M is read,
    besides S's summand, by nothing larger than M: the loss statistics over the vocabulary,
    accumulated over its blocks as a running max and a running sum rescaled by exp(m_old - m_new)
    (online log-sum-exp, pallas.emit_rows). Both S and M must be in `sums`."""
    from .fused_flash import online_pairs
    users, out = _users(grp), {}
    for total, m in online_pairs(grp.nodes).items():
        inner = summand_of(grp, total, m)
        if total in sums and m in sums and all(n.size <= m.size for n in _after(users, m, inner) - inner) \
                and all(n.op in _G for n in upstream(_subtrahend(total), grp, stop=(m,))):
            out[total] = m
    return out


_G = frozenset({Op.RESHAPE, Op.BROADCAST, Op.CAST, Op.MAX, Op.CONSTANT})


def _subtrahend(total: Node) -> Node:
    """g(M) in S = Σexp(y - g(M))."""
    from .prologue import through
    return through(through(total.inputs[0], {Op.CAST}).inputs[0], {Op.CAST}).inputs[1]


def upstream(x: Node, grp: FusionGroup, stop=()) -> set:
    """The group's nodes that x is computed from (inclusive), not walking past `stop`."""
    return reached(x, grp.nodes, set(stop))


def summand_of(grp: FusionGroup, total: Node, m: Node) -> set:
    """The nodes of S's summand computed from M (y - g(M), its exp): computed each step from
    the running max."""
    up = upstream(total.inputs[0], grp)
    return {n for n in up if n is not m and m in upstream(n, grp)}


def accumulation(b, grp: FusionGroup, sums: list):
    """(the sums added up across "arbitrary" grid axes, the nodes computed from them at the last
    step, the sums that cannot be: something computed from them varies along those axes). An
    online pair's summand is computed each step from the running max."""
    pairs = online(grp, sums)
    inner = set().union(*(summand_of(grp, t, m) for t, m in pairs.items()))
    arb = {a for a, (_, _, sem) in enumerate(b.grid) if sem == "arbitrary"}
    along = lambda n: any(b.axis_of(n, d) in arb for d in range(n.rank))
    acc = [s for s in sums if any(b.axis_of(s.inputs[0], a) in arb for a in summed_axes(s))]
    varying, late, bad, held = set(), {}, set(), {}
    for x in grp.inputs:
        if along(x):
            varying.add(x)
    axes_of = lambda s: frozenset(b.axis_of(s.inputs[0], a) for a in summed_axes(s)) & arb
    # every step adds to every accumulator: each must add up over all the "arbitrary" axes (a sum
    # over some would count its blocks once per step of the others); where they differ, those
    # beside a gather or an online pair (the vocabulary's) stay, else the most common axes
    groups: dict = {}
    for s in acc:
        groups.setdefault(axes_of(s), []).append(s)
    if len(groups) > 1 or (groups and set(groups) != {frozenset(arb)}):
        keep = max(groups.items(), key=lambda kv: (any(s.op is Op.GATHER or s in pairs for s in kv[1]), len(kv[1])))
        bad |= {s for s in acc if s not in keep[1] or keep[0] != frozenset(arb)}
    for n in grp.nodes:  # (program order)
        if n in acc:
            late[n] = {n}
            if along(n) and n.op is Op.GATHER:  # (a lookup per row: the sums over its rows go first)
                rows = {s for s in acc if s is not n and any(b.axis_of(n, d) in axes_of(s) for d in range(n.rank))}
                if rows:
                    return acc, set(late), rows
            elif along(n):
                bad.add(n)
            if any(i in late or (i in held and n not in pairs) for i in n.inputs):
                bad.add(n)  # (summing what is known only at the last step)
            continue
        if along(n) or (any(i in varying for i in n.inputs)):
            varying.add(n)
        from_sums = set().union(*(late.get(i, held.get(i, set())) for i in n.inputs))
        if n in inner:  # (its readers outside the summand are computed from the max: late)
            held[n] = from_sums
            if n in grp.roots:
                bad |= from_sums
            continue
        if from_sums:
            late[n] = from_sums
            if n in varying:
                bad |= from_sums
    return acc, {n for n in late}, bad


def hardware_default():
    """The generation whose default limit decides when to try `own_operands` if kernels are
    written for no TPU (SHARDC_PALLAS_TPU=none)."""
    from ..analysis import hardware
    return hardware.get(vmem.TARGET)


def own_operands(grp: FusionGroup):
    """(the group where each dot's right operand is computed from its own copies of what its left
    operand is also computed from; copy → original, for the inputs and roots copied). QKᵀ's Q
    and K both read the RoPE tables (Llama): read once, the queries' and the keys' dims join one
    dim class and the sequence stays whole in every block. A copied input is the same buffer
    passed again, with its own BlockSpec (more VMEM: pallas.emit keeps whichever kernel is smaller)."""
    if grp.kind != "matmul":  # (flash attention splits its key side itself: key_side_copies)
        return grp, {}
    ins = set(grp.inputs)

    def ancestors(x, stop) -> set:
        out, stack = set(), [x]
        while stack:
            n = stack.pop()
            if n not in out:
                out.add(n)
                if n not in stop:
                    stack.extend(n.inputs)
        return out
    new, back, nodes, inputs = {}, {}, [], list(grp.inputs)
    for n in grp.nodes:
        args = [new.get(i, i) for i in n.inputs]
        if n.op is Op.DOT_GENERAL:
            right = ancestors(args[1], ins)
            shared = ancestors(args[0], ins) & right
            copies: dict = {}

            def copy(x):
                if x not in right or not ancestors(x, ins) & shared:
                    return x
                if x not in copies:
                    if x in ins:
                        copies[x] = c = x.with_inputs(x.inputs)
                        back[c] = back.get(x, x)
                        inputs.append(c)
                    else:
                        copies[x] = c = x.with_inputs(tuple(copy(i) for i in x.inputs))
                        nodes.append(c)
                return copies[x]
            if shared:
                args[1] = copy(args[1])
                ins.update(c for c in copies.values() if c in back)
        if list(n.inputs) != args:
            new[n] = n.with_inputs(tuple(args))
            if n in grp.roots:
                back[new[n]] = n
        nodes.append(new.get(n, n))
    if not new:
        return grp, {}
    roots = [new.get(r, r) for r in grp.roots]
    live = set().union(*(ancestors(r, ins) for r in roots))  # the originals the copies replaced are gone
    remap = lambda v: new.get(v, v) if isinstance(v, Node) else (
        type(v)(remap(x) for x in v) if isinstance(v, (list, tuple)) else v)
    return dataclasses.replace(grp, roots=roots, nodes=[n for n in nodes if n in live],
                               inputs=[x for x in inputs if x in live], anchor=new.get(grp.anchor, grp.anchor),
                               pattern={k: remap(v) for k, v in grp.pattern.items()}), back


def key_side_copies(grp: FusionGroup) -> dict:
    """A flash attention group's {node: its copy} for the nodes computing k and v, and the buffers
    they read that the rest of the kernel (q, the score ops, the epilogue) reads too (GPT-2's fused
    QKV, Llama's RoPE tables): copies are other nodes, so the key side's dims get dim classes of
    their own (pallas.emit_attention emits from them where the whole block overflows)."""
    qk, pv = grp.pattern["qk"], grp.pattern["pv"]
    q, k, v = qk.inputs[0], qk.inputs[1], pv.inputs[1]
    kv = reached_all([k, v], grp.nodes)
    rest = reached_all([q], grp.nodes) | reached(grp.pattern["scores"], grp.nodes, {qk}) | \
        {n for n in grp.nodes if n not in kv and n is not qk}
    kv_reads = {x for n in kv for x in n.inputs} | {k, v}
    rest_reads = {x for n in rest for x in n.inputs} | {q}
    shared = [x for x in grp.inputs if x in kv_reads and x in rest_reads]
    if not kv & rest and not shared:
        return {}  # nothing shared: the dim classes were apart already
    copies = {x: x.with_inputs(x.inputs) for x in shared}
    for n in grp.nodes:  # (program order: inputs first)
        if n in kv:
            copies[n] = n.with_inputs(tuple(copies.get(i, i) for i in n.inputs))
    return copies


def reached(top: Node, nodes, stop: set) -> set:
    """Nodes of `nodes` that `top` is computed from, not walking past `stop`."""
    return reached_all([top], nodes, stop)


def reached_all(roots, nodes, stop=frozenset()) -> set:
    """Nodes of `nodes` that any of `roots` is computed from (inclusive), not walking past `stop`."""
    inside, out, stack = set(nodes), set(), list(roots)
    while stack:
        n = stack.pop()
        if n in out or n not in inside or n in stop:
            continue
        out.add(n)
        stack.extend(n.inputs)
    return out


