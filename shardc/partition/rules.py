"""Sharding rules as factor einsums: one entry per op. Each op's dims are mapped to factors
(dot_general is `b m k, b k n -> b m n`); a factor shared by tensors is sharded alike in all of
them. The rule also carries what lowering needs to know about the op (which operands a pending
partial sum may pass through, whether it is cheap to recompute), so propagation and lowering
only ever look at these rules, never at op types: adding an op adds its rule here, nothing there."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..ir import Node, Op
from ..ir.ops import COLLECTIVES, ELEMENTWISE
from ..ir.shapes import reshape_groups


@dataclass
class FactorRule:
    sizes: list[int] = field(default_factory=list)
    operands: list[list[list[int]]] = field(default_factory=list)  # operand → dim → factors (major first)
    result: list[list[int]] = field(default_factory=list)          # result dim → factors
    reduction: dict[int, str] = field(default_factory=dict)        # factor → "sum" | "max" | "min"
    replicated: set[int] = field(default_factory=set)              # factors that must stay whole
    # operand index sets the op is jointly linear in: a pending partial sum over exactly those
    # operands passes through it (sums commute with linear maps)
    linear: tuple[tuple[int, ...], ...] = ()
    cheap: bool = False          # computed again where a user needs it rather than moved (XLA's remat)
    splits_result: bool = False  # makes any split of its result-only factors directly (splat, iota, broadcast)
    may_gather_operands: bool = False  # also try placing it by its result alone (a lookup may gather its table)

    def new(self, size: int, replicated: bool = False) -> int:
        self.sizes.append(int(size))
        f = len(self.sizes) - 1
        if replicated:
            self.replicated.add(f)
        return f

    def tensors(self) -> list[list[list[int]]]:
        return self.operands + [self.result]


# elementwise ops linear in all their operands together / in any one operand alone / in the first
_LINEAR_JOINTLY = frozenset({Op.ADD, Op.SUB})
_LINEAR_IN_EACH = frozenset({Op.MUL})
_LINEAR_IN_FIRST = frozenset({Op.NEG, Op.DIV})


def _elementwise(n: Node) -> FactorRule:
    r = FactorRule(cheap=True)
    fs = [r.new(s) for s in n.shape]
    r.operands = [[[f] for f in fs] for _ in n.inputs]
    r.result = [[f] for f in fs]
    if n.op in _LINEAR_JOINTLY:
        r.linear = (tuple(range(len(n.inputs))),)
    elif n.op in _LINEAR_IN_EACH:
        r.linear = tuple((i,) for i in range(len(n.inputs)))
    elif n.op in _LINEAR_IN_FIRST:
        r.linear = ((0,),)
    return r


def _leaf(n: Node) -> FactorRule:
    r = FactorRule()
    r.result = [[r.new(s)] for s in n.shape]
    return r


def _made_here(n: Node) -> FactorRule:
    """Splats and iotas: any block of them is made directly, so they are never moved (an array
    constant is cut from the whole array instead, and moved like any other value)."""
    r = _leaf(n)
    r.cheap = not (n.op is Op.CONSTANT and isinstance(n.attrs["value"], np.ndarray))
    r.splits_result = True
    return r


def _collective(n: Node) -> FactorRule:
    r = FactorRule()
    r.operands = [[[r.new(s, True)] for s in i.shape] for i in n.inputs]
    r.result = [[r.new(s, True)] for s in n.shape]
    return r


def _broadcast(n: Node) -> FactorRule:
    r = FactorRule()
    (x,) = n.inputs
    r.result = [[r.new(s)] for s in n.shape]
    ops = []
    for i, d in enumerate(n.attrs["dims"]):
        ops.append(r.result[d] if x.shape[i] == n.shape[d] else [r.new(x.shape[i])])
    r.operands = [ops]
    r.linear, r.cheap, r.splits_result = ((0,),), True, True
    return r


def _transpose(n: Node) -> FactorRule:
    r = FactorRule(linear=((0,),), cheap=True)
    (x,) = n.inputs
    fs = [r.new(s) for s in x.shape]
    r.operands = [[[f] for f in fs]]
    r.result = [[fs[p]] for p in n.attrs["perm"]]
    return r


def reshape_factors(a: tuple[int, ...], b: tuple[int, ...], r: FactorRule):
    """Common factorization of two shapes with equal size (compound factors): in each group of
    consecutive dims with equal products, walk both from the major end splitting off gcd-sized
    factors; a part that does not factor must stay whole (and only that group's)."""
    ins, outs = [[] for _ in a], [[] for _ in b]
    groups = reshape_groups(a, b) if 0 not in a and 0 not in b else [(range(len(a)), range(len(b)))]
    for gi, gj in groups:
        _factor_group([a[i] for i in gi], [b[j] for j in gj], [ins[i] for i in gi], [outs[j] for j in gj], r)
    return ins, outs


def _factor_group(a: list[int], b: list[int], ins: list[list[int]], outs: list[list[int]], r: FactorRule):
    i = j = 0
    ra = a[0] if a else 1
    rb = b[0] if b else 1
    while i < len(a) and j < len(b):
        if ra == 1:
            if not ins[i]:
                ins[i].append(r.new(1))
            i += 1
            ra = a[i] if i < len(a) else 1
            continue
        if rb == 1:
            if not outs[j]:
                outs[j].append(r.new(1))
            j += 1
            rb = b[j] if j < len(b) else 1
            continue
        g = math.gcd(ra, rb)
        if g == 1:
            break
        f = r.new(g)
        ins[i].append(f)
        outs[j].append(f)
        ra //= g
        rb //= g
    # whatever is left (non-factorable, or trailing size-1 dims) gets factors of its own
    while i < len(a):
        if ra > 1 or not ins[i]:
            ins[i].append(r.new(ra, replicated=ra > 1))
        i += 1
        ra = a[i] if i < len(a) else 1
    while j < len(b):
        if rb > 1 or not outs[j]:
            outs[j].append(r.new(rb, replicated=rb > 1))
        j += 1
        rb = b[j] if j < len(b) else 1


def _reshape(n: Node) -> FactorRule:
    r = FactorRule(linear=((0,),), cheap=True)
    ins, outs = reshape_factors(n.inputs[0].shape, n.shape, r)
    r.operands, r.result = [ins], outs
    return r


def _slice(n: Node) -> FactorRule:
    """A dim cut into equal blocks where the slice takes one whole block (QKV split) keeps the
    block factor: the operand dim is (blocks, size) and only the block index must stay whole."""
    r = FactorRule(linear=((0,),))
    (x,) = n.inputs
    ops, res = [], []
    for d, size in enumerate(x.shape):
        s, l, st = n.attrs["start"][d], n.attrs["limit"][d], n.attrs["stride"][d]
        k = l - s
        if (s, l, st) == (0, size, 1):
            f = r.new(size)
            ops.append([f])
            res.append([f])
        elif st == 1 and 0 < k < size and size % k == 0 and s % k == 0:
            inner = r.new(k)
            ops.append([r.new(size // k, replicated=True), inner])
            res.append([inner])
        else:
            ops.append([r.new(size, replicated=True)])
            res.append([r.new(n.shape[d])])
    r.operands, r.result = [ops], res
    return r


def _along_axis(n: Node, axis: int, changed: Callable[[int], bool]) -> FactorRule:
    """Ops that share every dim but some, which must stay whole (concatenate, pad)."""
    r = FactorRule()
    shared = {d: r.new(s) for d, s in enumerate(n.shape) if not changed(d)}
    r.operands = [[[shared[d]] if d in shared else [r.new(s, True)] for d, s in enumerate(i.shape)]
                  for i in n.inputs]
    r.result = [[shared[d]] if d in shared else [r.new(s)] for d, s in enumerate(n.shape)]
    return r


def _concatenate(n: Node) -> FactorRule:
    axis = n.attrs["axis"]
    sizes = {i.shape[axis] for i in n.inputs}
    if len(n.inputs) > 1 and len(sizes) == 1:  # k equal blocks (the adjoint of a QKV split)
        r = _along_axis(n, axis, lambda d: d == axis)
        inner = r.new(n.inputs[0].shape[axis])
        for ops in r.operands:
            ops[axis] = [inner]
        r.result[axis] = [r.new(len(n.inputs), replicated=True), inner]
    else:
        r = _along_axis(n, axis, lambda d: d == axis)
    r.linear = (tuple(range(len(n.inputs))),)
    return r


def _pad(n: Node) -> FactorRule:
    low, high = n.attrs["low"], n.attrs["high"]
    r = _along_axis(n, -1, lambda d: bool(low[d] or high[d]))
    (x,) = n.inputs
    for d, s in enumerate(x.shape):
        size = n.shape[d]
        if (low[d] or high[d]) and low[d] >= 0 and high[d] >= 0 and size % s == 0 and low[d] % s == 0:
            inner = r.new(s)  # x becomes one whole block of k (the adjoint of a block slice)
            r.operands[0][d] = [inner]
            r.result[d] = [r.new(size // s, replicated=True), inner]
    if n.attrs["value"] == 0:
        r.linear = ((0,),)
    return r


def _gather(n: Node) -> FactorRule:
    """out[b, pre, i, post] = x[b, pre, idx[b, i], post]. The table dim is a reduction factor:
    a device holding rows [lo, hi) looks up what it has, zeros the rest, and partial sums
    complete the lookup (Megatron's vocab-parallel embedding)."""
    r = FactorRule(linear=((0,),), may_gather_operands=True)
    x, idx = n.inputs
    axis, b = n.attrs["axis"], n.attrs.get("batch_dims", 0)
    batch = [r.new(s) for s in x.shape[:b]]
    pre = [r.new(s) for s in x.shape[b:axis]]
    table = r.new(x.shape[axis])
    ind = [r.new(s) for s in idx.shape[b:]]
    post = [r.new(s) for s in x.shape[axis + 1:]]
    r.reduction[table] = "sum"
    r.operands = [[[f] for f in batch + pre + [table] + post], [[f] for f in batch + ind]]
    r.result = [[f] for f in batch + pre + ind + post]
    return r


def _scatter(n: Node) -> FactorRule:
    """The adjoint: the table dim is shared with the result (each device applies the updates
    that land in its rows); the update dims are reduction factors (partial sums of updates).
    x + scatter(0, idx, upd) is linear in (x, upd); with a zero x, in upd alone."""
    r = FactorRule(linear=((0, 2), (2,)) if is_zero(n.inputs[0]) else ((0, 2),))
    x, idx, upd = n.inputs
    axis, b = n.attrs["axis"], n.attrs.get("batch_dims", 0)
    batch = [r.new(s) for s in x.shape[:b]]
    pre = [r.new(s) for s in x.shape[b:axis]]
    table = r.new(x.shape[axis])
    ind = [r.new(s) for s in idx.shape[b:]]
    post = [r.new(s) for s in x.shape[axis + 1:]]
    for f in ind:
        r.reduction[f] = "sum"
    r.operands = [[[f] for f in batch + pre + [table] + post], [[f] for f in batch + ind],
                  [[f] for f in batch + pre + ind + post]]
    r.result = [[f] for f in batch + pre + [table] + post]
    return r


def _reduce(n: Node) -> FactorRule:
    r = FactorRule()
    (x,) = n.inputs
    kind = {Op.REDUCE_SUM: "sum", Op.REDUCE_MAX: "max", Op.REDUCE_MIN: "min"}[n.op]
    if kind == "sum":
        r.linear = ((0,),)
    fs = [r.new(s) for s in x.shape]
    for d in n.attrs["axes"]:
        r.reduction[fs[d]] = kind
    r.operands = [[[f] for f in fs]]
    r.result = [[f] for d, f in enumerate(fs) if d not in n.attrs["axes"]]
    return r


def _dot_general(n: Node) -> FactorRule:
    r = FactorRule(linear=((0,), (1,)))
    a, b = n.inputs
    at = n.attrs
    lhs: list = [None] * a.rank
    rhs: list = [None] * b.rank
    res = []
    for l, rr in zip(at["lhs_batch"], at["rhs_batch"]):
        f = r.new(a.shape[l])
        lhs[l] = rhs[rr] = [f]
        res.append([f])
    for l, rr in zip(at["lhs_contract"], at["rhs_contract"]):
        f = r.new(a.shape[l])
        lhs[l] = rhs[rr] = [f]
        r.reduction[f] = "sum"
    for ops, x in ((lhs, a), (rhs, b)):
        for d in range(x.rank):
            if ops[d] is None:
                ops[d] = [r.new(x.shape[d])]
                res.append(ops[d])
    r.operands, r.result = [lhs, rhs], res
    return r


def _ragged_dot(n: Node) -> FactorRule:
    """rows: `m k, g k n -> m n`; contract: `m k, k n -> g m n`. The grouped dim (m, or k) may
    split like any dim: each device counts how many of its rows fall in each group. The group
    dim g splits the experts: in rows mode it is a sum factor (a device computes the rows of its
    groups, zeros elsewhere); in contract mode each device makes its groups' blocks. The group
    sizes stay whole (the sizes operand carries g only so that the factor can be chosen). Linear
    in either matrix alone (not in the group sizes)."""
    r = FactorRule(linear=((0,), (1,)))
    a, b, sizes = n.inputs[:3]
    m, k = r.new(a.shape[0]), r.new(a.shape[1])
    r.reduction[k] = "sum"
    if n.attrs["mode"] == "rows":
        g, nn = r.new(b.shape[0]), r.new(b.shape[2])
        r.reduction[g] = "sum"
        r.operands = [[[m], [k]], [[g], [k], [nn]], [[g] if b.shape[0] == sizes.shape[0] else [r.new(sizes.shape[0], True)]]]
        r.result = [[m], [nn]]
    else:
        g, nn = r.new(n.shape[0]), r.new(b.shape[1])
        r.operands = [[[m], [k]], [[k], [nn]], [[g] if n.shape[0] == sizes.shape[0] else [r.new(sizes.shape[0], True)]]]
        r.result = [[g], [m], [nn]]
    if len(n.inputs) == 4:  # a local op with its group offset: the groups stay whole
        r.replicated.add(g)
        r.operands.append([])
    return r


RULES: dict[Op, Callable[[Node], FactorRule]] = {
    Op.PARAMETER: _leaf, Op.CONSTANT: _made_here, Op.IOTA: _made_here, Op.AXIS_INDEX: _leaf,
    **{op: _elementwise for op in ELEMENTWISE},
    Op.BROADCAST: _broadcast, Op.RESHAPE: _reshape, Op.TRANSPOSE: _transpose, Op.SLICE: _slice,
    Op.CONCATENATE: _concatenate, Op.PAD: _pad, Op.GATHER: _gather, Op.SCATTER: _scatter,
    Op.REDUCE_SUM: _reduce, Op.REDUCE_MAX: _reduce, Op.REDUCE_MIN: _reduce,
    Op.DOT_GENERAL: _dot_general, Op.RAGGED_DOT: _ragged_dot,
    **{op: _collective for op in COLLECTIVES},
}

# ops that only move or map elements: propagation runs through these first
PASS_THROUGH = frozenset(ELEMENTWISE | {Op.BROADCAST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE,
                                        Op.CONCATENATE, Op.PAD})


def is_zero(n: Node) -> bool:
    """A constant zero, possibly broadcast, reshaped or cast (jnp.zeros, torch.zeros)."""
    while n.op in (Op.BROADCAST, Op.RESHAPE, Op.CAST):
        n = n.inputs[0]
    return n.op is Op.CONSTANT and not isinstance(n.attrs["value"], np.ndarray) and n.attrs["value"] == 0


def rule_for(n: Node) -> FactorRule:
    return RULES[n.op](n)
