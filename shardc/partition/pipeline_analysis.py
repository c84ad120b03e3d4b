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
    p2p_into_s: dict = dataclasses.field(default_factory=dict)        # (phase, dst) -> seconds an action waits
    recompute: str = "none"
    extrapolated: tuple | None = None      # (layers analyzed, layers modeled) when read off a smaller pipeline

    def table(self) -> str:
        rows = [f"pipeline {self.schedule}: {len(self.stage_forward_s)} stages x {self.microbatches} microbatches "
                f"on {self.hardware.name}",
                f"step {self.step_s * 1e3:.3f} ms, bubble {self.bubble_fraction:.3f} ({self.bubble_s * 1e3:.3f} ms), "
                f"p2p {self.p2p_bytes} B per device"]
        for s, (f, b, a) in enumerate(zip(self.stage_forward_s, self.stage_backward_s, self.activations_in_flight)):
            rows.append(f"  stage {s}: F {f * 1e6:.1f} us  B {b * 1e6:.1f} us  activations {a} B")
        return "\n".join(rows)


def analyze_pipeline(prog, hardware="h200", axis_order=None, recompute: str = "none") -> PipelineAnalysis:
    """`recompute="full"`: every backward first runs its stage's forward again (activation
    checkpointing at stage-layer boundaries, as Megatron-LM's full recomputation)."""
    from ..analysis.analyze import _Pricer
    if recompute not in ("none", "full"):
        from ..errors import Error
        raise Error(f"pipeline analysis: recompute={recompute!r}; valid: none, full")
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
    bwd = [seconds(st.backward) + (f if recompute == "full" else 0.0) for st, f in zip(prog.stages, fwd)]
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
                            span + max(step), bubble_fraction * span, bubble_fraction, held, prog.p2p_bytes, wgt,
                            into, recompute)


def at_depth(a: PipelineAnalysis, layers: int, stages: int, microbatches: int | None = None,
             schedule: str | None = None, chunks: int = 1, end_layers: int | None = None) -> PipelineAnalysis:
    """A production pipeline read off a small one, as a production model is modeled without
    capturing every layer: `a` analyzes the same model with one layer per stage over >= 3 stages
    (`extrapolated` layers: first, middle ones, last). Each stage's forward, backward, W and step
    times are affine in its layers: a middle stage of `layers` layers costs `layers` times a middle
    stage of one; the first and the last stage add their own constant parts (embedding; head and
    loss). Transfers into a stage cost what they cost in `a`. The schedule's slot lists then run
    again with those times: `stages` pipeline devices, `microbatches` (default a's), `schedule`
    (default a's; "interleaved-1f1b" puts `chunks` stages of `layers` layers on each device).
    `end_layers` (default `layers`): the layers of the first and the last stage, beside the
    embedding and the head (Llama 3 gives them one layer fewer to balance the pipeline; 0 leaves
    the embedding alone on the first stage). Memory is not extrapolated (activations_in_flight
    is empty)."""
    from .pipeline_schedule import schedule_slots, timeline
    if len(a.stage_forward_s) < 3:
        raise ValueError("at_depth needs an analysis of >= 3 stages of one layer each")
    m, schedule = microbatches or a.microbatches, schedule or a.schedule
    devices = stages
    stages = devices * (chunks if schedule == "interleaved-1f1b" else 1)

    def per_stage(times):
        if not times:
            return []
        unit, ends = times[1], layers if end_layers is None else end_layers    # times[1]: a middle stage, one layer
        return [times[0] + (ends - 1) * unit] + [layers * unit] * (stages - 2) + [times[-1] + (ends - 1) * unit]

    fwd, bwd = per_stage(a.stage_forward_s), per_stage(a.stage_backward_s)
    wgt, step = per_stage(a.stage_weight_s), per_stage(a.stage_step_s)
    into, n = a.p2p_into_s, len(a.stage_forward_s)

    def latency(kind, s):        # what the analyzed first / middle / last stage waits for
        like = 0 if s == 0 else n - 1 if s == stages - 1 else 1
        return into.get((kind, like), 0.0)

    slots = schedule_slots(schedule, devices, m, chunks)
    dur = {"F": fwd, "B": bwd, "W": wgt or [0.0] * stages}
    t = timeline(slots, duration=lambda kd, s: dur[kd][s], latency=latency)
    span = max(t[x] + dur[x[0]][x[1]] for x in t)
    busy = sum(m * (f + b + (wgt[s] if wgt else 0.0)) for s, (f, b) in enumerate(zip(fwd, bwd)))
    bubble = (span * devices - busy) / (span * devices) if span else 0.0
    return dataclasses.replace(
        a, schedule=schedule, microbatches=m, stage_forward_s=fwd, stage_backward_s=bwd, stage_step_s=step,
        stage_weight_s=wgt, p2p_s={}, span_s=span, step_s=span + max(step), bubble_s=bubble * span,
        bubble_fraction=bubble, activations_in_flight=[], p2p_bytes=0, p2p_into_s={},
        extrapolated=(len(a.stage_forward_s), layers * stages))


def _stash_bytes(prog) -> list[int]:
    """Per stage, the bytes of forward values (made or received there) its backward reads."""
    out = []
    for st in prog.stages:
        bwd = set(st.backward) | set(st.weight)
        fwd = set(st.forward) | {t.node for t in prog.transfers if t.dst == st.index and t.phase == "F"}
        read = {i for n in bwd for i in n.inputs if i in fwd}
        out.append(sum(n.nbytes for n in read))
    return out
