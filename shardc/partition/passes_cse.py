"""Common-subexpression elimination over the per-device program, aimed at collectives: two
all-gathers (or any two collectives) of one value with the same attributes are one collective,
as XLA's all-gather CSE. Every op of the IR is pure, so values are numbered as a whole CSE would
(same op, same numbered inputs, same attributes: two gathers of one value reached through
separate reshapes are the same), but only two kinds of value are merged:
- collectives (the point: communication saved);
- values computed from nothing but the device and constants (index arithmetic: tiny).
Merging everything else would lengthen lives for nothing on the wire: a training step's backward
that recomputes a forward value (softmax's exp) would keep the forward's copy alive instead,
adding saved activations (GPT-3 175B at tp=8: +13%)."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op
from ..ir.ops import COLLECTIVES
from .passes_common import PassReport, relink, rewrite
from .program import SpmdProgram


def _frozen(v):
    """A hashable stand-in for an attribute value."""
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, float):
        return ("float", v.hex())  # -0.0 is not 0.0
    if isinstance(v, (np.generic,)):
        return ("scalar", v.dtype.str, v.item())
    try:
        hash(v)
    except TypeError:
        return ("repr", repr(v))
    return (type(v).__name__, v)


def _key(n: Node, canon: dict[Node, Node]):
    return (n.op, n.dtype, n.shape, tuple(id(canon[i]) for i in n.inputs),
            tuple(sorted((k, _frozen(v)) for k, v in n.attrs.items())))


def eliminate_common_collectives(prog: SpmdProgram) -> PassReport:
    g: Graph = prog.local
    before = len(prog.collectives)
    canon: dict[Node, Node] = {}
    seen: dict = {}
    data_free: set[Node] = set()  # computed from the device and constants alone
    for n in g.nodes:
        if n.op is Op.PARAMETER:
            canon[n] = n
            continue
        canon[n] = seen.setdefault(_key(n, canon), n)
        if n.op not in COLLECTIVES and all(i in data_free for i in n.inputs):
            data_free.add(n)
    merged = [n for n in g.nodes if canon[n] is not n and (n.op in COLLECTIVES or n in data_free)]
    if not merged:
        return PassReport("cse", before, before, "no identical values")
    prog.local, new = rewrite(g, {n: (lambda new, n=n: ([], new[canon[n]])) for n in merged})
    prog.collectives = relink(prog, new)
    kinds: dict[str, int] = {}
    for n in merged:
        if n.op in COLLECTIVES:
            kinds[n.op.value] = kinds.get(n.op.value, 0) + 1
    what = ", ".join(f"{k} {v}" for k, v in kinds.items()) or "no collectives"
    return PassReport("cse", before, len(prog.collectives),
                      f"{len(merged)} identical values merged ({what})")
