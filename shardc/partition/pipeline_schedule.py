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

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble")


def schedule_slots(schedule: str, stages: int, microbatches: int, chunks: int = 2) -> list[list[tuple]]:
    """Per-device slot lists; `stages` is the number of devices along the pipeline axis (for
    interleaved-1f1b each holds `chunks` stages: device d runs stages d, d+p, ...)."""
    p, m = stages, microbatches
    if schedule not in SCHEDULES:
        raise Error(f"pipeline schedule {schedule!r} is not supported (supported: {', '.join(SCHEDULES)})")
    if schedule == "zero-bubble":
        return _zero_bubble(p, m)
    if schedule == "interleaved-1f1b":
        return _interleaved(p, m, chunks)
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
    nstages = p * (1 + max((a[2] for acts in slots for a in acts if len(a) > 2), default=0))
    start: dict[tuple[str, int, int], int] = {}
    pos, free = [0] * p, [0] * p
    progress = True
    while progress:
        progress = False
        for s in range(p):
            while pos[s] < len(slots[s]):
                a = slots[s][pos[s]]
                kind, j, k = a[0], a[1], stage_of(a, s, p)
                deps = _deps(kind, k, j, nstages)
                if any(d not in start for d in deps):
                    break
                t = max([free[s]] + [start[d] + dur(d[0], d[1]) + (lat(kind, k) if d[1] % p != s else 0)
                                     for d in deps])
                start[(kind, k, j)] = t
                free[s] = t + dur(kind, k)
                pos[s] += 1
                progress = True
    if any(pos[s] < len(slots[s]) for s in range(p)):
        stuck = [f"stage {s}: {slots[s][pos[s]]}" for s in range(p) if pos[s] < len(slots[s])]
        raise Error(f"pipeline schedule deadlocks ({'; '.join(stuck)})")
    return start


def stage_of(action: tuple, device: int, p: int) -> int:
    """The stage an action of `device`'s slot list runs: (kind, j) its own; (kind, j, c) chunk c's."""
    return device + p * (action[2] if len(action) > 2 else 0)


def _interleaved(p: int, m: int, v: int) -> list[list[tuple]]:
    """Megatron's interleaved 1F1B (Narayanan et al., SC'21): device d holds stages d + c·p for
    chunks c < v; microbatches go through in groups of p, each group through every chunk in turn
    (backwards through the chunks in reverse); warm-up 2(p-d-1) + (v-1)p forwards, then 1F1B."""
    if m % p:
        raise Error(f"interleaved-1f1b needs microbatches divisible by the pipeline size ({m} over {p})")

    def action(kind, i):
        c = (i % (p * v)) // p
        return (kind, (i // (p * v)) * p + i % p, c if kind == "F" else v - 1 - c)

    out = []
    for d in range(p):
        total = m * v
        warm = min(2 * (p - d - 1) + (v - 1) * p, total)
        acts = [action("F", i) for i in range(warm)]
        for i in range(total - warm):
            acts += [action("F", warm + i), action("B", i)]
        acts += [action("B", i) for i in range(total - warm, total)]
        out.append(acts)
    return out


def _deps(kind, s, j, p):
    if kind == "F":
        return [("F", s - 1, j)] if s > 0 else []
    if kind == "B":
        return [("F", s, j)] + ([("B", s + 1, j)] if s < p - 1 else [])
    return [("B", s, j)]    # W: the weight gradients after the input gradients


def _zero_bubble(p: int, m: int) -> list[list[tuple[str, int]]]:
    """ZB-H1 (Qi et al., 2023): the backward split into B (input gradients, on the critical path)
    and W (weight gradients, deferred into the bubbles). Built by running the stages slot by slot:
    each takes a ready B first, else a F while fewer than p - s microbatches are in flight (1F1B's
    memory), else a deferred W."""
    slots = [[] for _ in range(p)]
    done: dict = {}
    nf, nb, nw = [0] * p, [0] * p, [0] * p
    t = 0
    while any(nw[s] < m for s in range(p)):
        now = []
        for s in range(p):
            ready = lambda k, j: all(done.get(d, t + 1) <= t for d in _deps(k, s, j, p))
            if nb[s] < nf[s] and ready("B", nb[s]):
                now.append((s, "B", nb[s]))
            elif nf[s] < m and nf[s] - nb[s] < p - s and ready("F", nf[s]):
                now.append((s, "F", nf[s]))
            elif nw[s] < nb[s]:
                now.append((s, "W", nw[s]))
        for s, k, j in now:
            slots[s].append((k, j))
            done[(k, s, j)] = t + 1
            if k == "F":
                nf[s] += 1
            elif k == "B":
                nb[s] += 1
            else:
                nw[s] += 1
        t += 1
    return slots


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
