"""The torch.distributed pipeline engine: one gloo rank per (stage, device of the stage's mesh).

    outs = shardc.runtime.run(pipeline_prog, *args, engine="torch_pipeline", trace=trace)

Rank s·R + r runs stage s on device r of the other axes (dp, tp): its free values once, then the
schedule's slot list in order — forward and backward of each microbatch op by op (torch_ops),
collectives within the stage on process groups over the other axes, activations and gradients
received with `recv` before the action that needs them and sent with `isend` after the action
that makes them (one tag per transfer and microbatch) — then the accumulated gradients
all-reduced over the stage's data axes and the optimizer step. `trace` (a list) receives each
rank's executed actions: [(stage, r, [("F", 0), ...])]; `slot_bubble(trace)` counts the bubble
fraction from them in schedule slots.
"""
from __future__ import annotations

import os
import queue
import time

import numpy as np

from ..errors import Error
from ..partition.mesh import Mesh
from .errors import RankError, RankTimeoutError
from .wire import graph_from_wire, graph_to_wire


def _rank_main(rank: int, world: int, port: int, payload: dict, results):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        import torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        results.put((rank, "ok", _run_rank(rank, payload, {})))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as e:  # report, never hang the parent
        import traceback
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))


def _run_rank(rank: int, payload: dict, doing: dict) -> tuple[dict, list]:
    """This rank's stages over the schedule on the current process group: (outputs by index,
    actions run). `doing` is kept up to date with the transfer or collective under way (and its
    peer ranks), for the report if a peer dies."""
    import torch
    import torch.distributed as dist

    from ..ir import Op
    from ..partition.pipeline_schedule import stage_of
    from .torch_exec import RankGroups, _from_wire, _to_wire, start_collective
    from .torch_ops import to_numpy, to_torch, torch_node
    wmesh = Mesh(payload["world_axes"])
    groups = RankGroups(wmesh, rank)
    groups.prepare(payload["axes_list"])
    local = graph_from_wire(payload["graph"])
    N = local.nodes
    coords = wmesh.coords(rank)
    m, p = payload["m"], payload["p"]
    stages = {k: _StageState(sp, N, m, to_torch) for k, sp in payload["stages"].items()}
    pending, mailbox = [], {}      # mailbox: sends between two stages of this rank

    def all_reduce(v, axes, what):
        pg, ranks = groups.get(axes)
        doing.update(what=f"all_reduce of {what} over {'/'.join(axes)}", peers=[q for q in ranks if q != rank])
        dist.all_reduce(v, group=pg)

    def run(st, nodes, j, env):
        for n in nodes:
            if n.op is Op.PARAMETER or n in st.accs:
                continue
            if n.op is Op.AXIS_INDEX:
                v = j if n.attrs["axis"] == "mb" else int(coords[n.attrs["axis"]])
                env[n] = torch.tensor(v, dtype=torch.int32)
            elif n in st.pre:        # a whole-batch sum of batch-only values, before any microbatch
                nodes, rest = st.pre[n]
                total = 0
                for k in range(m):
                    run(st, nodes, k, st.menv[k])
                    total = total + st.menv[k][n.inputs[0]]
                if rest:
                    total = _to_wire(total)
                    all_reduce(total, rest, n.describe())
                    total = _from_wire(total, n.dtype)
                env[n] = total
            elif n.op.value in payload["collective_ops"]:
                axes = tuple(n.attrs["axes"])
                doing.update(what=n.describe(), peers=[q for q in groups.get(axes)[1] if q != rank])
                env[n] = start_collective(n, st.get(n.inputs[0], j), groups,
                                          *[st.get(i, j) for i in n.inputs[1:]]).wait()
            else:
                env[n] = torch_node(n, [st.get(i, j) for i in n.inputs])

    def tag(ti, j):
        return ti * (m + 1) + (m if j is None else j)

    def recv(st, phase, j, env):
        for ti, pos, src in st.recvs.get(phase, ()):
            n = N[pos]
            if src == rank:
                env[n] = mailbox.pop((ti, j))
                continue
            buf = _to_wire(torch.empty(n.shape, dtype=to_torch(np.zeros((), n.dtype.np)).dtype))
            doing.update(what=f"recv of {n.describe()} (microbatch {j}) from rank {src}", peers=[src])
            dist.recv(buf, src=src, tag=tag(ti, j))
            env[n] = _from_wire(buf, n.dtype)

    def send(st, phase, j, env):
        for ti, pos, dst in st.sends.get(phase, ()):
            if dst == rank:
                mailbox[(ti, j)] = env[N[pos]]
            else:
                pending.append((dist.isend(_to_wire(env[N[pos]]), dst=dst, tag=tag(ti, j)), dst))

    for st in stages.values():
        run(st, st.lists["free"], None, st.senv)
    done = []
    for action in payload["slots"]:
        kind, j = action[0], action[1]
        st = stages[stage_of(action, payload["device"], p)]
        recv(st, kind, j, st.menv[j])
        run(st, st.lists[{"F": "forward", "B": "backward", "W": "weight"}[kind]], j, st.menv[j])
        for c in st.accs:
            if c.inputs[0] in st.menv[j] and (c, j) not in st.acc:
                st.acc[(c, j)] = True
                v = st.menv[j][c.inputs[0]]
                st.acc[c] = v.clone() if c not in st.acc else st.acc[c] + v
        send(st, kind, j, st.menv[j])
        done.append(tuple(action))
    outs = {}
    for k in sorted(stages, reverse=True):     # step values go to lower stages
        st = stages[k]
        recv(st, "step", None, st.senv)
        for n in st.lists["step"]:
            if n in st.accs:
                v = st.acc[n]
                if st.accs[n]:
                    v = _to_wire(v)
                    all_reduce(v, st.accs[n], n.describe())
                    v = _from_wire(v, n.dtype)
                st.senv[n] = v
            else:
                run(st, [n], None, st.senv)
        send(st, "step", None, st.senv)
        outs.update({i: to_numpy(st.get(N[pos], 0)) for i, pos in st.outputs})
    for w, dst in pending:
        doing.update(what=f"send to rank {dst}", peers=[dst])
        w.wait()
    doing.update(what="done", peers=[])
    return outs, done


class _StageState:
    """One stage on a rank: its node lists, inputs, transfers and values (per step, per microbatch)."""

    def __init__(self, sp: dict, N, m: int, to_torch):
        self.lists = {k: [N[i] for i in v] for k, v in sp["lists"].items()}
        self.accs = {N[i]: rest for i, rest in sp["accs"]}
        self.inputs = {N[i]: to_torch(v) for i, v in sp["inputs"].items()}          # params / state
        self.batch = {N[i]: [to_torch(b) for b in v] for i, v in sp["batch"].items()}   # per microbatch
        self.sends, self.recvs, self.outputs = sp["sends"], sp["recvs"], sp["outputs"]
        self.pre = {N[c]: ([N[i] for i in nodes], rest) for c, (nodes, rest) in sp["pre"].items()}
        self.senv, self.menv, self.acc = {}, [{} for _ in range(m)], {}

    def get(self, n, j):
        if n in self.inputs:
            return self.inputs[n]
        if n in self.batch:
            return self.batch[n][j]
        if j is not None and n in self.menv[j]:
            return self.menv[j][n]
        return self.senv[n]


def _payloads(prog, values) -> tuple[list[dict], dict]:
    from ..ir.ops import COLLECTIVES
    from ..partition.pipeline import MB
    from ..partition.pipeline_sim import StageDevices
    inner, local = prog.inner, prog.inner.local
    S, m, p = prog.num_stages, prog.pipeline.microbatches, len(prog.slots)
    devs = StageDevices(inner.mesh)
    R = devs.sub.size
    world_axes = {prog.pipeline.axis: p, **({a: n for a, n in devs.sub.axes.items()} if devs.rest else {})}
    index = {n: i for i, n in enumerate(local.nodes)}
    blocks = inner.input_blocks(values)
    batch_in = {x for x, s in zip(local.inputs, inner.input_shardings) if MB in s.used_axes}
    axes_list = sorted({tuple(a for a in n.attrs["axes"] if a != MB) for n in local.nodes if n.op in COLLECTIVES}
                       - {()})
    out_stage = {}
    for i, o in enumerate(local.outputs):
        out_stage[i] = prog.stage_of.get(o, next((k for k in range(S) if o in prog.stages[k].free), 0))
    common = {"world_axes": world_axes, "axes_list": axes_list, "graph": graph_to_wire(local), "m": m, "p": p,
              "collective_ops": {op.value for op in COLLECTIVES}}
    pays = []
    for d in range(p):
        for r in range(R):
            stages = {}
            for k in range(d, S, p):
                st = prog.stages[k]
                used = set()
                for n in st.free + st.forward + st.backward + st.weight + st.step + \
                        [x for c, nodes in prog.pre.items() if c in st.free for x in nodes]:
                    used.update(n.inputs)
                used.update(o for i, o in enumerate(local.outputs) if out_stage[i] == k)
                sends, recvs = {}, {}
                for ti, t in enumerate(prog.transfers):
                    if t.src == k:
                        sends.setdefault(t.phase, []).append((ti, index[t.node], (t.dst % p) * R + r))
                    if t.dst == k:
                        recvs.setdefault(t.phase, []).append((ti, index[t.node], (t.src % p) * R + r))
                stages[k] = {
                    "lists": {n: [index[x] for x in getattr(st, n)] for n in ("free", "forward", "backward", "weight",
                                                                               "step")},
                    "accs": [(index[n], tuple(a for a in n.attrs["axes"] if a != MB)) for n in st.step
                             if n.op.value == "all_reduce" and MB in n.attrs["axes"]],
                    "inputs": {index[x]: blocks[devs.device(0, r)][i] for i, x in enumerate(local.inputs)
                               if x in used and x not in batch_in},
                    "batch": {index[x]: [blocks[devs.device(j, r)][i] for j in range(m)]
                              for i, x in enumerate(local.inputs) if x in used and x in batch_in},
                    "sends": sends, "recvs": recvs,
                    "pre": {index[c]: ([index[x] for x in nodes], tuple(a for a in c.attrs["axes"] if a != MB))
                            for c, nodes in prog.pre.items() if c in st.free},
                    "outputs": [(i, index[o]) for i, o in enumerate(local.outputs) if out_stage[i] == k],
                }
            pays.append({**common, "device": d, "stages": stages, "slots": prog.slots[d]})
    return pays, {"R": R, "devs": devs, "m": m}


def run_pipeline_torch(prog, *args, timeout_s: float = 300.0, trace: list | None = None) -> list[np.ndarray]:
    """Global outputs (numpy) of a PipelineProgram on pp·R gloo ranks: inside a torch.distributed
    job of that world size (torchrun, one or many hosts) this process runs its own rank and every
    rank returns the global outputs; otherwise on local processes."""
    from ..partition.pipeline import PipelineProgram
    from .torch_launch import in_distributed_job
    if not isinstance(prog, PipelineProgram):
        raise Error(f"engine 'torch_pipeline' runs a PipelineProgram (partition(..., pipeline=...)), "
                    f"got {type(prog).__name__}")
    pays, info = _payloads(prog, prog.graph.input_values(*args))
    if in_distributed_job(prog.mesh):
        from .job import run_in_job
        got = run_in_job(pays, timeout_s)
    else:
        got = _run_local(pays, info, timeout_s)
    R, devs, m = info["R"], info["devs"], info["m"]
    inner = prog.inner
    per_device = [None] * inner.mesh.size
    for r in range(R):
        row = {}
        for d in range(len(prog.slots)):
            row.update(got[d * R + r][0])
        for j in range(m):
            per_device[devs.device(j, r)] = [row[i] for i in range(len(inner.local.outputs))]
    if trace is not None:
        trace.extend((k // R, k % R, got[k][1]) for k in range(len(pays)))
    return inner.assemble(per_device)


def _run_local(pays, info, timeout_s: float) -> dict:
    """{rank: (outputs, actions)} from one gloo process per rank on this machine."""
    from .torch_launch import _context, _free_port, _main_hidden
    world, port = len(pays), _free_port()
    ctx = _context()
    results = ctx.Queue()
    with _main_hidden():
        procs = [ctx.Process(target=_rank_main, args=(k, world, port, pays[k], results), daemon=True)
                 for k in range(world)]
        for pr in procs:
            pr.start()
    got, deadline = {}, time.monotonic() + timeout_s
    try:
        while len(got) < world:
            try:
                rank, status, body = results.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [k for k, pr in enumerate(procs) if pr.exitcode not in (None, 0) and k not in got]
                if dead:
                    raise RankError(f"pipeline rank {dead[0]} died (exit {procs[dead[0]].exitcode})")
                if time.monotonic() > deadline:
                    raise RankTimeoutError(f"pipeline ranks {sorted(set(range(world)) - set(got))} "
                                           f"did not finish within {timeout_s:.0f} s")
                continue
            if status != "ok":
                raise RankError(f"pipeline rank {rank} (device {rank // info['R']} of the pipeline axis) failed: {body}")
            got[rank] = body
        for pr in procs:
            pr.join(timeout=10)
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
                pr.join(timeout=5)
    return got


def slot_bubble(trace) -> float:
    """Bubble fraction in schedule slots of an engine trace (each stage's order of actions as run,
    one slot each, every action after those it waits on): idle slots over all slots."""
    from ..partition.pipeline_schedule import bubble_fraction
    stages = {}
    for s, r, acts in trace:
        if stages.setdefault(s, acts) != acts:
            raise Error(f"pipeline stage {s}: its devices ran different orders")
    return bubble_fraction([stages[s] for s in sorted(stages)])
