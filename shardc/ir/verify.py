"""The verifier: a Graph is well formed when every node's operands come before it, every
shape rule agrees with the node's declared type, and inputs/outputs are consistent."""
from __future__ import annotations

from ..errors import IRError
from .graph import Graph
from .ops import Op
from .shapes import infer


def verify(g: Graph) -> Graph:
    seen = set()
    for n in g.nodes:
        for i in n.inputs:
            if i not in seen:
                raise IRError(f"{n.describe()}: operand {i.describe()} is not defined before it")
        attrs = dict(n.attrs)
        try:
            shape, dtype = infer(n.op, n.inputs, attrs, n.shape, n.dtype, g.mesh_axes)
        except IRError as e:
            raise IRError(f"{n.describe()}: {e}") from None
        if (shape, dtype) != (n.shape, n.dtype):
            raise IRError(f"{n.describe()}: shape rule gives {dtype}{list(shape)}")
        seen.add(n)
    params = [n for n in g.nodes if n.op is Op.PARAMETER]
    if params != list(g.inputs):
        raise IRError(f"graph {g.name!r}: inputs do not match its parameter nodes")
    names = [p.name for p in params]
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        raise IRError(f"graph {g.name!r}: duplicate input names {sorted(dup)}")
    for o in g.outputs:
        if o not in seen:
            raise IRError(f"graph {g.name!r}: output {o.describe()} is not a node of the graph")
    if len(g.output_names) != len(g.outputs):
        raise IRError(f"graph {g.name!r}: {len(g.outputs)} outputs but {len(g.output_names)} names")
    for name in g.bound:
        if name not in names:
            raise IRError(f"graph {g.name!r}: bound value {name!r} is not an input")
    return g
