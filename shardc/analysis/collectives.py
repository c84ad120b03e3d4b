"""α-β time of one collective over the interconnect levels its mesh axes span.

    seconds(kind, nbytes, spans)       spans: [(Level, factor), ...] fastest level first

`nbytes` counts as the ledger does (XLA's HLO shapes): the result of an all-gather, the input of a
reduce-scatter, the buffer of an all-reduce, all-to-all or permute. On one level of n devices:

    all_gather, reduce_scatter   (n-1)·α + (n-1)/n · B / β          (ring)
    all_reduce                   min(ring: 2(n-1)·α + 2(n-1)/n · B / β,
                                     tree: 2·⌈log2 n⌉·α + 2 · B / β,   (small messages: tree)
                                     nvls: 2·α + B / β_nvls)           (an NVSwitch with NVLink SHARP)
    all_to_all                   (n-1)·α + (n-1)/n · B / β
    collective_permute           α + B / (β / links)               (one way: one of a torus axis's 2 links)

plus, once per collective, the launch cost of the slowest level it spans (starting the kernel and
synchronizing the devices: what small-message nccl-tests bottom out at); β is the level's
bandwidth for a message of that size (`Level.bw_for`: NCCL reaches full bandwidth from ~64 MB).
Across levels the collective is hierarchical, as NCCL's and XLA's multi-level collectives are:
a reduce-scatter runs on the fastest level first and each slower level sees the buffer already
divided by the levels below it (an all-gather runs the same stages in reverse; an all-reduce is
reduce-scatter up, all-reduce on the slowest level, all-gather down), so the slow links carry
B / (devices below). An all-to-all sends the fraction of its buffer bound outside each level's
group over that level; a permute is charged to the slowest level it crosses.
"""
from __future__ import annotations

import math


def merge(spans) -> list:
    """Factors of the same level multiplied (two mesh axes on NVLink form one NVLink group),
    fastest level first (the order the hardware lists its levels in)."""
    out: dict = {}
    for level, f in spans:
        out[level] = out.get(level, 1) * f
    return [(lv, f) for lv, f in out.items() if f > 1]


def _ring(kind: str, nbytes: float, n: int, level) -> float:
    if n <= 1:
        return 0.0
    a, b = level.alpha, level.bw_for(nbytes)
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) * a + (n - 1) / n * nbytes / b
    if kind == "all_reduce":
        ring = 2 * (n - 1) * a + 2 * (n - 1) / n * nbytes / b
        tree = 2 * math.ceil(math.log2(n)) * a + 2 * nbytes / b
        if level.nvls:  # the switch reduces: each link carries the buffer once each way
            return min(ring, tree, 2 * a + nbytes / level.nvls_bw_for(nbytes))
        return min(ring, tree)
    return a + nbytes / level.permute_bw_for(nbytes)  # collective_permute: one link, one way


def seconds(kind: str, nbytes: float, spans) -> float:
    """Modeled time of one collective of `nbytes` (ledger convention) over `spans`: the slowest
    spanned level's launch cost, then the α-β time of its stages."""
    spans = merge(spans)
    if not spans or nbytes <= 0:
        return 0.0
    return max(level.launch for level, _ in spans) + _transfer(kind, nbytes, spans)


ONE_STREAM = (("collectives",),)   # what a collective holds where no links are modeled: one stream


def links(kind: str, spans, shift: int | None = None) -> tuple:
    """The links a collective holds while it runs (`analysis.cost.timeline` and the scheduler run
    collectives that hold disjoint links at once, and those that share one in turn): each spanned
    level's, both ways round; a collective-permute that sends `shift` places round the ring holds
    one way only on a level with a link each way (a torus axis with wraparound), so the two
    halves of a bidirectional ring run together there. (On an NVSwitch both ways leave through
    the same ports: one link.)"""
    held = []
    for level, f in merge(spans):
        if level.links > 1:
            ways = ("+", "-") if kind != "collective_permute" or shift is None else \
                (("+",) if shift % f <= f // 2 else ("-",))
            held += [(level.name, w) for w in ways]
        else:
            held.append((level.name,))
    return tuple(held)


def ring_step(nbytes: float, spans) -> float:
    """Modeled time of one step of a ring run inside one kernel (Hardware.ring == "kernel"): the
    slowest spanned level's `ring_step` (signal and fence) and `nbytes` at its full bandwidth;
    a level without one prices the step as a collective-permute."""
    spans = merge(spans)
    if not spans or nbytes <= 0:
        return 0.0
    level = spans[-1][0]
    if level.ring_step is None:
        return seconds("collective_permute", nbytes, spans)
    return level.ring_step + level.alpha + nbytes / level.bw


def _transfer(kind: str, nbytes: float, spans) -> float:
    if len(spans) == 1:
        (level, n), = spans
        return _ring(kind, nbytes, n, level)
    if kind == "collective_permute":
        return _ring(kind, nbytes, 2, spans[-1][0])
    if kind == "all_to_all":
        total, below, n_all = 0.0, 1, math.prod(f for _, f in spans)
        for level, f in spans:
            total += (f - 1) * level.alpha + (n_all - below) / n_all * nbytes / level.bw_for(nbytes)
            below *= f
        return total
    # reduce_scatter / all_gather / all_reduce: stages fastest first, buffer shrinking by each level
    total, buf = 0.0, float(nbytes)
    for i, (level, f) in enumerate(spans):
        last = i == len(spans) - 1
        if kind == "all_reduce":
            if last:
                total += _ring("all_reduce", buf, f, level)
            else:  # reduce-scatter going up and all-gather coming down
                total += 2 * _ring("reduce_scatter", buf, f, level)
        else:
            total += _ring("reduce_scatter", buf, f, level)
        buf /= f
    return total


def bus_bandwidth(kind: str, nbytes: float, spans) -> float:
    """nccl-tests' "busbw" for the modeled time: algbw times (n-1)/n (2(n-1)/n for all-reduce),
    to compare with published nccl-tests tables."""
    n = math.prod(f for _, f in merge(spans)) or 1
    t = seconds(kind, nbytes, spans)
    factor = 2 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n
    return nbytes / t * factor if t else 0.0
