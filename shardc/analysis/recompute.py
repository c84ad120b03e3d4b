"""Activation recomputation priced on a captured training step: what the backward would read and
recompute if the step checkpointed (as Korthikanti et al., "Reducing Activation Recomputation in
Large Transformer Models", 2022, describe), without rewriting the program.

    none        the program as captured: every saved forward value stays until the backward
    selective   attention's s×s values (scores, mask, softmax) are not kept but recomputed: their
                bytes leave the saved set, the FLOPs of the ops that make them are added
    full        each layer keeps only its input (the values from earlier layers it reads); its
                forward runs again in the backward, one layer at a time: saved = the layers'
                inputs + the largest layer's saved values; one more forward of the layers' FLOPs

Layers are found from parameter names (`layers.{i}.` / `h.{i}.`): a forward value belongs to the
latest layer whose parameters it depends on; values that depend on a parameter outside the
layers that no layer uses (the final norm, the LM head) are after the layers and never
recomputed, as in Narayanan et al.'s 96·B·s·l·h²(1 + s/(6h) + V/(16·l·h)).
"""
from __future__ import annotations

import re

from ..ir import Op

MODES = ("none", "selective", "full")
_LAYER = re.compile(r"(?:^|[.\['\"])(?:layers|h|blocks)\.(\d+)\.")


def _layer_index(name: str):
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def plan(g, local, forward: set, batch: set, saved: set, op_flops) -> dict:
    """Saved bytes and extra FLOPs for each mode: {mode: (saved_bytes, extra_flops, extra_nodes)}."""
    layer, outside = {}, {}
    for p, lp in zip(g.inputs, local.inputs):
        i = _layer_index(p.name)
        layer[lp] = -1 if i is None else i
        outside[lp] = frozenset() if i is not None else frozenset([lp])
    for n in local.nodes:
        if n.op is Op.PARAMETER:
            continue
        layer[n] = max((layer[i] for i in n.inputs), default=-1)
        outside[n] = frozenset().union(*(outside[i] for i in n.inputs)) if n.inputs else frozenset()
    # parameters outside the layers that a layer reads (embeddings) are before the layers
    # a parameter outside the layers is before them (an embedding) when the batch meets it before
    # it meets the first layer's parameters, in program order; else after them (a head)
    first_use, first_layer = {}, None
    for k, n in enumerate(local.nodes):
        if n not in forward or n not in batch:
            continue
        if first_layer is None and layer[n] >= 0:
            first_layer = k
        for q in outside[n]:
            first_use.setdefault(q, k)
    before = {q for q, k in first_use.items() if first_layer is None or k < first_layer}
    after = {n for n in forward if outside.get(n, frozenset()) - before}
    in_layers = [n for n in local.nodes if n in forward and layer[n] >= 0 and n not in after
                 and n.op is not Op.PARAMETER]

    out = {"none": (sum(n.nbytes for n in saved), 0, [])}
    square = [n for n in in_layers if n in batch and n.rank >= 3 and n.shape[-1] == n.shape[-2] > 1]
    sq = set(square)
    out["selective"] = (sum(n.nbytes for n in saved if n not in sq), sum(op_flops(n) for n in square), square)

    by_layer: dict[int, int] = {}
    for n in saved:
        if n in after or layer[n] < 0:
            continue
        by_layer[layer[n]] = by_layer.get(layer[n], 0) + n.nbytes
    keep = sum(n.nbytes for n in saved if n in after or layer[n] < 0)
    checkpoints = {i for n in in_layers for i in n.inputs          # a layer's input: made before it
                   if i in batch and layer.get(i, -1) < layer[n] and i not in after}
    inputs_bytes = sum(n.nbytes for n in checkpoints if not (n in saved and layer[n] < 0))
    full_saved = keep + inputs_bytes + max(by_layer.values(), default=0)
    out["full"] = (full_saved, sum(op_flops(n) for n in in_layers), in_layers)
    return out

