"""Reports of a peer process that died under jax.distributed (the JAX engines' multi-host runs).

On the first multi-process run every process publishes who it is (host, pid; a process_allgather,
so every process calls `start()` at the same point) and a daemon thread bumps a counter in the
coordination service's key-value store. When a program raises (gloo: "Connection closed by
peer"), `failure()` reads the counters twice: processes whose counter stopped are named as
"process q (host h, pid p)". A program can also block on the dead peer instead of raising; then
nothing returns to Python, and while one is in flight (`watch`) the same thread checks the peers'
counters: one that stops for WATCH_S is reported by name on stderr and this process exits with
status 1 — what JAX's coordination service does anyway after `heartbeat_timeout_seconds` (100 s
by default), without saying which host it was.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np

from .errors import RankError, RankTimeoutError

# WATCH_S ends a process, so it is kept well above the heartbeat stalls a loaded host can show
# (a healthy job must never be killed); PROBE_S only reads counters after a program has failed.
BEAT_S, PROBE_S, WATCH_S = 0.5, 2.0, 10.0
_STATE: dict = {}


def start() -> list[tuple[str, str]]:
    """(host, pid) of every process, gathered once; starts this process's heartbeat."""
    if "roster" not in _STATE:
        import jax
        from jax.experimental import multihost_utils
        me = f"{socket.gethostname()}|{os.getpid()}".encode()[:127].ljust(128, b"\0")
        rows = np.asarray(multihost_utils.process_allgather(np.frombuffer(me, np.uint8)))
        _STATE["roster"] = [tuple(bytes(r).rstrip(b"\0").decode().split("|")) for r in rows]
        client = _client()
        if client is not None:
            threading.Thread(target=_beat, args=(client, jax.process_index(), jax.process_count()),
                             daemon=True).start()
    return _STATE["roster"]


class watch:
    """`with watch(what):` around a multi-process program that may block on a dead peer."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        _STATE["watching"] = self.what

    def __exit__(self, *exc):
        _STATE.pop("watching", None)


def _client():
    try:
        from jax._src import distributed      # the coordination service client (no public handle)
        return distributed.global_state.client
    except Exception:
        return None


def _beat(client, me: int, n_proc: int):
    n, seen = 0, {}          # seen: peer -> (its counter, when it last moved)
    while True:
        n += 1
        try:
            client.key_value_set(f"shardc/beat/{me}", str(n), allow_overwrite=True)
        except Exception:
            return
        what = _STATE.get("watching")
        if not what:               # peers are read only while a program is in flight
            seen.clear()
            time.sleep(BEAT_S)
            continue
        now = time.monotonic()
        for q in range(n_proc):
            if q == me:
                continue
            try:
                v = client.key_value_try_get(f"shardc/beat/{q}")
            except Exception:
                v = None
            if q not in seen or seen[q][0] != v:
                seen[q] = (v, now)
            elif now - seen[q][1] > WATCH_S:
                import sys
                sys.stderr.write(f"RankError: {name(me)}: {what} is blocked; its peer {name(q)} is gone "
                                 f"(no heartbeat for {now - seen[q][1]:.1f} s); exiting\n")
                sys.stderr.flush()
                os._exit(1)
        time.sleep(BEAT_S)


def dead() -> list[int] | None:
    """Processes whose heartbeat stopped (None if the store cannot tell)."""
    import jax
    client, me, n = _client(), jax.process_index(), jax.process_count()
    if client is None:
        return None

    def read():
        out = []
        for q in range(n):
            try:
                out.append(client.key_value_try_get(f"shardc/beat/{q}"))
            except Exception:
                out.append(None)
        return out
    try:
        before = read()
        time.sleep(PROBE_S)
        after = read()
    except Exception:
        return None
    return [q for q in range(n) if q != me and (after[q] is None or after[q] == before[q])]


def name(q: int) -> str:
    who = _STATE.get("roster") or []
    return f"process {q}" + (f" (host {who[q][0]}, pid {who[q][1]})" if q < len(who) else "")


def failure(what: str, err: BaseException, peers=None) -> RankError:
    """The RankError for `what` that raised `err`: names the processes that stopped (or, if the
    heartbeats cannot tell, `peers`: the operation's other ends)."""
    import jax
    me = jax.process_index()
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    gone = [q for q in (peers or []) if q != me] if peers else None
    stopped = dead() if not gone else gone
    if stopped:
        msg = (f"{name(me)}: {what} failed; its peer {', '.join(name(q) for q in stopped)} is gone or "
               f"unreachable ({type(err).__name__}: {first})")
        kind, culprit = "died", stopped[0]
    else:
        msg = f"{name(me)}: {what} failed ({type(err).__name__}: {first}); no peer's heartbeat stopped"
        kind, culprit = "raised", me
    cls = RankTimeoutError if "timed out" in first.lower() or "timeout" in first.lower() else RankError
    return cls(msg, rank=culprit, kind=kind, doing=what, details=str(err))
