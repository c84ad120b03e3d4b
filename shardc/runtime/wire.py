"""A graph as plain data for sending to worker processes: nodes as (op, input positions, attrs,
shape, dtype, source, name) in order, so that pickling never recurses through node chains."""
from __future__ import annotations

from ..ir import Graph, Node, Op


def graph_to_wire(g: Graph) -> dict:
    index = {n: i for i, n in enumerate(g.nodes)}
    nodes = [(n.op.value, tuple(index[i] for i in n.inputs), n.attrs, n.shape, n.dtype, n.source, n.name)
             for n in g.nodes]
    return {"nodes": nodes, "inputs": [index[p] for p in g.inputs], "outputs": [index[o] for o in g.outputs],
            "output_names": list(g.output_names), "name": g.name, "mesh_axes": dict(g.mesh_axes)}


def graph_from_wire(w: dict) -> Graph:
    nodes: list[Node] = []
    for op, ins, attrs, shape, dtype, source, name in w["nodes"]:
        nodes.append(Node(Op(op), [nodes[i] for i in ins], attrs, shape, dtype, source, name))
    return Graph(nodes, [nodes[i] for i in w["inputs"]], [nodes[i] for i in w["outputs"]],
                 w["output_names"], w["name"], w["mesh_axes"])
