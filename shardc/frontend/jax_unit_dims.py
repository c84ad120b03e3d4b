"""Size-1 batch dims kept in the dot: a batch of one captured as the same graph as any batch.

jnp.matmul squeezes the size-1 batch dims out of its operands and puts them back on its
result (squeeze → dot_general → broadcast_in_dim), and the backward sums them away
(reduce_sum over a size-1 axis). Captured as is, batch-1 attention's scores QKᵀ are a
[H, S, S] dot read through a reshape by a [1, H, S, S] softmax, and codegen's fusion rules
(scores rebuilt per tile, never stored) do not see the dot behind the reshape: at batch 1 the
training step stored every layer's scores, dP and dS. These rules keep the unit dims as unit
batch dims of the dot instead, which moves the same elements in the same order.
"""
from __future__ import annotations

from ..ir import DType, Node, Op

_REDUCE = (Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN)


def _squeezed(x: Node) -> tuple[Node, int] | None:
    """(s, u) where x is s with u leading size-1 dims reshaped or reduced away (a sum over a
    size-1 dim, the transpose of jnp.matmul's broadcast back, keeps the values)."""
    if x.op is not Op.RESHAPE and (x.op not in _REDUCE or x.dtype is DType.bool):
        return None
    s = x.inputs[0]
    u = s.rank - x.rank
    if u < 1 or s.shape != (1,) * u + x.shape:
        return None
    if x.op in _REDUCE and tuple(x.attrs["axes"]) != tuple(range(u)):
        return None
    return s, u


def unit_batch_dot(b, x: Node, y: Node, dt, lc, rc, lb, rb) -> Node | None:
    """The dot of x and y, both squeezed from values with the same leading size-1 dims, as a dot
    of those values with the unit dims as leading batch dims, reshaped to the squeezed result
    (which a following broadcast_in_dim back to the unit dims then reads through: `unsqueezed`)."""
    sx, sy = _squeezed(x), _squeezed(y)
    if sx is None or sy is None or sx[1] != sy[1]:
        return None
    (x, u), (y, _) = sx, sy
    lead = tuple(range(u))
    out = b.add(Op.DOT_GENERAL, [b.cast(x, dt), b.cast(y, dt)],
                lhs_batch=lead + tuple(d + u for d in lb), rhs_batch=lead + tuple(d + u for d in rb),
                lhs_contract=tuple(d + u for d in lc), rhs_contract=tuple(d + u for d in rc))
    return b.reshape(out, out.shape[u:])


def unsqueezed(x: Node, shape, dims) -> Node | None:
    """A broadcast_in_dim that only inserts size-1 dims into a value reshaped from one of the
    target shape is that value: both keep the elements in order."""
    shape = tuple(shape)
    if x.op is not Op.RESHAPE or x.inputs[0].shape != shape or list(dims) != sorted(dims):
        return None
    if any(s != 1 for d, s in enumerate(shape) if d not in dims):
        return None
    return x.inputs[0]
