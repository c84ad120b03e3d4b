"""The latency-hiding scheduler: orders the per-device program so that collectives run while
independent compute does, as XLA's latency-hiding scheduler, under a per-device memory limit.

A collective is split into its start (its place in the scheduled order) and its done (just
before its first reader). The scheduler is a list scheduler over the cost model (the hardware-
and topology-aware pricing of shardc.analysis): one compute stream, and a queue per link (a
collective holds the links of the levels it spans, analysis.collectives.links: collectives on
different levels, or the two ways of a torus axis, run at once; on the same link, in turn);
a modeled clock for each.

- A collective starts as soon as its operand is ready (critical ones first), unless its result
  would push live memory past the limit: then it waits until memory is freed (an FSDP
  all-gather of a later layer's parameters starts as early as memory allows: prefetch); and
  unless the links it holds are busy past the end of the next compute op: it is queued no
  earlier than it has to be, so a more critical collective that turns ready meanwhile goes first.
- Compute picks, among the ops whose operands are ready now, the one with the longest path to
  the end (critical path first; collective times count on that path, so the ops whose results
  feed a long collective go first); when every ready op waits on a collective, the one whose
  operands arrive first. An op that would pass the memory limit yields to the earliest op of
  the original order.

`reverse_schedule` builds an order bottom-up instead (XLA's direction: each collective starts as
late as the compute covering it allows, so a long prefetch does not hold the one collective
stream while a critical collective queues behind it, and the last gradient reduce-scatter gets
the independent work placed after it); `schedule` keeps whichever order models shorter and fits.

The scheduled program is marked `scheduled`: every engine (runtime/schedule.py) and the
analysis timeline start each collective at its place in the order instead of as soon as its
operand exists, so the order (and the memory bound) is what runs.
"""
from __future__ import annotations

import heapq
import math
import sys
from typing import NamedTuple

from ..ir import Graph, Node, Op
from ..analysis.collectives import ONE_STREAM
from ..analysis.cost import PASS_THROUGH
from ..ir.ops import COLLECTIVES
from .passes_common import PassReport
from .program import SpmdProgram

MEMORY_MARGIN = 0.10  # of the device's HBM, left for what the model does not count (workspace, fragmentation)


def _bottom_levels(g: Graph, users, seconds) -> dict[Node, float]:
    """Longest modeled time from each node's start to the end of the program."""
    bottom: dict[Node, float] = {}
    for n in reversed(g.nodes):
        bottom[n] = seconds(n) + (max([bottom[u] for u in users[n]]) if users[n] else 0.0)
    return bottom


def memory_limit(hardware) -> float:
    from ..analysis import hardware as hwmod
    return hwmod.get(hardware).hbm_bytes * (1 - MEMORY_MARGIN)


_FINITE = sys.float_info.max


class _FirstFit:
    """The ready collectives by priority rank (a min-tree of their result bytes): the first in
    priority order whose result fits a byte budget, in O(log n). Popping every waiting one each
    step instead is quadratic: at 80 layers thousands of prefetches wait on memory."""

    def __init__(self, n: int):
        self.size = 1 << max(0, n - 1).bit_length()
        self.tree = [math.inf] * (2 * self.size)

    def set(self, rank: int, nbytes: float):
        t, i = self.tree, rank + self.size
        t[i] = nbytes
        i >>= 1
        while i:
            t[i] = min(t[2 * i], t[2 * i + 1])
            i >>= 1

    def first(self, budget: float) -> int | None:
        t, budget = self.tree, min(budget, _FINITE)  # (an empty slot, inf, never fits)
        if t[1] > budget:
            return None
        i = 1
        while i < self.size:
            i = 2 * i if t[2 * i] <= budget else 2 * i + 1
        return i - self.size


def _users(g: Graph) -> dict[Node, list[Node]]:
    users: dict[Node, list[Node]] = {n: [] for n in g.nodes}
    for n in g.nodes:
        for i in dict.fromkeys(n.inputs):
            users[i].append(n)
    return users


class _Facts(NamedTuple):
    """What both schedulers read of each node, found once per program (best_order runs them
    several times on the same one)."""
    users: dict    # node -> its readers
    sec: dict      # node -> modeled seconds
    size: dict     # node -> bytes


def _facts(g: Graph, seconds) -> _Facts:
    return _Facts(_users(g), {n: seconds(n) for n in g.nodes}, {n: n.nbytes for n in g.nodes})


def list_schedule(g: Graph, seconds, limit: float, donated=frozenset(), links=None,
                  facts: _Facts | None = None) -> tuple[list[Node], float, int]:
    """(order, modeled makespan, peak live bytes) of `g` under the policy above. Live bytes count
    as analysis/memory.py's liveness does (inputs live from the start, `donated` ones freed after
    their last reader, outputs held), so the peak is what `analyze` reports for the order.
    `links(collective)`: the links it holds (analysis.collectives.links); collectives on disjoint
    links run at once, as analysis.cost.timeline runs them (default: one stream)."""
    index = {n: i for i, n in enumerate(g.nodes)}
    users, sec, size = facts or _facts(g, seconds)   # each op priced once
    bottom = _bottom_levels(g, users, sec.__getitem__)
    by_rank = sorted((n for n in g.nodes if n.op in COLLECTIVES), key=lambda n: (-bottom[n], index[n]))
    holds = {c: tuple(links(c)) if links is not None else ONE_STREAM for c in by_rank}
    groups: dict[tuple, list[Node]] = {}   # collectives by the links they hold (a few kinds)
    for c in by_rank:
        groups.setdefault(holds[c], []).append(c)
    rank = {c: r for members in groups.values() for r, c in enumerate(members)}
    colls = {h: _FirstFit(len(members)) for h, members in groups.items()}  # ready ones, critical first
    free: dict = {}    # link -> when the collective holding it ends
    left = {n: len(set(n.inputs)) for n in g.nodes}
    readers_left = {n: len(users[n]) for n in g.nodes}
    held = (set(g.inputs) - set(donated)) | set(g.outputs)
    done_at: dict[Node, float] = {}
    ready_at: dict[Node, float] = {}   # compute: when its last operand is done (fixed once it is ready)
    live = peak = sum(size[p] for p in g.inputs)
    order: list[Node] = []
    placed: set[Node] = set()
    t_compute = 0.0
    index_key = (lambda c: (-bottom[c], index[c]))
    now: list = []     # compute whose operands are ready by t_compute: (-bottom, index, node)
    later: list = []   # compute waiting on operands: (ready time, index, node)
    first: list = []   # every ready op by original index (what goes when memory is short)

    def top(heap):
        """The heap's first entry not yet placed (placed ones are dropped lazily)."""
        while heap and heap[0][-1] in placed:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def place(n: Node, start: float, duration: float):
        nonlocal live, peak
        order.append(n)
        placed.add(n)
        done_at[n] = start + duration
        if n.op is not Op.PARAMETER:
            live += size[n]
            if live > peak:
                peak = live
        for i in set(n.inputs):  # operands whose last reader this was are freed
            readers_left[i] -= 1
            if readers_left[i] == 0 and i not in held:
                live -= size[i]
        if not users[n] and n not in held and n.op is not Op.PARAMETER:
            live -= size[n]
        for u in users[n]:
            left[u] -= 1
            if left[u] == 0:
                ready(u)

    def ready(u: Node):
        heapq.heappush(first, (index[u], u))
        if u.op in COLLECTIVES:
            colls[holds[u]].set(rank[u], size[u])
        else:
            ready_at[u] = at = max([done_at[i] for i in u.inputs]) if u.inputs else 0.0
            heapq.heappush(later, (at, index[u], u))

    def links_free(h) -> float:
        return max([free.get(k, 0.0) for k in h]) if h else 0.0

    def start_collective(c: Node):
        colls[holds[c]].set(rank[c], math.inf)
        start = max(max(done_at[i] for i in c.inputs), links_free(holds[c]), t_compute)
        for k in holds[c]:
            free[k] = start + sec[c]
        place(c, start, sec[c])

    def run(n: Node):
        nonlocal t_compute
        if n.op in PASS_THROUGH:  # a view or a leaf: takes no time on the stream (as the timeline)
            place(n, ready_at[n], 0.0)
            return
        start = max(ready_at[n], t_compute)
        t_compute = start + sec[n]
        place(n, start, sec[n])

    for p in g.inputs:
        place(p, 0.0, 0.0)
    for n in g.nodes:
        if not n.inputs and n.op is not Op.PARAMETER:
            ready(n)
    while len(order) < len(g.nodes):
        while top(later) and later[0][0] <= t_compute:
            _, i, n = heapq.heappop(later)
            heapq.heappush(now, (-bottom[n], i, n))
        # collectives first, critical first: each starts once its operand is ready, if its result
        # fits in memory and its links free before the next op ends (the next chance to decide:
        # queued later, a more critical collective that turns ready meanwhile can still go first)
        nxt = top(now) or top(later)
        horizon = math.inf if nxt is None else max(t_compute, ready_at[nxt[-1]]) + sec[nxt[-1]]
        while True:   # the most critical that fits among those whose links free before the horizon
            best = None
            for h, fit in colls.items():
                r = fit.first(limit - live) if links_free(h) < horizon else None
                if r is not None and (best is None or index_key(groups[h][r]) < index_key(best)):
                    best = groups[h][r]
            if best is None:
                break
            start_collective(best)
        head = top(now)
        if head is None and top(later):  # every ready op waits on a collective: the first able to go
            _, i, n = heapq.heappop(later)
            head = (-bottom[n], i, n)
            heapq.heappush(now, head)
        n = head[-1] if head else None
        if n is None or live + size[n] > limit:
            # memory is short (or only held-back collectives are left): the original order decides
            if top(first) is None:
                break  # nothing is ready: a cycle (reported below)
            n = top(first)[-1]
            if n.op in COLLECTIVES:
                start_collective(n)
                continue
        run(n)
    if len(order) != len(g.nodes):
        from ..errors import ShardingError
        raise ShardingError(f"schedule: placed {len(order)} of {len(g.nodes)} nodes (a dependency cycle?)")
    return order, max(done_at.values(), default=0.0), peak


def reverse_schedule(g: Graph, seconds, limit: float = float("inf"), donated=frozenset(), links=None,
                     facts: _Facts | None = None) -> list[Node]:
    """An order of `g` built bottom-up, from the last op back to the first, as XLA's latency-
    hiding scheduler does: time runs backwards from the end; a collective is reached when its
    last reader is placed, runs (backwards) on its links from its first reader's
    start, and its start is placed once enough compute has been placed to cover it (or when
    nothing else is left to place). So each collective starts as late as its overlap allows
    instead of as soon as its operand exists: a big prefetch no longer holds the stream while a
    critical collective waits behind it, and the last gradient reduce-scatter gets the
    independent work (other parameters' updates) placed after its start. Among the compute
    ready (all readers placed), the one with the longest path from the program's start goes
    last. Live bytes are counted backwards (a value is live from its last reader back to its
    producer, as analysis/memory.py counts them forwards); while they pass `limit`, the in-flight
    all-gather-like collective that holds the most bytes (result over operand) has its start
    placed at once, ending its prefetch. `schedule` keeps this order only where its peak fits."""
    users, sec, size = facts or _facts(g, seconds)   # each op priced once
    top: dict[Node, float] = {}
    for n in g.nodes:
        top[n] = sec[n] + (max([top[i] for i in n.inputs]) if n.inputs else 0.0)
    index = {n: i for i, n in enumerate(g.nodes)}
    left = {n: len(users[n]) for n in g.nodes}
    need: dict[Node, float] = {}  # reverse time at or after which each placed node's operands must be placed
    due: dict[Node, float] = {}   # reverse time at which each node's readers are all placed (ready_at)
    placed: list[Node] = []
    r_compute = 0.0
    r_free: dict = {}     # link -> reverse time the collective holding it ends (its start)
    ready: list = []      # compute with all readers placed: (-top, -index, node)
    waiting: list = []    # compute whose readers still run at r_compute: (ready at, -index, node)
    flying: list = []     # collectives in flight: (reverse time their start may be placed, -index, node)
    growing: list = []    # the all-gather-like ones among them, most bytes held first: (-held, at, -index, node)
    inputs = set(g.inputs)
    kept = inputs - set(donated)                 # live throughout
    live_now = set(g.outputs) - kept             # outputs: live from the end back to their producer
    live = sum(size[n] for n in kept) + sum(size[n] for n in live_now)

    def in_flight(heap) -> list:
        """`heap` without the collectives already placed (dropped lazily from its top)."""
        while heap and heap[0][-1] in need:
            heapq.heappop(heap)
        return heap

    def ready_at(n: Node) -> float:   # (asked once all its readers are placed: fixed from then)
        if n not in due:
            due[n] = max([need[u] for u in users[n]]) if users[n] else 0.0
        return due[n]

    def place(n: Node, at: float):
        nonlocal live
        need[n] = at
        placed.append(n)
        for i in dict.fromkeys(n.inputs):  # in operand order, not a set's: the order must not depend on hashing
            if i not in live_now and i not in kept:
                live_now.add(i)
                live += size[i]
        if n in live_now:
            live_now.discard(n)
            live -= size[n]
        for i in dict.fromkeys(n.inputs):
            left[i] -= 1
            if left[i] == 0 and i not in inputs:
                arrive(i)

    def arrive(n: Node):
        at = ready_at(n)
        if n.op in PASS_THROUGH:
            place(n, at)
        elif n.op in COLLECTIVES:
            held = tuple(links(n)) if links is not None else ONE_STREAM
            end = max([at] + [r_free.get(k, 0.0) for k in held]) + sec[n]
            for k in held:
                r_free[k] = end
            heapq.heappush(flying, (end, -index[n], n))
            if size[n] > size[n.inputs[0]]:
                heapq.heappush(growing, (size[n.inputs[0]] - size[n], end, -index[n], n))
        else:
            heapq.heappush(waiting, (at, -index[n], n))

    for n in reversed(g.nodes):
        if not users[n] and n not in inputs:
            arrive(n)
    while ready or waiting or in_flight(flying):
        if live > limit and in_flight(growing):  # memory is short: end the prefetch holding the most
            _, at, _, c = heapq.heappop(growing)
            r_compute = max(r_compute, at)
            place(c, at)
            continue
        while waiting and waiting[0][0] <= r_compute:
            _, i, n = heapq.heappop(waiting)
            heapq.heappush(ready, (-top[n], i, n))
        if flying and (flying[0][0] <= r_compute or not ready and (not waiting or flying[0][0] <= waiting[0][0])):
            at, _, c = heapq.heappop(flying)  # covered (or nothing else can go first): its start goes here
            r_compute = max(r_compute, at)
            place(c, at)
            continue
        if not ready:
            at, i, n = heapq.heappop(waiting)
            r_compute = max(r_compute, at)
            heapq.heappush(ready, (-top[n], i, n))
        _, _, n = heapq.heappop(ready)
        r_compute = max(r_compute, ready_at(n)) + sec[n]
        place(n, r_compute)
    rest = [n for n in g.nodes if n not in need and n not in inputs]
    if rest:
        from ..errors import ShardingError
        raise ShardingError(f"schedule: bottom-up placed {len(g.nodes) - len(rest)} of {len(g.nodes)} nodes")
    return list(g.inputs) + placed[::-1]


def best_order(prog: SpmdProgram, price, limit: float, links=None) -> tuple[Graph, float, int, str]:
    """(scheduled program, modeled step, peak live bytes, "top-down" or "bottom-up"): the top-down
    list schedule within `limit` (its budget lowered by any overshoot, program order the last
    resort), or the bottom-up one where it models shorter and fits."""
    from ..analysis.cost import timeline
    from ..analysis.memory import donations, liveness
    g = prog.local
    donated = {g.inputs[i] for i in donations(prog.graph).values()}
    facts = _facts(g, price)
    budget = limit
    for _ in range(6):  # what went early can pile up later: lower the budget by the overshoot
        order, step, peak = list_schedule(g, price, budget, donated, links, facts)  # step == the new order's timeline
        if peak <= limit or budget == 0:
            break
        budget = max(0.0, budget - (peak - limit) * 1.5)
    if peak > limit and budget > 0:  # program order (a budget of 0) is the fallback
        order, step, peak = list_schedule(g, price, 0.0, donated, links, facts)
    best = (_scheduled(g, order), step, peak, "top-down")
    budget = limit
    for _ in range(4):
        up = _scheduled(g, reverse_schedule(g, price, budget, donated, links, facts))
        up_step, up_peak = _makespan(timeline(up, seconds=price, links=links)), liveness(prog.graph, up)[0]
        if up_peak <= limit:
            break
        budget -= (up_peak - limit) * 1.5
    if up_step < step and (up_peak <= limit or up_peak <= peak):
        best = (up, up_step, up_peak, "bottom-up")
    if best[2] > limit:  # nothing fits: the program's own order where it is no worse on both counts
        own_step, own_peak = _makespan(timeline(g, seconds=price, links=links)), liveness(prog.graph, g)[0]
        if own_peak <= best[2] and own_step <= best[1]:
            best = (g, own_step, own_peak, "program order (no order fits)")
    return best


def schedule(prog: SpmdProgram, hardware=None, limit: float | None = None) -> PassReport:
    """Reorder `prog.local` by `best_order` on `hardware` (default: the one `partition` was
    given) within `limit` bytes per device (default: its HBM less MEMORY_MARGIN). A repeated
    block (`prog.repeat`) is scheduled unrolled: a layer's prefetches reach into the layers
    before it, so the order does not repeat layer by layer; the block stays partitioned, passed
    and priced once, and `prog.unrolled()` (what codegen, simulate, the engines and `analyze`'s
    timeline take) holds the scheduled whole program."""
    from ..analysis.analyze import op_pricer
    from ..analysis.cost import timeline
    hardware = hardware or getattr(prog, "hardware", None) or "h200"
    limit = memory_limit(hardware) if limit is None else limit
    pricer, memo = op_pricer(hardware, prog.mesh), {}
    whole = prog
    if prog.repeat is not None:
        prog._unrolled = None            # (the passes before may have changed the block)
        whole = prog.unrolled()
    templates = whole.templates

    def price(n: Node) -> float:
        t = templates.get(n, n)          # a layer's copies cost what the block's op costs
        if t not in memo:
            memo[t] = pricer(n)
        return memo[t]

    before = _makespan(timeline(whole.local, seconds=price, links=pricer.links))
    whole.local, after, peak, how = best_order(whole, price, limit, pricer.links)
    fits = "" if peak <= limit else "; over the limit even in program order"
    n = len(prog.collectives)
    unrolled = f" (the {prog.repeat.depth} layers unrolled)" if prog.repeat is not None else ""
    return PassReport("schedule", n, n, f"{how}{unrolled}, modeled step {before * 1e6:.1f} → {after * 1e6:.1f} µs on "
                                        f"{hardware}, peak live {peak / 1e6:.4g} MB (limit {limit / 1e6:.4g} MB{fits})")


def _scheduled(g: Graph, order: list[Node]) -> Graph:
    new = Graph(order, g.inputs, g.outputs, g.output_names, g.name, g.mesh_axes, g.bound, g.flatten_args)
    new.scheduled = True
    return new


def _makespan(events) -> float:
    return max((e.start + e.duration for e in events), default=0.0)
