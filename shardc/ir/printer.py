"""IR → text. The parser reads this text back; golden tests compare it.

    graph main mesh(dp=2, tp=4) {
      %0 "x": f32[2,16] = parameter()
      %1: f32[2,16] = tanh(%0) loc("model.py:12")
      %2 "h": f32[2,4] = dot_general(%1, %0) {lhs_contract=[1], rhs_contract=[1]} loc("model.py:13")
      return %2 "out"
    }
"""
from __future__ import annotations

import json
import math

import numpy as np

from .dtypes import DType
from .graph import Graph, Node


def format_type(shape, dtype: DType) -> str:
    return f"{dtype}[{','.join(str(s) for s in shape)}]"


def format_value(v) -> str:
    if isinstance(v, DType):
        return v.value
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if v is None:
        return "none"
    if isinstance(v, np.ndarray):
        flat = v.astype(np.float32) if v.dtype.kind == "V" or v.dtype.name == "bfloat16" else v
        return "dense<[" + ", ".join(format_value(x) for x in flat.reshape(-1).tolist()) + "]>"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def format_node(n: Node, ids: dict[Node, int]) -> str:
    name = f" {json.dumps(n.name)}" if n.name else ""
    args = ", ".join(f"%{ids[i]}" for i in n.inputs)
    attrs = ""
    if n.attrs:
        attrs = " {" + ", ".join(f"{k}={format_value(n.attrs[k])}" for k in sorted(n.attrs)) + "}"
    loc = f" loc({json.dumps(n.source)})" if n.source else ""
    return f"%{ids[n]}{name}: {format_type(n.shape, n.dtype)} = {n.op.value}({args}){attrs}{loc}"


def print_graph(g: Graph) -> str:
    ids = {n: i for i, n in enumerate(g.nodes)}
    mesh = ""
    if g.mesh_axes:
        mesh = " mesh(" + ", ".join(f"{k}={v}" for k, v in g.mesh_axes.items()) + ")"
    lines = [f"graph {g.name}{mesh} {{"]
    lines += ["  " + format_node(n, ids) for n in g.nodes]
    outs = ", ".join(f"%{ids[o]} {json.dumps(name)}" for o, name in zip(g.outputs, g.output_names))
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines) + "\n"
