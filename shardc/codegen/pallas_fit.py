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


def summable(grp: FusionGroup) -> list:
    """The group's float sums whose readers in the group, transitively, are no larger than the sum
    (no broadcast back over its rows): candidates for adding up block by block."""
    users: dict = {}
    for n in grp.nodes:
        for x in n.inputs:
            users.setdefault(x, []).append(n)
    out = []
    for s in grp.nodes:
        if s.op is not Op.REDUCE_SUM or not s.dtype.is_float or s is grp.anchor:
            continue
        after, stack = set(), list(users.get(s, ()))
        while stack:
            n = stack.pop()
            if n not in after:
                after.add(n)
                stack.extend(users.get(n, ()))
        if all(n.size <= s.size for n in after):
            out.append(s)
    return out


def accumulation(b, grp: FusionGroup, sums: list):
    """(the sums added up across "arbitrary" grid axes, the nodes computed from them at the last
    step, the sums that cannot be: something computed from them varies along those axes)."""
    arb = {a for a, (_, _, sem) in enumerate(b.grid) if sem == "arbitrary"}
    along = lambda n: any(b.axis_of(n, d) in arb for d in range(n.rank))
    acc = [s for s in sums if any(b.axis_of(s.inputs[0], a) in arb for a in s.attrs["axes"])]
    varying, late, bad = set(), {}, set()
    for x in grp.inputs:
        if along(x):
            varying.add(x)
    for n in grp.nodes:  # (program order)
        if n in acc:
            late[n] = {n}
            if along(n):
                bad.add(n)
            continue
        if along(n) or (any(i in varying for i in n.inputs)):
            varying.add(n)
        from_sums = set().union(*(late.get(i, set()) for i in n.inputs))
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
    kv = _up([k, v], grp.nodes)
    rest = _up([q], grp.nodes) | reached(grp.pattern["scores"], grp.nodes, {qk}) | \
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
    inside, out, stack = set(nodes), set(), [top]
    while stack:
        n = stack.pop()
        if n in out or n not in inside or n in stop:
            continue
        out.add(n)
        stack.extend(n.inputs)
    return out


def _up(roots, nodes) -> set:
    """Nodes of `nodes` that `roots` are computed from (inclusive)."""
    return set().union(*(reached(r, nodes, set()) for r in roots))
