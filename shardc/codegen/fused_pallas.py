"""Pallas expressions for the planner's recomputed dots (codegen/fused_recompute.py): the dot's
block is rebuilt from its operands' blocks inside the kernel that reads it (its contraction dims
stay whole in every block, as pallas_expr.constrain keeps every reduction factor of an op the
kernel does not accumulate over; the free and batch dims follow the reader's tiling), so scores and
logits never leave VMEM. One-hot scatter-adds need no rule of their own: the ROWS scatter value
(a select-and-sum over the one-hot) already computes them inline."""
from __future__ import annotations

from ..ir import DType, Node


def dot_value(em, n: Node, shape):
    """lax.dot_general of the operand blocks, accumulated in f32: half operands (exact half
    values held in f32) multiply in their own type, f32 at full precision, as the oracle does."""
    lhs, rhs = n.inputs
    a = n.attrs
    lb, rb, lc, rc = (tuple(a[k]) for k in ("lhs_batch", "rhs_batch", "lhs_contract", "rhs_contract"))
    lv, rv = em.value(lhs), em.value(rhs)
    lt, rt = em.array(lv), em.array(rv)
    nb = len(lb)
    if nb > 1:  # Mosaic's matmul takes one batch dim: batch dims first (a transpose), then merged
        (lt, lshape, lc), (rt, rshape, rc) = (_batch_first(t, v.shape, b, c) for t, v, b, c in
                                              ((lt, lv, lb, lc), (rt, rv, rb, rc)))
        bsz = 1
        for s in lshape[:nb]:
            bsz *= s
        lt = f"{lt}.reshape({(bsz,) + tuple(lshape[nb:])})"
        rt = f"{rt}.reshape({(bsz,) + tuple(rshape[nb:])})"
        lc, rc = tuple(i - nb + 1 for i in lc), tuple(i - nb + 1 for i in rc)
        lb = rb = (0,)
    dims = f"(({lc}, {rc}), ({lb}, {rb}))"
    if lhs.dtype in (DType.f16, DType.bf16):
        half = "jnp.bfloat16" if lhs.dtype is DType.bf16 else "jnp.float16"
        text = (f"lax.dot_general({lt}.astype({half}), {rt}.astype({half}), {dims}, "
                f"preferred_element_type=jnp.float32)")
    else:
        text = (f"lax.dot_general({lt}, {rt}, {dims}, precision=lax.Precision.HIGHEST, "
                f"preferred_element_type=jnp.float32)")
    return em.emit(f"{text}.reshape({tuple(shape)})", shape, n.dtype, "d")


def _batch_first(text: str, shape, batch, contract):
    """(text, shape, contracting dims) of a block with its batch dims moved to the front, in
    order (a dot whose head transposes ir/unmerge folded into its dimension numbers)."""
    perm = tuple(batch) + tuple(i for i in range(len(shape)) if i not in batch)
    if perm == tuple(range(len(shape))):
        return text, tuple(shape), tuple(contract)
    return (f"jnp.transpose({text}, {perm})", tuple(shape[i] for i in perm),
            tuple(perm.index(c) for c in contract))
