"""Runs inside a torch.distributed job of many hosts (torchrun --nnodes N, SLURM + torchrun): the
pipeline engine's `run_in_job` (this process runs its own rank's stages, every rank gets the global
outputs), and for it and the SPMD engine (torch_launch) the report of a peer that died.

A peer that dies is reported by name. On the first run every rank publishes who it is (host,
node, pid) to all others, and a heartbeat thread bumps a counter in the job's c10d store for the
rest of the process's life. When a
transfer or collective fails (gloo raises when a peer's connection drops; a hung peer runs into
the process group's timeout), the rank reads the counters twice: ranks whose counter stopped are
the dead ones, and the RankError names each as "rank r (node n, host h, pid p)". If the store is
gone too (its host died), the failed operation's peers are named as the suspects.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta

from .errors import RankError, RankTimeoutError

BEAT_S = 0.5        # heartbeat period
PROBE_S = 2.0       # a counter that does not move for this long belongs to a dead rank


def whoami() -> dict:
    node = os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID", "0"))
    return {"host": socket.gethostname(), "node": int(node), "pid": os.getpid()}


def name(rank: int, who: dict) -> str:
    return f"rank {rank} (node {who['node']}, host {who['host']}, pid {who['pid']})"


class Heartbeat:
    """A counter per rank in the job's store, bumped every BEAT_S by a daemon thread."""

    def __init__(self, rank: int, world: int):
        import torch.distributed as dist
        self.rank, self.world = rank, world
        try:
            self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                       timeout=timedelta(seconds=5))
        except Exception:           # no store reachable: reports fall back to the peers of the failed op
            self.store = None
            return
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self):
        n = 0
        while True:         # for the life of the process (a daemon thread)
            n += 1
            try:
                self.store.set(f"shardc/beat/{self.rank}", str(n))
            except Exception:
                return
            time.sleep(BEAT_S)

    def counters(self) -> list[int | None]:
        out = []
        for r in range(self.world):
            try:
                out.append(int(self.store.get(f"shardc/beat/{r}")) if self.store.check([f"shardc/beat/{r}"]) else None)
            except Exception:
                raise ConnectionError("the job's store is unreachable")
        return out

    def dead(self) -> list[int] | None:
        """Ranks whose heartbeat stopped (None if the store cannot tell)."""
        if self.store is None:
            return None
        try:
            before = self.counters()
            time.sleep(PROBE_S)
            after = self.counters()
        except ConnectionError:
            return None
        return [r for r in range(self.world) if r != self.rank and (after[r] is None or after[r] == before[r])]



_JOB: dict = {}     # per process group: (roster, heartbeat), made on the first run, kept for the process


def job_state():
    """(roster, heartbeat) of the current process group: made collectively on the first run."""
    import torch.distributed as dist
    key = id(dist.group.WORLD)
    if key not in _JOB:
        rank, world = dist.get_rank(), dist.get_world_size()
        roster: list = [None] * world
        dist.all_gather_object(roster, whoami())
        _JOB.clear()
        _JOB[key] = (roster, Heartbeat(rank, world))
    return _JOB[key]


def run_in_job(pays: list[dict], timeout_s: float) -> dict:
    """{rank: (outputs, actions)} of every rank, this process running its own."""
    import torch.distributed as dist

    from .pipeline_exec import _run_rank
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    roster, beat = job_state()
    doing = {"what": "starting", "peers": []}
    try:
        mine = _run_rank(rank, pays[rank], doing)
        every: list = [None] * world
        doing.update(what="gathering the outputs", peers=[r for r in range(world) if r != rank])
        dist.all_gather_object(every, mine)
    except Exception as e:
        raise failure(rank, roster, doing, e, beat) from e
    return dict(enumerate(every))


def failure(rank, roster, doing, err, beat) -> RankError:
    """The RankError for an operation that raised: names the ranks whose heartbeat stopped."""
    dead = beat.dead()
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    me = name(rank, roster[rank])
    if dead:
        who = ", ".join(name(r, roster[r]) for r in dead)
        msg = f"{me}: {doing['what']} failed; the peer stopped: {who} ({type(err).__name__}: {first})"
        kind, culprit = "died", dead[0]
    else:
        peers = doing.get("peers") or []
        who = ", ".join(name(r, roster[r]) for r in peers) or "unknown"
        how = "cannot reach the job's store to tell which peer died" if dead is None else "no peer stopped"
        msg = f"{me}: {doing['what']} failed ({type(err).__name__}: {first}); {how}; its peers: {who}"
        kind, culprit = "raised", (peers[0] if peers else rank)
    cls = RankTimeoutError if "timeout" in first.lower() or "timed out" in first.lower() else RankError
    return cls(msg, rank=culprit, kind=kind, doing=doing["what"], details=str(err))
