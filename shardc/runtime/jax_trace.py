"""A measured per-device timeline of the JAX engine, from XLA's own profiler.

Inside one jax.jit(shard_map(...)) program XLA orders and runs the ops; Python sees none of them.
`jax.profiler.trace(..., create_perfetto_trace=True)` writes a Chrome/Perfetto trace with one
event per HLO instruction XLA ran ("all_gather.3", "ppermute.12", "ynn_fusion.1", ...), each
naming its device (args "device_ordinal") whichever thread ran it. `traced` runs the program once
more under the profiler and returns those events as the gloo engine's TraceEvents, one list per device: kind "kernel" for
compute, and "start"/"wait" for a collective (a collective instruction runs synchronously on its
device's thread, so it counts as waited on from start to end: on XLA's CPU client nothing is
hidden behind a collective on that thread, though XLA's thunk executor runs independent
instructions of one device on several threads at once, so a device's events can overlap).
"""
from __future__ import annotations

import glob
import gzip
import json
import re
import tempfile

from ..errors import Error
from .common import TraceEvent

_COLLECTIVE = re.compile(r"^(all[-_]gather|all[-_]reduce|reduce[-_]scatter|collective[-_]permute|ppermute|"
                         r"ragged[-_]all[-_]to[-_]all|all[-_]to[-_]all)")


def device_events(trace_events: list, devices: int) -> list[list[TraceEvent]]:
    """The Perfetto trace's events (its "traceEvents") → one TraceEvent list per device, times in
    seconds, by start time. An instruction's event names its device and HLO op in its args
    ("device_ordinal", "hlo_op"); the thread it ran on does not matter."""
    steps: list[list] = [[] for _ in range(devices)]
    for e in trace_events:
        a = e.get("args") or {}
        if e.get("ph") == "X" and "hlo_op" in a and "device_ordinal" in a and int(a["device_ordinal"]) < devices:
            steps[int(a["device_ordinal"])].append(e)
    if not all(steps):
        raise Error(f"the XLA profiler's trace shows instructions on {sum(map(bool, steps))} of {devices} devices")
    out = []
    for d in range(devices):
        events = []
        for i, e in enumerate(sorted(steps[d], key=lambda e: e["ts"])):
            t0, t1, op = e["ts"] * 1e-6, (e["ts"] + e.get("dur", 0)) * 1e-6, e["args"]["hlo_op"]
            if _COLLECTIVE.match(op):
                events += [TraceEvent("start", i, op, t0, t0), TraceEvent("wait", i, op, t0, t1)]
            else:
                events.append(TraceEvent("kernel", i, op, t0, t1))
        out.append(events)
    return out


def traced(run, args: tuple, devices: int, trace: list) -> list:
    """Run `run(*args)` (a JaxProgram) once to compile, then once under the XLA profiler; append
    one TraceEvent list per device to `trace`; return the second run's outputs."""
    import jax
    jax.block_until_ready(run(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            out = jax.block_until_ready(run(*args))
        files = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
        if not files:
            raise Error("jax.profiler.trace wrote no perfetto_trace.json.gz")
        with gzip.open(files[0]) as f:
            data = json.load(f)
    trace.extend(device_events(data["traceEvents"] if isinstance(data, dict) else data, devices))
    return out
