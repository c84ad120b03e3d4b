"""Memory traffic of a launch plan: bytes each kernel reads and writes (its input and output
buffers), against the unfused program (one kernel per IR op) and the matmul-bound minimum (each
dot_general's and ragged_dot's (grouped matmul's) operands read once and its result written once,
everything else fused away)."""
from __future__ import annotations

from ..ir import Graph, Op
from ..ir.ops import COLLECTIVES
from .inlining import is_buffer_leaf


def kernel_bytes(exe) -> int:
    return sum(sum(x.nbytes for x in k.inputs) + sum(o.nbytes for o in k.outputs) for k in exe.kernels)


def unfused_bytes(g: Graph) -> int:
    return sum(sum(i.nbytes for i in n.inputs) + n.nbytes for n in g.nodes
               if n.op not in (Op.PARAMETER, Op.CONSTANT) and n.op not in COLLECTIVES)


def unfused_kernels(g: Graph) -> int:
    return sum(1 for n in g.nodes if n.op not in (Op.PARAMETER, Op.CONSTANT) and n.op not in COLLECTIVES)


def matmul_bound_bytes(g: Graph) -> int:
    """An operand made from scalars and iotas alone (the frontend's cumsum is a dot with a
    triangular matrix built from iotas) is built in the kernel's operand loads, never read: not
    counted."""
    read = set()
    for n in g.nodes:
        if is_buffer_leaf(n) or any(i in read for i in n.inputs):
            read.add(n)
    return sum(sum(i.nbytes for i in n.inputs if i in read) + n.nbytes for n in g.nodes if n.op in _MATMULS)


_MATMULS = (Op.DOT_GENERAL, Op.RAGGED_DOT)


def summary(exe) -> dict:
    g = exe.prog.local
    return {"kernels": len(exe.kernels), "unfused_kernels": unfused_kernels(g),
            "bytes": kernel_bytes(exe), "unfused_bytes": unfused_bytes(g),
            "matmul_bound_bytes": matmul_bound_bytes(g)}
