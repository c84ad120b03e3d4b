"""Grouped matmuls on the mesh (mixture-of-experts layers as jax.lax.ragged_dot and
torch._grouped_mm write them): the local form of a ragged_dot whose grouped dim or whose groups
(experts) are split.

- The grouped dim (the sorted rows in "rows" mode, the contraction in "contract" mode) split
  over some axes: each device counts how many of its own rows fall in each group (its local
  group sizes) from the whole group sizes and the global position of each of its rows.
- The groups split over some axes (expert weights [E, k, n] with E over 'ep'): each device
  computes the groups it holds (ragged_dot's group_offset); in rows mode the rows of the others
  are zeros, so the result is a pending sum over those axes that adding completes exactly (each
  row is non-zero on one device only).
"""
from __future__ import annotations

from ..errors import ShardingError
from ..ir import DType, Node, Op
from .mesh import Sharding, local_shape


def local_group_sizes(lw, sizes: Node, size: int, ds) -> Node:
    """i32[g]: how many of this device's positions of a grouped dim (global length `size`, split
    as `ds`) fall in each group; padding positions fall in none."""
    b = lw.b
    sizes = b.binary(Op.MAX, b.cast(sizes, DType.i32), 0)
    g = sizes.shape[0]
    ends = b.cast(b.cumsum(sizes, 0), DType.i32)
    starts = b.binary(Op.SUB, ends, sizes)
    pos = lw.global_index(size, ds)                                   # [loc]
    loc = pos.shape[0]
    pos = b.add(Op.BROADCAST, [pos], shape=(g, loc), dims=[1])
    inside = b.binary(Op.AND, b.binary(Op.GE, pos, b.add(Op.BROADCAST, [starts], shape=(g, loc), dims=[0])),
                      b.binary(Op.LT, pos, b.add(Op.BROADCAST, [ends], shape=(g, loc), dims=[0])))
    return b.reduce(Op.REDUCE_SUM, b.cast(inside, DType.i32), 1)


def lower_ragged_dot(lw, n: Node, args: list[Node], reqs: list[Sharding], natural: Sharding, red) -> Node:
    """The local ragged_dot for the factor sharding the lowerer chose (see the module doc)."""
    b, rule = lw.b, lw.rule(n)
    lhs, rhs = args[0], args[1]
    rows = n.attrs["mode"] == "rows"
    # the k contraction (rows mode) may be padded where split unevenly: zero its padding
    kred = {f: k for f, k in red.items() if f == rule.operands[0][1][0]}
    if kred and rows:
        lhs = lw._mask_reduced(lhs, rule.operands[0], reqs[0], n.inputs[0].shape, rule, kred)
        rhs = lw._mask_reduced(rhs, rule.operands[1], reqs[1], n.inputs[1].shape, rule, kred)
    sizes = lw.value(n.inputs[2], Sharding.replicated(1), n)         # the whole group sizes
    gdim = 0 if rows else 1
    ds = reqs[0].dims[gdim]
    if ds.axes:
        sizes = local_group_sizes(lw, sizes, n.inputs[0].shape[gdim], ds)
    gsplit = reqs[1].dims[0] if rows else natural.dims[0]
    attrs = {"mode": n.attrs["mode"]}
    ins = [lhs, rhs, sizes]
    if gsplit.axes:
        if len(n.inputs) == 4:
            raise ShardingError(f"{n.describe()}: a ragged_dot with a group offset cannot split its groups again")
        if gsplit.strided:
            raise ShardingError(f"{n.describe()}: the groups (experts) split in a strided layout ({gsplit}); "
                                "split them in contiguous blocks")
        per = rhs.shape[0] if rows else local_shape(n.shape, natural, lw.mesh)[0]
        ins.append(b.binary(Op.MUL, lw.group_rank(gsplit.axes), b.const(per, DType.i32)))
        if not rows:
            attrs["groups"] = per
    elif len(n.inputs) == 4:
        ins.append(args[3])
        if not rows:
            attrs["groups"] = n.attrs["groups"]
    return b.add(Op.RAGGED_DOT, ins, name=n.name, **attrs)
