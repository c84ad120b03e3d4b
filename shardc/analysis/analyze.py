"""`shardc.analyze(prog, hardware="h200")`: FLOPs, memory, communication and a modeled step time
of one device of a partitioned program, before anything runs.

FLOPs count the per-device program: a dot_general 2·M·N·K, an elementwise op one per element,
a reduction one per input element, a scatter one per update element; moves (reshape, transpose,
broadcast, slice, pad, concatenate, gather) and collectives none. `model_flops` counts the
unpartitioned graph the same way (what MFU divides by: no redundant replicated compute).

Time is a roofline per op on the device (`cost.py`'s timeline, priced here):
- a dot_general takes the longer of its FLOPs at the dtype's peak and its operands and result
  at HBM bandwidth;
- other ops are assumed fused into chains (as shardc's fusion planner and XLA do): each writes
  its result once and reads only operands that come from memory (inputs, matmul and collective
  results); reshapes and broadcasts are free;
- a collective takes the α-β time of collectives.py over the levels its mesh axes span.
`compute_s` sums the device ops. Collectives run on their own stream from when their operand is
ready and their users wait for them (the timeline's overlap model: FSDP's gathers prefetch,
Megatron's all-reduces sit on the critical path); `step_s` is when the last op ends and
`exposed_comm_s = step_s - compute_s`, the communication that overlap does not hide. A program
the latency-hiding scheduler ordered (`scheduled`) starts each collective at its place instead.
`exposed_comm_s_before_passes` and `step_s_before_passes` time the program as partitioned,
before the collective passes (None when none ran).
`mfu` = model FLOPs per device / (step_s · the device's bf16 peak).
"""
from __future__ import annotations

import dataclasses
import math

from ..ir import Op
from ..ir.blocks import multiplicity
from ..ir.graph import ancestors
from ..ir.ops import COLLECTIVES, REDUCE
from .cost import timeline
from . import collectives as coll
from . import hardware as hwmod
from .memory import memory as memory_of
from .memory import kept_values, saved_values

NO_FLOPS = frozenset({Op.PARAMETER, Op.CONSTANT, Op.IOTA, Op.AXIS_INDEX, Op.BROADCAST, Op.RESHAPE,
                      Op.TRANSPOSE, Op.SLICE, Op.CONCATENATE, Op.PAD, Op.GATHER}) | COLLECTIVES
FREE = frozenset({Op.PARAMETER, Op.CONSTANT, Op.IOTA, Op.AXIS_INDEX, Op.BROADCAST, Op.RESHAPE})
FROM_MEMORY = frozenset({Op.PARAMETER, Op.DOT_GENERAL}) | COLLECTIVES


def op_flops(n) -> int:
    if n.op is Op.DOT_GENERAL:
        a = n.inputs[0]
        return 2 * n.size * math.prod(a.shape[d] for d in n.attrs["lhs_contract"])
    if n.op in REDUCE:
        return n.inputs[0].size
    if n.op is Op.SCATTER:
        return n.inputs[-1].size
    if n.op is Op.RAGGED_DOT:  # every row (or K element) in some group: the worst case
        a, b = n.inputs[0], n.inputs[1]
        return 2 * a.size * (b.shape[-1] if n.attrs["mode"] == "rows" else b.shape[1])
    if n.op in NO_FLOPS:
        return 0
    return n.size


def graph_flops(g) -> int:
    return sum(op_flops(n) for n in g.nodes)


def collective_bytes(n) -> int:
    """A collective node's bytes as the ledger counts them (all-gather: its result; a ragged
    all-to-all: its larger buffer, padded for any routing)."""
    if n.op is Op.RAGGED_ALL_TO_ALL:
        return max(n.nbytes, n.inputs[0].nbytes)
    return n.nbytes if n.op is Op.ALL_GATHER else n.inputs[0].nbytes


def routed_bytes(n, group: int, case: str) -> float:
    """What a ragged all-to-all moves: its padded buffer in the worst case (every routed row to
    or from one device); with uniform routing, 1/group of it (each device's own rows)."""
    full = collective_bytes(n)
    return full if case == "worst" else full / group


@dataclasses.dataclass
class Analysis:
    hardware: hwmod.Hardware
    mesh: object
    flops: int                       # per device per step (the per-device program)
    model_flops: int                 # the unpartitioned graph's FLOPs (all devices together)
    memory: dict                     # per device, bytes: params grads optimizer data activations peak
    comm_bytes: dict                 # per device, bytes by mesh axes ("fsdp", "fsdp,tp")
    compute_s: float
    comm_s: float
    exposed_comm_s: float
    step_s: float
    mfu: float
    axis_levels: dict = dataclasses.field(default_factory=dict)   # axis -> "nvlink x8" ...
    comm_s_by_axes: dict = dataclasses.field(default_factory=dict)
    events: list = dataclasses.field(default_factory=list, repr=False)
    extrapolated: tuple | None = None   # (d1, d2, depth): read off the line through two depths
    recompute: str = "none"             # activation recomputation priced (recompute.py)
    recompute_flops: int = 0            # FLOPs it adds per device (in .flops, not in .model_flops)
    exposed_comm_s_before_passes: float | None = None   # the program as partitioned (None: no passes ran)
    step_s_before_passes: float | None = None
    routed: dict = dataclasses.field(default_factory=dict)  # ragged all-to-alls: bytes and s, worst and expected

    @property
    def fits(self) -> bool:
        return self.memory["peak"] <= self.hardware.hbm_bytes

    @property
    def headroom(self) -> float:
        """HBM bytes left at the peak (negative: by how much the program misses)."""
        return self.hardware.hbm_bytes - self.memory["peak"]

    def verdict(self) -> str:
        cap, peak = self.hardware.hbm_bytes, self.memory["peak"]
        if self.fits:
            return (f"Fits: peak {_gb(peak)} of {_gb(cap)} per {self.hardware.name} "
                    f"({_gb(cap - peak)} to spare)")
        return (f"Does NOT fit: peak {_gb(peak)} exceeds {self.hardware.name}'s {_gb(cap)} by {_gb(peak - cap)} "
                f"({peak / cap:.2f}x the device's memory)")

    def table(self, verdict: bool = True) -> str:
        m, rows = self.memory, []
        rows.append(("hardware", str(self.hardware.name) + f" x{self.mesh.size}  ({self.mesh})"))
        if self.extrapolated:
            d1, d2, d = self.extrapolated
            rows.append(("depth", f"{d} layers, extrapolated from analyses at {d1} and {d2} layers"))
        rows.append(("mesh levels", ", ".join(f"{a}: {v}" for a, v in self.axis_levels.items())))
        rc = f", recompute {self.recompute}: +{self.recompute_flops:.3g}" if self.recompute != "none" else ""
        rows.append(("FLOPs / device", f"{self.flops:.4g}   (model {self.model_flops:.4g} total{rc})"))
        for k in ("params", "grads", "optimizer", "activations", "peak"):
            rows.append((f"memory {k}", _gb(m[k])))
        for axes, b in self.comm_bytes.items():
            rows.append((f"comm {axes}", f"{_gb(b)}   {self.comm_s_by_axes.get(axes, 0) * 1e3:.3f} ms"))
        if self.routed:
            r = self.routed
            rows.append(("routed tokens", f"worst {_gb(r['worst_bytes'])} {r['worst_s'] * 1e3:.3f} ms, uniform routing "
                                          f"{_gb(r['expected_bytes'])} {r['expected_s'] * 1e3:.3f} ms (step uses uniform)"))
        rows.append(("compute", f"{self.compute_s * 1e3:.3f} ms"))
        before = ("" if self.exposed_comm_s_before_passes is None
                  else f"; {self.exposed_comm_s_before_passes * 1e3:.3f} ms without the passes")
        rows.append(("comm", f"{self.comm_s * 1e3:.3f} ms  (exposed {self.exposed_comm_s * 1e3:.3f} ms{before})"))
        rows.append(("step", f"{self.step_s * 1e3:.3f} ms"))
        rows.append(("MFU", f"{self.mfu * 100:.1f}%"))
        if verdict:
            rows.append(("memory verdict", self.verdict()))
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

    __str__ = table

    def to_json(self) -> dict:
        return {"hardware": self.hardware.name, "mesh": dict(self.mesh.axes), "flops": self.flops,
                "model_flops": self.model_flops, "memory": dict(self.memory), "comm_bytes": dict(self.comm_bytes),
                "comm_s_by_axes": dict(self.comm_s_by_axes), "compute_s": self.compute_s, "comm_s": self.comm_s,
                "exposed_comm_s": self.exposed_comm_s, "step_s": self.step_s, "mfu": self.mfu,
                "fits": self.fits, "headroom_bytes": self.headroom,
                "axis_levels": dict(self.axis_levels), "extrapolated": self.extrapolated,
                "recompute": self.recompute, "recompute_flops": self.recompute_flops,
                "exposed_comm_s_before_passes": self.exposed_comm_s_before_passes,
                "step_s_before_passes": self.step_s_before_passes, "routed": dict(self.routed)}


def _gb(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


class _Pricer:
    """Seconds of one op of the per-device program on `hw` over `mesh`."""

    def __init__(self, hw, mesh, axis_order=None):
        self.hw = hw
        self.spans = hw.axis_levels(mesh, axis_order)

    def group_spans(self, axes):
        return [s for a in axes for s in self.spans[a]]

    def collective(self, n, case: str = "expected") -> float:
        spans = self.group_spans(n.attrs["axes"])
        if n.op is Op.RAGGED_ALL_TO_ALL:  # an all-to-all of what routing sends (see routed_bytes)
            group = math.prod(f for _, f in spans)
            return coll.seconds("all_to_all", routed_bytes(n, group, case), spans)
        if n.op is Op.COLLECTIVE_PERMUTE and n.attrs.get("ring") and self.hw.ring == "kernel":
            return coll.ring_step(collective_bytes(n), spans)   # a collective matmul's step in one kernel
        return coll.seconds(n.op.value, collective_bytes(n), spans)

    def links(self, n) -> tuple:
        """The links collective `n` holds while it runs (collectives.links)."""
        shift = None
        if n.op is Op.COLLECTIVE_PERMUTE and n.attrs.get("pairs"):
            src, dst = n.attrs["pairs"][0]
            shift = dst - src
        return coll.links(n.op.value, self.group_spans(n.attrs["axes"]), shift)

    def __call__(self, n) -> float:
        if n.op in COLLECTIVES:
            return self.collective(n)
        if n.op in FREE:
            return 0.0
        hw = self.hw
        if n.op is Op.DOT_GENERAL:
            moved = sum(i.nbytes for i in n.inputs) + n.nbytes
            return max(op_flops(n) / hw.flops_for(n.inputs[0].dtype), moved / hw.hbm_bw)
        moved = n.nbytes + sum(_read(n, i) for i in n.inputs if i.op in FROM_MEMORY)
        return max(op_flops(n) / hw.flops_for(n.dtype.compute), moved / hw.hbm_bw)


def _priced_once(price, templates):
    """`price`, computed once per op of a repeated block (its copies cost the same)."""
    if not templates:
        return price
    cache: dict = {}

    def seconds(n):
        t = templates.get(n, n)
        if t not in cache:
            cache[t] = price(n)
        return cache[t]
    return seconds


def op_pricer(hardware, mesh, axis_order=None):
    """seconds(node) of one op of a per-device program on `hardware` (a preset name or a
    Hardware) over `mesh`: what `analyze` times with and the scheduler plans with."""
    return _Pricer(hwmod.get(hardware), mesh, axis_order)


def _read(n, i) -> int:
    """Bytes op n reads of operand i: a slice or gather reads only what it returns (a bucketed
    all-reduce's buffer is sliced once per gradient, not read whole each time)."""
    if n.op in (Op.SLICE, Op.GATHER):
        return min(i.nbytes, n.size * i.dtype.itemsize)
    return i.nbytes


class LiveProgram:
    """The per-device program without values no output needs (the partitioner can leave operands
    it replaced; a compiler would drop them): the nodes that are analyzed, timed and counted."""

    def __init__(self, local):
        live = ancestors(local.outputs)
        self.nodes = [n for n in local.nodes if n in live or n.op is Op.PARAMETER]
        self.inputs, self.outputs, self.output_names = local.inputs, local.outputs, local.output_names
        self.mesh_axes = local.mesh_axes
        self.scheduled = getattr(local, "scheduled", False)


def analyze(prog, hardware="h200", overlap: bool = True, axis_order=None, recompute: str = "none") -> Analysis:
    """FLOPs, memory, communication and modeled time of one device of `prog` on `hardware`
    (a preset name or a shardc.hardware.Hardware). `axis_order` lists the mesh axes outermost
    first to lay them on the levels differently (default: the mesh's order, last axis innermost).
    `recompute` ("none", "selective", "full") prices activation recomputation (recompute.py):
    saved activations and the peak shrink by what is no longer kept, the recomputed ops' FLOPs
    and time are added to .flops, .compute_s and .step_s (not to .model_flops: MFU, not HFU)."""
    if getattr(prog, "pipeline", None) is not None:    # a PipelineProgram models itself
        return prog.analyze(hardware, axis_order, recompute)    # (partition/pipeline_analysis.py)
    from . import recompute as rc
    if recompute not in rc.MODES:
        from ..errors import Error
        raise Error(f"recompute={recompute!r}; valid: {', '.join(rc.MODES)}")
    hw = hwmod.get(hardware)
    # a repeated block (ir/blocks.py) is analyzed once and multiplied out; the order-dependent
    # figures (the timeline, the liveness peak) walk the whole program
    whole = prog.unrolled() if getattr(prog, "repeat", None) is not None else prog
    mesh, local, block = prog.mesh, LiveProgram(whole.local), LiveProgram(prog.local)
    times, global_times = multiplicity(prog.local, prog.repeat), multiplicity(prog.graph, prog.repeat)
    price = _Pricer(hw, mesh, axis_order)
    seconds = _priced_once(price, getattr(whole, "templates", None))   # every layer's copy alike
    events = timeline(local, overlap=overlap, seconds=seconds, links=price.links)
    compute_s = sum(e.duration for e in events if e.kind == "compute")
    comm_s = sum(e.duration for e in events if e.kind == "collective")
    step_s = max((e.start + e.duration for e in events), default=0.0)
    comm_bytes, comm_s_by_axes = {}, {}
    for n in block.nodes:     # the live collectives (the ledger's records of them)
        if n.op in COLLECTIVES:
            key = ",".join(n.attrs["axes"])
            comm_bytes[key] = comm_bytes.get(key, 0) + collective_bytes(n) * times[n]
            comm_s_by_axes[key] = comm_s_by_axes.get(key, 0.0) + price.collective(n) * times[n]
    routed = {}
    for n in block.nodes:
        if n.op is Op.RAGGED_ALL_TO_ALL:
            group = math.prod(mesh.axes[a] for a in n.attrs["axes"])
            for case in ("worst", "expected"):
                routed[f"{case}_bytes"] = routed.get(f"{case}_bytes", 0) + routed_bytes(n, group, case) * times[n]
                routed[f"{case}_s"] = routed.get(f"{case}_s", 0.0) + price.collective(n, case) * times[n]
    model_flops = sum(op_flops(n) * global_times[n] for n in prog.graph.nodes)
    memory = memory_of(prog.graph, block, times, (whole.graph, local))
    flops, extra_flops, extra_s = sum(op_flops(n) * times[n] for n in block.nodes), 0, 0.0
    if recompute != "none":   # (on the whole program: which layer a value is in comes from names)
        forward, batch, saved = saved_values(whole.graph, local)
        saved = kept_values(local, forward, batch, saved)
        kept, extra_flops, nodes = rc.plan(whole.graph, local, forward, batch, saved, op_flops)[recompute]
        memory["peak"] -= memory["activations"] - kept     # the values no longer kept were live at the peak
        memory["activations"] = kept
        extra_s = sum(price(n) for n in nodes)
        flops, compute_s, step_s = flops + extra_flops, compute_s + extra_s, step_s + extra_s
    mfu = (model_flops / mesh.size) / (step_s * hw.flops_for("bf16")) if step_s else 0.0
    levels = {a: " x ".join(f"{lv.name} x{f}" for lv, f in sp) for a, sp in price.spans.items()}
    a = Analysis(hw, mesh, flops, model_flops, memory, comm_bytes, compute_s, comm_s,
                 max(0.0, step_s - compute_s), step_s, mfu, levels, comm_s_by_axes, events,
                 recompute=recompute, recompute_flops=extra_flops, routed=routed)
    raw = getattr(whole, "before_passes", None)
    if raw is not None and raw is not whole.local and overlap:  # the same model, the program as partitioned
        ev = timeline(LiveProgram(raw), overlap=True, seconds=seconds, links=price.links)
        end = max((e.start + e.duration for e in ev), default=0.0)
        a.step_s_before_passes = end + extra_s
        a.exposed_comm_s_before_passes = max(0.0, end - sum(e.duration for e in ev if e.kind == "compute"))
    return a
