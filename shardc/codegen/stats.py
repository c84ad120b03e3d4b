"""Memory traffic of a launch plan: bytes each kernel reads and writes (its input and output
buffers), against the unfused program (one kernel per IR op) and the matmul-bound minimum (each
dot_general's and ragged_dot's (grouped matmul's) operands read once and its result written once,
everything else fused away).

And the dot FLOPs its kernels execute: each dot a kernel computes (its own, its siblings', each
rebuilt one, once per place the kernel rebuilds it) at 2·|result|·K, times the share of the blocks
of the loops around it that the kernel visits (codegen/masked_blocks.py: causal blocks skipped) at
its GPU launch config, against the same count with every block visited (dense). Attention's dots
(batched dots of two activations: QKᵀ, P·V and their gradients; not a batched dot with a weight
or a weight's gradient, as a MoE expert's) are also counted apart."""
from __future__ import annotations

import math

from ..ir import Graph, Node, Op
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
            "matmul_bound_bytes": matmul_bound_bytes(g), **flops(exe)}


def dot_flops(n: Node) -> int:
    """2·|result|·K of a dot_general; 2·m·k·n of a ragged_dot (each row meets one group)."""
    if n.op is Op.RAGGED_DOT:
        lhs, rhs = n.inputs[:2]
        return 2 * lhs.size * rhs.shape[-1]
    return 2 * n.size * math.prod(n.inputs[0].shape[i] for i in n.attrs["lhs_contract"])


def _is_weight(x: Node) -> bool:
    while x.op in (Op.BROADCAST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE, Op.CAST):
        x = x.inputs[0]
    return x.op in (Op.PARAMETER, Op.CONSTANT)


def attention_dot(n: Node, weight_shapes=frozenset()) -> bool:
    """A batched dot of two activations that is no weight gradient (its result not shaped as a
    float parameter: a MoE expert's dW = bufᵀ·dh is batched over experts too)."""
    return (n.op is Op.DOT_GENERAL and bool(n.attrs["lhs_batch"]) and n.shape not in weight_shapes
            and not any(_is_weight(x) for x in n.inputs))


def flops(exe) -> dict:
    """Dot FLOPs per device per step: executed (causal blocks skipped) and dense, all dots and
    attention's alone."""
    out = dict(flops=0.0, dense_flops=0, attention_flops=0.0, attention_dense_flops=0)
    weights = {p.shape for p in exe.prog.local.nodes if p.op is Op.PARAMETER and p.dtype.is_float}
    for k in exe.kernels:
        ops = set(k.ops)
        sites = [(n, loops) for n, loops in getattr(k, "dot_sites", []) if n in ops]
        seen = {n for n, _ in sites}
        sites += [(n, ()) for n in k.ops if n.op in _MATMULS and n not in seen]
        cfg = None
        for n, loops in sites:
            if loops and cfg is None:
                cfg = k.config(False) if exe.target == "triton" else {}
            dense = dot_flops(n)
            done = dense * math.prod(b.fraction(cfg) for b in loops)
            out["flops"] += done
            out["dense_flops"] += dense
            if attention_dot(n, weights):
                out["attention_flops"] += done
                out["attention_dense_flops"] += dense
    return out
