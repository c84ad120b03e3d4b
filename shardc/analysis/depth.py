"""Analyses of deep models from two shallow ones: every figure `analyze` reports is affine in the
number of identical layers (per-layer state, FLOPs, collectives and op times add up; saved
activations and the liveness peak grow by one layer's saved values per layer), so two depths
fix the line and the full depth is read off it.

    a = extrapolate(analyze(prog_at_2_layers), analyze(prog_at_4_layers), 2, 4, 80)

Checked against full-depth analyses (tests/unit/test_analysis.py; Llama 3 70B at 80 layers in
the closing note of issue 14: every figure within 0.1%). `shardc analyze --extrapolate` uses it;
without the flag a zoo model's identical layers are one repeated block (ir/blocks.py), partitioned
once and multiplied out exactly.
"""
from __future__ import annotations

import dataclasses

from .analyze import Analysis


def _line(y1, y2, d1: int, d2: int, d: int):
    return y1 + (y2 - y1) * (d - d1) / (d2 - d1)


def extrapolate(a1: Analysis, a2: Analysis, d1: int, d2: int, depth: int) -> Analysis:
    """The Analysis at `depth` layers on the line through (d1, a1) and (d2, a2); its `events`
    (the modeled timeline) are the d2-layer program's."""
    if not d1 < d2:
        raise ValueError(f"need two depths d1 < d2, got {d1}, {d2}")

    def num(x1, x2, integral=False):
        y = _line(x1, x2, d1, d2, depth)
        return int(round(y)) if integral else y

    def per_key(m1: dict, m2: dict, integral=False):
        return {k: num(m1.get(k, 0), m2.get(k, 0), integral) for k in dict.fromkeys([*m1, *m2])}

    flops, model_flops = num(a1.flops, a2.flops, True), num(a1.model_flops, a2.model_flops, True)
    compute_s, comm_s = num(a1.compute_s, a2.compute_s), num(a1.comm_s, a2.comm_s)
    step_s = num(a1.step_s, a2.step_s)
    peak_flops = a1.hardware.flops_for("bf16")
    mfu = (model_flops / a1.mesh.size) / (step_s * peak_flops) if step_s else 0.0
    return dataclasses.replace(
        a2, flops=flops, model_flops=model_flops, memory=per_key(a1.memory, a2.memory, True),
        comm_bytes=per_key(a1.comm_bytes, a2.comm_bytes, True), compute_s=compute_s, comm_s=comm_s,
        exposed_comm_s=max(0.0, step_s - compute_s), step_s=step_s, mfu=mfu,
        comm_s_by_axes=per_key(a1.comm_s_by_axes, a2.comm_s_by_axes), events=a2.events,
        recompute_flops=num(a1.recompute_flops, a2.recompute_flops, True), extrapolated=(d1, d2, depth))
