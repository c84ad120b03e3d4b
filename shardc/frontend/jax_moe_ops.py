"""JAX primitives of mixture-of-experts layers, registered into jax_ops.RULES: ragged_dot
(lax.ragged_dot / ragged_dot_general, and the two forms its gradients take) onto the IR's
ragged_dot. jnp.bincount(length=), argsort and sort already map (scatter-add, sort)."""
from __future__ import annotations

from ..ir import Op
from .jax_ops import rule


@rule("ragged_dot_general", "ragged_dot")
def _ragged_dot_general(c, lhs, rhs, group_sizes, *, ragged_dot_dimension_numbers=None, group_offset=None,
                        preferred_element_type=None, **_):
    """Ragged rows (lhs [m, k] in groups, rhs [g, k, n] with the group dim anywhere) → rows
    mode; the ragged dim contracted (rhs without a group dim: a weight gradient) → contract mode."""
    b = c.b
    if group_offset is not None:
        raise c.unsupported("ragged_dot with a group_offset (shardc sets the offset itself when it splits experts)")
    dn = ragged_dot_dimension_numbers
    (lc, rc), (lb, rb) = dn.dot_dimension_numbers
    if lb or rb or lhs.rank != 2 or len(lc) != 1 or len(dn.lhs_ragged_dimensions) != 1:
        raise c.unsupported("ragged_dot with batch dims or more than one contracting/ragged dim")
    dt = c.out_dtype(0)
    lhs, rhs = b.cast(lhs, dt), b.cast(rhs, dt)
    lr = dn.lhs_ragged_dimensions[0]
    if lr in lc:  # [m, K] x [K, n] with K in groups -> [g, m, n]
        if dn.rhs_group_dimensions or rhs.rank != 2:
            raise c.unsupported("ragged_dot with a ragged contracting dim and grouped rhs")
        a = lhs if lc[0] == 1 else b.transpose(lhs, [1, 0])
        w = rhs if rc[0] == 0 else b.transpose(rhs, [1, 0])
        return b.add(Op.RAGGED_DOT, [a, w, group_sizes], mode="contract")
    if len(dn.rhs_group_dimensions) != 1 or rhs.rank != 3:
        raise c.unsupported("ragged_dot with ragged rows needs one group dim in a 3-d rhs")
    gd = dn.rhs_group_dimensions[0]
    a = lhs if lr == 0 else b.transpose(lhs, [1, 0])
    free = [d for d in range(3) if d not in (gd, rc[0])][0]
    return b.add(Op.RAGGED_DOT, [a, b.transpose(rhs, [gd, rc[0], free]), group_sizes])
