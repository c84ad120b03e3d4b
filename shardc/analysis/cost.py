"""A roofline cost model for per-device programs: each op takes the longer of its flops at peak
and its bytes at memory bandwidth; each collective its ring wire bytes at link bandwidth. Used to
model timelines before anything runs (defaults: one H200-class device, NVLink-class links)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Graph, Node, Op
from ..ir.ops import COLLECTIVES
from .collectives import ONE_STREAM

PEAK_FLOPS = 989e12      # dense bf16 tensor-core flop/s
MEMORY_BW = 4.8e12       # bytes/s
LINK_BW = 450e9          # bytes/s per device (one direction)
LAUNCH_S = 2e-6          # fixed cost per op (kernel launch or collective start)


def wire_bytes(kind: str, nbytes: int, n: int) -> int:
    """What each of `n` devices sends for a collective of `nbytes` (HLO-buffer bytes, as the
    ledger counts them) with ring algorithms."""
    if n <= 1:
        return 0
    if kind == "all_reduce":
        return 2 * (n - 1) * nbytes // n
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) * nbytes // n
    if kind == "ragged_all_to_all":  # `nbytes`: the padded buffer, n times what routing sends on average
        return (n - 1) * nbytes // (n * n)  # uniform routing: each device sends 1/n of the buffer, (n-1)/n away
    return nbytes  # collective_permute sends its whole buffer


@dataclass(frozen=True)
class Event:
    node: Node
    kind: str            # "compute" or "collective"
    start: float
    duration: float


def flops(n: Node) -> int:
    if n.op is Op.DOT_GENERAL:
        a = n.inputs[0]
        contract = math.prod(a.shape[d] for d in n.attrs["lhs_contract"])
        return 2 * n.size * contract
    if n.op is Op.RAGGED_DOT:  # every row in some group: the worst case
        a, b = n.inputs[0], n.inputs[1]
        return 2 * a.size * (b.shape[-1] if n.attrs["mode"] == "rows" else b.shape[1])
    if n.op in (Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN):
        return n.inputs[0].size
    return n.size


def op_seconds(n: Node, mesh_axes: dict[str, int]) -> float:
    if n.op in COLLECTIVES:
        group = math.prod(mesh_axes[a] for a in n.attrs["axes"])
        nbytes = max(n.nbytes, n.inputs[0].nbytes) if n.op is Op.RAGGED_ALL_TO_ALL else \
            n.nbytes if n.op is Op.ALL_GATHER else n.inputs[0].nbytes
        return LAUNCH_S + wire_bytes(n.op.value, nbytes, group) / LINK_BW
    moved = sum(i.nbytes for i in n.inputs) + n.nbytes
    return LAUNCH_S + max(flops(n) / PEAK_FLOPS, moved / MEMORY_BW)


PASS_THROUGH = frozenset({Op.PARAMETER, Op.CONSTANT, Op.IOTA, Op.AXIS_INDEX, Op.RESHAPE})  # no time, no stream


def timeline(local: Graph, overlap: bool = True, seconds=None, links=None) -> list[Event]:
    """Modeled schedule of one device: compute in program order on one stream; with `overlap`,
    a collective runs beside it from when its operand is ready (in a `scheduled` program, not
    before the compute stream reaches its place in the order) and when the links it holds are
    free, and its users wait. `seconds(node)` prices an op (default: `op_seconds`, this file's
    flat roofline; shardc.analysis passes its hardware- and topology-aware model); `links(node)`
    names the links a collective holds (collectives.links: collectives on different levels, or
    on opposite ways of a torus axis, run at once); default: one stream for all of them."""
    ready: dict[Node, float] = {}
    in_place = getattr(local, "scheduled", False)
    compute_t = comm_t = 0.0
    free: dict = {}   # link -> when the collective holding it ends
    events = []
    for n in local.nodes:
        if n.op in PASS_THROUGH:
            ready[n] = max((ready.get(i, 0.0) for i in n.inputs), default=0.0)
            continue
        deps = max((ready.get(i, 0.0) for i in n.inputs), default=0.0)
        d = op_seconds(n, local.mesh_axes) if seconds is None else seconds(n)
        if n.op in COLLECTIVES and overlap:
            held = links(n) if links is not None else ONE_STREAM
            start = max(deps, max((free.get(k, 0.0) for k in held), default=0.0), compute_t if in_place else 0.0)
            for k in held:
                free[k] = start + d
            events.append(Event(n, "collective", start, d))
        else:
            start = max(deps, compute_t if n.op not in COLLECTIVES else max(compute_t, comm_t))
            compute_t = start + d
            if n.op in COLLECTIVES:
                comm_t = compute_t
            events.append(Event(n, "collective" if n.op in COLLECTIVES else "compute", start, d))
        ready[n] = start + d
    return events
