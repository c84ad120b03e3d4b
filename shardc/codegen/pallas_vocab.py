"""Pallas kernels over a whole vocabulary (the LM head's dX and dW, the loss statistics, the
embedding lookup) at real sizes, where one [V, d] block fits no TPU core:

    edge_mask(builder, emitter, x, dims, identity)
        a block with what lies past the end of a padded dim (a cdiv grid's overhanging edge
        block, where no legal TPU block divides the dim: GPT-2's 50,257 = 29·1733) set to the
        reduction's identity; the matmul's K operands and every accumulated row reduction use it
    partial_sums(builder, emitter, group, accumulated, shapes)
        the lines a row kernel's grid step adds to its VMEM accumulators: sums, running max/min,
        a gather's one-hot over the table block's global rows, and the online log-sum-exp (a
        running max, Σexp rescaled by exp(m_old - m_new): pallas_fit.online)
    after_online(group), reduction_over_k(group, builder)
        for a kernel over every TPU's VMEM, the node the planner should store so the vocabulary
        can be tiled (the loss's pick at the label, computed from the whole row's Σexp; a row sum
        over the vocabulary in the LM head dX's rebuilt dlogits)
"""
from __future__ import annotations

from ..ir import Node, Op
from ..ir.ops import REDUCE
from . import pallas_fit
from .fused_flash import online_pairs
from .fusion import FusionGroup


def edge_mask(b, em, x: Node, dims, identity: str = "0"):
    """x's block with what lies past the end of its padded `dims` (the overhanging edge block of
    an axis that no legal block divides: garbage, or NaN) set to `identity`, the reduction's
    identity over those dims; x's block itself where none of them is padded."""
    v = em.value(x)
    shape = b.block(x)
    test = [f"(lax.broadcasted_iota(jnp.int32, {shape}, {i}) + pl.program_id({b.axis_of(x, i)}) * {shape[i]} < {x.shape[i]})"
            for i in dims if b.axis_of(x, i) is not None and b.padded(b.axis_of(x, i))]
    if not test:
        return v
    return em.emit(f"jnp.where({' & '.join(test)}, {em.array(v, shape)}, {identity})", shape, x.dtype, "m")


IDENTITY = {Op.REDUCE_MAX: "-jnp.inf", Op.REDUCE_MIN: "jnp.inf"}


def partial_sums(b, em, grp: FusionGroup, acc: list, shapes: list) -> list[str]:
    """The lines adding each grid step's block to the accumulators: f32 partial sums (not rounded
    to a half type: a sum is rounded once, at the end, as the whole-block kernel and the oracle
    do), what lies past the end of a padded block masked to the identity; a gather's one-hot over
    the block's global rows; an online pair's max as a running max, and its Σexp(y - m) computed
    from the running max, the sum so far rescaled by exp(m_old - m_new) (online log-sum-exp)."""
    pairs = {m: s for s, m in pallas_fit.online(grp, acc).items()}
    adds, ref = [], {s: f"acc{i}_ref" for i, s in enumerate(acc)}
    shape = dict(zip(acc, shapes))
    for s in acc:
        axes, blk = pallas_fit.summed_axes(s), b.block(s)
        if s.op is Op.GATHER:
            part = em.array(em.value(s), blk)
        elif s in pairs:  # (an online pair: the max with its Σexp)
            y = edge_mask(b, em, s.inputs[0], axes, "-jnp.inf")
            top = em.emit(f"jnp.max({em.array(y)}, axis={tuple(axes)})", blk, s.dtype, "r")
            old = em.emit(f"{ref[s]}[...].reshape({blk})", blk, s.dtype, "m")
            em.bound[s] = new = em.emit(f"jnp.maximum({old.text}, {top.text})", blk, s.dtype, "m")
            total = pairs[s]
            e = edge_mask(b, em, total.inputs[0], pallas_fit.summed_axes(total), "0")
            part = f"jnp.sum({em.array(e)}, axis={tuple(pallas_fit.summed_axes(total))})"
            scale = f"jnp.where({old.text} == -jnp.inf, 0.0, jnp.exp({old.text} - {new.text}))"
            adds.append(f"{ref[total]}[...] = {ref[total]}[...] * {scale}.reshape({shape[total]}) + {part}.reshape({shape[total]})")
            adds.append(f"{ref[s]}[...] = {new.text}.reshape({shape[s]})")
            continue
        elif s in pairs.values():
            continue  # (with its max)
        elif s.op in (Op.REDUCE_MAX, Op.REDUCE_MIN):  # a running max (min)
            fn, ident = ("max", "-jnp.inf") if s.op is Op.REDUCE_MAX else ("min", "jnp.inf")
            x = edge_mask(b, em, s.inputs[0], axes, ident)
            adds.append(f"{ref[s]}[...] = jnp.{fn}imum({ref[s]}[...], jnp.{fn}({em.array(x)}, axis={tuple(axes)}).reshape({shape[s]}))")
            continue
        else:
            x = edge_mask(b, em, s.inputs[0], axes, "0")
            part = f"jnp.sum({em.array(x)}, axis={tuple(axes)})"
        adds.append(f"{ref[s]}[...] += {part}.reshape({shape[s]})")
    return adds


def after_online(grp: FusionGroup) -> Node | None:
    """In a row kernel over every TPU's VMEM: the first sum or gather computed from an online
    pair's Σexp (the loss's pick of the log-softmax at the label, which needs the whole row's
    statistics before it can add up its own blocks): named in the planner's CannotFuse so that it
    is stored by a kernel of its own (reading the statistics this one stores), and both kernels
    tile the vocabulary."""
    totals = set(online_pairs(grp.nodes))
    reached = set(totals)
    for n in grp.nodes:  # (program order)
        if any(i in reached for i in n.inputs):
            if n.op in (Op.GATHER, Op.REDUCE_SUM) and n.dtype.is_float:
                return n
            reached.add(n)
    return None


def reduction_over_k(grp: FusionGroup, b) -> Node | None:
    """A reduction in a matmul's prologue over the dims its K axis would tile (the LM head's dX
    over the vocabulary, whose rebuilt dlogits take a row sum over it): named in the planner's
    CannotFuse so that it is stored by a kernel of its own and K can be tiled."""
    d = grp.anchor
    b.constrain(grp.nodes, accumulating=(d,))
    k = {b.dc.find((d.inputs[0], i)) for i in d.attrs["lhs_contract"]}
    pro = set().union(*(pallas_fit.upstream(x, grp) for x in d.inputs))
    for n in grp.nodes:  # (program order: the first one)
        if n in pro and n is not d and n.op in REDUCE \
                and any(b.dc.find((n.inputs[0], a)) in k for a in n.attrs["axes"]):
            return n
    return None
