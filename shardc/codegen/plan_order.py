"""Steps in dependency order: each runs after the steps writing what it reads, and otherwise keeps
its place in the list (Kahn's algorithm, ties broken by list position)."""
from __future__ import annotations

import heapq

from ..errors import Error


def topological(plan: list) -> list:
    """Order steps so each runs after the steps writing what it reads (stable otherwise)."""
    writer = {}
    for i, s in enumerate(plan):
        for w in s.writes:
            writer[w] = i
    deps = {i: {writer[r] for r in s.reads if r in writer and writer[r] != i} for i, s in enumerate(plan)}
    users: dict[int, list[int]] = {i: [] for i in deps}
    for i, ds in deps.items():
        for d in ds:
            users[d].append(i)
    ready = [i for i, ds in deps.items() if not ds]
    heapq.heapify(ready)
    out = []
    while ready:
        i = heapq.heappop(ready)
        out.append(plan[i])
        for u in users[i]:
            deps[u].discard(i)
            if not deps[u]:
                heapq.heappush(ready, u)
    if len(out) != len(plan):
        raise Error("codegen: the launch plan has a cycle (a fusion group depends on its own output)")
    return out
