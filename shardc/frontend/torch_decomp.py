"""Ops the torch op table has no rule for, mapped through torch's own decompositions, and
torch.export's effect tokens.

`decompose` traces torch._decomp's decomposition of one aten op (make_fx on zero tensors of the
op's example shapes, core-ATen decompositions applied) and maps the ops it produces through the
same converter: group norm, batch norm in training mode, upsampling, adaptive average pooling,
index_copy/index_fill, im2col and many more need no rule of their own. Refusals inside name the
inner op, the user's line and the op that was decomposed."""
from __future__ import annotations

import functools

import torch
from torch.utils import _pytree as pytree

from ..errors import UnsupportedOpError
from ..ir import Node


@functools.lru_cache(maxsize=None)
def decomposition(target):
    """torch's own decomposition of an aten overload, for ops the op table has no rule for."""
    from torch._decomp import decomposition_table
    return decomposition_table.get(target)


def with_effects(n, source):
    """torch.export threads a token through ops with side effects; the ones that only check
    (linalg's error checks, asserts) have no value here; others are refused by name."""
    from .torch import _at

    op = n.args[1]
    name = getattr(op, "__name__", str(op))
    if "check" in name or "assert" in name:
        return (None, None)
    raise UnsupportedOpError(f"{op}{_at(source)} (an op with side effects) is not supported by shardc")


def decompose(conv, n, target, source):
    """An aten op without a rule but with a decomposition in torch._decomp: trace that
    decomposition (make_fx, on empty tensors of the op's example shapes) and map its ops."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from .torch import _at, _core_aten_table, _first_line, _output_node

    flat, spec = pytree.tree_flatten((n.args, n.kwargs))
    at = [i for i, a in enumerate(flat) if isinstance(a, torch.fx.Node) and isinstance(conv.env[a], Node)]
    values = [conv.env[a] if isinstance(a, torch.fx.Node) else a for a in flat]
    examples = []
    for i in at:
        val = flat[i].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedOpError(f"{target}{_at(source)} is not supported by shardc (no example value)")
        examples.append(torch.zeros(tuple(int(s) for s in val.shape), dtype=val.dtype))
    decomp = decomposition(target)

    def fn(*ts):
        full = list(values)
        for i, t in zip(at, ts):
            full[i] = t
        a, k = pytree.tree_unflatten(full, spec)
        out = decomp(*a, **k)
        return tuple(out) if isinstance(out, tuple) else out

    try:
        gm = make_fx(fn, decomposition_table=_core_aten_table(), tracing_mode="fake")(*examples)
    except Exception as err:
        raise UnsupportedOpError(f"{target}{_at(source)} is not supported by shardc (its decomposition "
                                 f"does not trace: {_first_line(err)})") from err
    placeholders = [p for p in gm.graph.nodes if p.op == "placeholder"]
    for ph, i in zip(placeholders, at):
        conv.env[ph] = values[i]
    outer, conv.outer_source = conv.outer_source, source
    try:
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                value = getattr(gm, node.target)
                conv.env[node] = conv.constant(value) if isinstance(value, torch.Tensor) else value
            elif node.op == "call_function":
                try:
                    conv.env[node] = conv.call(node)
                except UnsupportedOpError as err:
                    raise UnsupportedOpError(f"{err} (in the decomposition of {target})") from err
    finally:
        conv.outer_source = outer
    result = _output_node(gm.graph).args[0]
    out = torch.fx.node.map_arg(result, lambda a: conv.env[a])
    return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 and \
        not isinstance(n.meta.get("val"), (list, tuple)) else out
