"""Modeled time and memory of a pipeline program (shardc.partition(..., pipeline=...)).

    a = shardc.analyze(pipeline_prog, hardware="h200")
    a.bubble_fraction, a.bubble_s, a.step_s, a.stage_forward_s, a.activations_in_flight

Each stage's forward and backward of one microbatch is priced op by op as analyze prices a
per-device program (analyze._Pricer: roofline ops, collectives over the levels their axes span);
the point-to-point sends that an action waits for are priced on the level the pipeline axis
spans (a collective_permute of their bytes). The schedule's slot lists then run with those
durations (pipeline_schedule.timeline), which gives the pipelined span; the step adds the last
stage-local work (accumulated gradients all-reduced over the data axes, the optimizer update).
The bubble is the idle share of all stages over the span: with equal stages and free transfers it
is (p-1)/(m+p-1) for GPipe and 1F1B. Activations in flight: a stage keeps, per microbatch between
its forward and its backward, the forward values its backward reads; the most microbatches at once
(m for GPipe, p-s for 1F1B on stage s) times that.
"""
from __future__ import annotations

import dataclasses

from ..analysis import collectives as coll
from ..analysis import hardware as hwmod


@dataclasses.dataclass
class PipelineAnalysis:
    hardware: object
    mesh: object
    schedule: str
    microbatches: int
    stage_forward_s: list          # per stage, one microbatch
    stage_backward_s: list         # zero-bubble: the input-gradient part (B); W below
    stage_step_s: list             # once per step: accumulation all-reduces and the update
    p2p_s: dict                    # (src, dst, phase) -> seconds per send
    span_s: float                  # first forward to last backward
    step_s: float
    bubble_s: float                # idle seconds of an average stage over the span
    bubble_fraction: float
    activations_in_flight: list    # per stage, bytes per device at its peak
    p2p_bytes: int                 # per device per step
    stage_weight_s: list = dataclasses.field(default_factory=list)   # zero-bubble's W per microbatch

    def table(self) -> str:
        rows = [f"pipeline {self.schedule}: {len(self.stage_forward_s)} stages x {self.microbatches} microbatches "
                f"on {self.hardware.name}",
                f"step {self.step_s * 1e3:.3f} ms, bubble {self.bubble_fraction:.3f} ({self.bubble_s * 1e3:.3f} ms), "
                f"p2p {self.p2p_bytes} B per device"]
        for s, (f, b, a) in enumerate(zip(self.stage_forward_s, self.stage_backward_s, self.activations_in_flight)):
            rows.append(f"  stage {s}: F {f * 1e6:.1f} us  B {b * 1e6:.1f} us  activations {a} B")
        return "\n".join(rows)


def analyze_pipeline(prog, hardware="h200", axis_order=None) -> PipelineAnalysis:
    from ..analysis.analyze import _Pricer
    from .pipeline import MB
    from .pipeline_schedule import timeline
    hw = hwmod.get(hardware)
    price = _Pricer(hw, prog.mesh, axis_order)
    p, m = prog.num_stages, prog.pipeline.microbatches

    def seconds(nodes):
        total = 0.0
        for n in nodes:
            if "axes" in n.attrs and MB in n.attrs["axes"]:
                rest = tuple(a for a in n.attrs["axes"] if a != MB)
                total += coll.seconds("all_reduce", n.nbytes, price.group_spans(rest)) if rest else 0.0
            else:
                total += price(n)
        return total

    fwd = [seconds(st.forward) for st in prog.stages]
    bwd = [seconds(st.backward) for st in prog.stages]
    wgt = [seconds(st.weight) for st in prog.stages]
    step = [seconds(st.step) + seconds(st.free) for st in prog.stages]
    pp_spans = price.group_spans((prog.pipeline.axis,))
    p2p, into = {}, {}
    for t in prog.transfers:
        sec = coll.seconds("collective_permute", t.bytes, pp_spans)
        key = (t.src, t.dst, t.phase)
        p2p[key] = p2p.get(key, 0.0) + sec
        into[(t.phase, t.dst)] = into.get((t.phase, t.dst), 0.0) + sec
    dur = {"F": fwd, "B": bwd, "W": wgt}
    t = timeline(prog.slots, duration=lambda k, s: dur[k][s], latency=lambda k, s: into.get((k, s), 0.0))
    span = max(t[a] + dur[a[0]][a[1]] for a in t)
    busy = sum(m * (f + b + w) for f, b, w in zip(fwd, bwd, wgt))
    devices = len(prog.slots)
    bubble_fraction = (span * devices - busy) / (span * devices) if span else 0.0
    stash = _stash_bytes(prog)
    held = []
    for s in range(p):
        peak = 0
        for j in range(m):
            at = t[("F", s, j)]
            last = "W" if ("W", s, 0) in t else "B"
            peak = max(peak, sum(1 for k in range(m) if t[("F", s, k)] <= at < t[(last, s, k)]))
        held.append(peak * stash[s])
    return PipelineAnalysis(hw, prog.mesh, prog.pipeline.schedule, m, fwd, bwd, step, p2p, span,
                            span + max(step), bubble_fraction * span, bubble_fraction, held, prog.p2p_bytes, wgt)


def _stash_bytes(prog) -> list[int]:
    """Per stage, the bytes of forward values (made or received there) its backward reads."""
    out = []
    for st in prog.stages:
        bwd = set(st.backward) | set(st.weight)
        fwd = set(st.forward) | {t.node for t in prog.transfers if t.dst == st.index and t.phase == "F"}
        read = {i for n in bwd for i in n.inputs if i in fwd}
        out.append(sum(n.nbytes for n in read))
    return out
