"""Pipeline schedules as explicit per-stage slot lists, and their timelines in slots.

    slots = schedule_slots("1f1b", stages=4, microbatches=8)   # slots[stage] = [("F", 0), ("F", 1), ..., ("B", 7)]
    t = timeline(slots)                                        # t[(kind, stage, mb)] = start slot; one slot per action
    bubble_fraction(slots)                                     # idle slots / all slots, over every stage

An action is ("F", j) (stage's forward of microbatch j) or ("B", j) (its backward); each takes one
slot. A stage runs its list in order; F(s, j) waits for F(s-1, j), B(s, j) for B(s+1, j) and F(s, j).
GPipe runs every forward, then every backward; 1F1B (PipeDream-flush) runs p-1-s forwards to warm
up, then alternates one forward and one backward, then drains the backwards. Both take
2(m+p-1) slots, so each stage idles 2(p-1) of them: bubble (p-1)/(m+p-1).
"""
from __future__ import annotations

from ..errors import Error

SCHEDULES = ("gpipe", "1f1b")


def schedule_slots(schedule: str, stages: int, microbatches: int) -> list[list[tuple[str, int]]]:
    p, m = stages, microbatches
    if schedule not in SCHEDULES:
        raise Error(f"pipeline schedule {schedule!r} is not supported (supported: {', '.join(SCHEDULES)})")
    out = []
    for s in range(p):
        if schedule == "gpipe":
            out.append([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
            continue
        warm = min(p - 1 - s, m)
        acts = [("F", j) for j in range(warm)]
        for i in range(m - warm):
            acts += [("F", warm + i), ("B", i)]
        acts += [("B", j) for j in range(m - warm, m)]
        out.append(acts)
    return out


def timeline(slots: list[list[tuple[str, int]]], duration=None, latency=None) -> dict[tuple[str, int, int], float]:
    """Start of every action: each stage in its list's order, after the actions it depends on.
    In slots by default; `duration(kind, stage)` and `latency(kind, stage)` (the transfer an
    action waits for from its neighbour) give modeled seconds instead. Raises shardc.Error if
    the lists deadlock (an action waits on one that never runs first)."""
    dur = duration or (lambda kind, s: 1)
    lat = latency or (lambda kind, s: 0)
    p = len(slots)
    start: dict[tuple[str, int, int], int] = {}
    pos, free = [0] * p, [0] * p
    progress = True
    while progress:
        progress = False
        for s in range(p):
            while pos[s] < len(slots[s]):
                kind, j = slots[s][pos[s]]
                deps = [("F", s - 1, j)] if kind == "F" and s > 0 else []
                if kind == "B":
                    deps = [("F", s, j)] + ([("B", s + 1, j)] if s < p - 1 else [])
                if any(d not in start for d in deps):
                    break
                t = max([free[s]] + [start[d] + dur(d[0], d[1]) + (lat(kind, s) if d[1] != s else 0)
                                     for d in deps])
                start[(kind, s, j)] = t
                free[s] = t + dur(kind, s)
                pos[s] += 1
                progress = True
    if any(pos[s] < len(slots[s]) for s in range(p)):
        stuck = [f"stage {s}: {slots[s][pos[s]]}" for s in range(p) if pos[s] < len(slots[s])]
        raise Error(f"pipeline schedule deadlocks ({'; '.join(stuck)})")
    return start


def bubble_fraction(slots: list[list[tuple[str, int]]]) -> float:
    """Idle slots over all slots of all stages, from the timeline of `slots`."""
    t = timeline(slots)
    span = max(t.values()) + 1
    busy = sum(len(a) for a in slots)
    return (span * len(slots) - busy) / (span * len(slots))


def order(slots: list[list[tuple[str, int]]]) -> list[tuple[int, str, int]]:
    """Every action as (stage, kind, microbatch), sorted by start slot (then stage): an order in
    which one process can run the whole pipeline with every transfer sent before it is received."""
    t = timeline(slots)
    return [(s, k, j) for (k, s, j) in sorted(t, key=lambda a: (t[a], a[1]))]
