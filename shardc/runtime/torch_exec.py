"""The per-rank torch executor: runs the one per-device IR program on one torch.distributed rank,
op by op (torch_ops.py), collectives through torch.distributed (gloo on CPU; NCCL on GPUs takes the
same calls). Collectives are issued with async_op=True as soon as their operand exists and waited
on just before their first use (schedule.py), so independent ops run while they are in flight; a
trace records every op, start and wait with timestamps."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import Error
from ..ir import DType, Graph, Node, Op
from ..partition.mesh import Mesh
from .errors import RankError
from .schedule import Step, schedule
from .common import TraceEvent  # noqa: F401  (re-exported: run_torch's trace= events)
from .torch_ops import TORCH_DTYPE, to_torch, torch_node

PHASES = {"idle": 0, "op": 1, "start": 2, "wait": 3, "kernel": 4, "view": 5}
PHASE_NAMES = {v: k for k, v in PHASES.items()}




@dataclass(frozen=True)
class Fault:
    """Test hook: make `rank` fail at a step. kind "raise" | "exit" (os._exit) | "kill" (SIGKILL
    itself) | "hang" (sleep forever); `at` is a node index of the local program or an op name
    (its first step: the start of a collective)."""
    rank: int
    kind: str = "raise"
    at: int | str = 0

    def hits(self, rank: int, step: Step) -> bool:
        if rank != self.rank:
            return False
        if isinstance(self.at, int):
            return step.index == self.at and step.kind != "wait"
        return step.node.op.value == self.at and step.kind != "wait"

    def fire(self, step: Step):
        import os
        import signal
        if self.kind == "raise":
            raise InjectedFault(f"injected fault at {step.node.describe()}")
        if self.kind == "exit":
            os._exit(3)
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            while True:
                time.sleep(3600)
        raise ValueError(f"unknown fault kind {self.kind!r}")


class InjectedFault(Exception):
    pass


class RankGroups:
    """One process group per distinct device group of the mesh, made once, collectively: every rank
    calls new_group for every group in the same order. Ranks in a group are ordered as
    mesh.groups(axes) orders them (sort_ranks=False), so group rank == position in the group:
    all_gather concatenates, and permute pairs index, in that order."""

    def __init__(self, mesh: Mesh, rank: int):
        self.mesh, self.rank = mesh, rank
        self.by_axes: dict[tuple[str, ...], tuple[object, list[int]]] = {}

    def prepare(self, axes_list):
        for axes in axes_list:
            axes = tuple(axes)
            if axes in self.by_axes:
                continue
            mine = None
            for ranks in self.mesh.groups(axes):
                if len(ranks) == 1:
                    pg = None
                elif ranks == list(range(dist.get_world_size())):
                    pg = dist.group.WORLD
                else:
                    pg = dist.new_group(ranks=ranks, sort_ranks=False)
                if self.rank in ranks:
                    mine = (pg, ranks)
            self.by_axes[axes] = mine

    def get(self, axes) -> tuple[object, list[int]]:
        return self.by_axes[tuple(axes)]


_RS_BROKEN: set[str] = set()  # backends seen without reduce_scatter
# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _to_wire(x: torch.Tensor) -> torch.Tensor:
    """Collectives move f32 for half floats (reductions in f32, as the simulator) and i32 for bools."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float().contiguous()
    if x.dtype == torch.bool:
        return x.to(torch.int32).contiguous()
    return x.contiguous()


def _from_wire(x: torch.Tensor, dt: DType) -> torch.Tensor:
    if dt is DType.bool:
        return x != 0
    return x.to(TORCH_DTYPE[dt])


class Pending:
    """A started collective: the work handles and what turns the buffers into the result."""

    def __init__(self, works, finish):
        self.works, self.finish = [w for w in works if w is not None], finish

    def wait(self) -> torch.Tensor:
        for w in self.works:
            w.wait()
        return self.finish()


def start_collective(n: Node, x: torch.Tensor, groups: RankGroups, *rest: torch.Tensor) -> Pending:
    pg, ranks = groups.get(n.attrs["axes"])
    k, pos = len(ranks), ranks.index(groups.rank)
    x = _to_wire(x)
    done = lambda t: (lambda: _from_wire(t, n.dtype))
    if n.op is Op.RAGGED_ALL_TO_ALL:
        return _start_ragged(n, x, rest[0], pg, k, done)
    if n.op is Op.COLLECTIVE_PERMUTE:
        return _start_permute(n, x, ranks, pos, done)
    if k == 1:
        return Pending([], done(x))
    if n.op is Op.ALL_REDUCE:
        red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[n.attrs["reduce"]]
        buf = x.clone()
        return Pending([dist.all_reduce(buf, op=red, group=pg, async_op=True)], done(buf))
    if n.op is Op.ALL_GATHER:
        d = n.attrs["dim"]
        out = torch.empty((k * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)  # blocks on dim 0
        work = _all_gather_single(out, x, group=pg, async_op=True)
        return Pending([work], lambda: _from_wire(torch.cat(out.reshape(k, *x.shape).unbind(0), dim=d), n.dtype))
    if n.op is Op.REDUCE_SCATTER:
        d = n.attrs["dim"]
        backend = dist.get_backend(pg)
        if backend not in _RS_BROKEN:
            stacked = torch.stack(x.chunk(k, dim=d))  # piece j (for group rank j) first on dim 0
            out = torch.empty(stacked.shape[1:], dtype=x.dtype, device=x.device)
            stacked = stacked.reshape(k * out.shape[0], *out.shape[1:]).contiguous()
            try:
                work = _reduce_scatter_single(out, stacked, group=pg, async_op=True)
                return Pending([work], done(out))
            except (RuntimeError, NotImplementedError):
                _RS_BROKEN.add(backend)
        # gloo builds without reduce_scatter: all-reduce the whole buffer and keep this rank's
        # slice (k/2 times the bytes of a ring reduce-scatter, same result)
        buf = x.clone()
        work = dist.all_reduce(buf, group=pg, async_op=True)
        return Pending([work], lambda: _from_wire(buf.chunk(k, dim=d)[pos].contiguous(), n.dtype))
    if n.op is Op.ALL_TO_ALL:
        s, c = n.attrs["split_dim"], n.attrs["concat_dim"]
        stacked = torch.stack(x.chunk(k, dim=s)).contiguous()  # piece j goes to group rank j
        out = torch.empty_like(stacked)
        work = dist.all_to_all_single(out, stacked, group=pg, async_op=True)
        return Pending([work], lambda: _from_wire(torch.cat(out.unbind(0), dim=c), n.dtype))
    raise Error(f"{n.describe()}: not a collective")


def _start_ragged(n: Node, x, send, pg, k: int, done) -> Pending:
    """The send sizes are exchanged first (the receive splits must be known), then the
    value-sized segments move in one all_to_all_single; the result is padded to its rows."""
    send = send.to(torch.int64).clamp(min=0)
    if k == 1:
        recv = send.clone()
    else:
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=pg)
    s_list, r_list = send.tolist(), recv.tolist()
    rows = n.attrs["rows"]
    if sum(s_list) > x.shape[0] or sum(r_list) > rows:
        raise Error(f"{n.describe()}: sends {sum(s_list)} of {x.shape[0]} rows, receives {sum(r_list)} into {rows}")
    out = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype)
    got = out[:sum(r_list)]
    if k == 1:
        got.copy_(x[:sum(s_list)])
        return Pending([], done(out))
    recv_buf = torch.empty_like(got)
    work = dist.all_to_all_single(recv_buf, x[:sum(s_list)].contiguous(), output_split_sizes=r_list,
                                  input_split_sizes=s_list, group=pg, async_op=True)

    def finish():
        got.copy_(recv_buf)
        return _from_wire(out, n.dtype)
    return Pending([work], finish)


def _start_permute(n: Node, x, ranks, pos, done) -> Pending:
    """pairs (src, dst) are positions in the group; ranks not targeted get zeros."""
    ops, buf = [], None
    for src, dst in n.attrs["pairs"]:
        if src == pos and dst == pos:
            buf = x.clone()
        elif src == pos:
            ops.append(dist.P2POp(dist.isend, x, ranks[dst]))
        elif dst == pos:
            buf = torch.empty_like(x)
            ops.append(dist.P2POp(dist.irecv, buf, ranks[src]))
    works = dist.batch_isend_irecv(ops) if ops else []
    return Pending(works, done(buf if buf is not None else torch.zeros_like(x)))


class RankExecutor:
    """Runs `local` (the per-device program) as rank `rank` of `mesh`. Make it on every rank, in
    the same order (process groups are created collectively)."""

    def __init__(self, local: Graph, mesh: Mesh, rank: int, groups: RankGroups | None = None,
                 status=None):
        self.local, self.mesh, self.rank = local, mesh, rank
        self.steps = schedule(local)
        self.groups = groups or RankGroups(mesh, rank)
        axes = [n.attrs["axes"] for n in local.nodes if n.op.value in _COLLECTIVE_NAMES]
        self.groups.prepare(axes)
        self.status = status or (lambda index, phase: None)
        self.coords = mesh.coords(rank)
        self._consts: dict[Node, torch.Tensor] = {}
        self._count_uses()
        self.current: Step | None = None

    def _count_uses(self):
        self.uses = {n: 0 for n in self.local.nodes}
        for s in self.steps:
            for i in s.reads:
                self.uses[i] += 1

    def _exec(self, step, env: dict, inflight: dict):
        n = step.node
        if step.kind == "wait":
            env[n] = inflight.pop(n).wait()
        elif step.kind == "start":
            inflight[n] = start_collective(n, env[n.inputs[0]], self.groups, *[env[i] for i in n.inputs[1:]])
        elif n.op is Op.AXIS_INDEX:
            env[n] = torch.tensor(int(self.coords[n.attrs["axis"]]), dtype=torch.int32)
        elif n.op is Op.CONSTANT:
            if n not in self._consts:
                self._consts[n] = torch_node(n, [])
            env[n] = self._consts[n]
        else:
            env[n] = torch_node(n, [env[i] for i in n.inputs])

    def _event(self, step) -> tuple[str, str]:
        return step.kind, step.node.op.value

    def _seed(self) -> dict:
        """Values there before the first step (besides the inputs)."""
        return {}

    def run(self, inputs: list[torch.Tensor], trace: list | None = None,
            fault: Fault | None = None) -> list[torch.Tensor]:
        g = self.local
        if len(inputs) != len(g.inputs):
            raise Error(f"rank {self.rank}: program takes {len(g.inputs)} inputs, got {len(inputs)}")
        env: dict[Node, torch.Tensor] = {}
        for p, x in zip(g.inputs, inputs):
            if tuple(x.shape) != p.shape:
                raise Error(f"rank {self.rank}: input {p.name!r} has local shape {tuple(x.shape)}, "
                            f"expected {p.shape}")
            env[p] = x
        env.update(self._seed())
        inflight: dict[Node, Pending] = {}
        left = dict(self.uses)
        keep = set(g.outputs)
        clock = time.perf_counter
        for step in self.steps:
            self.current = step
            n = step.node
            self.status(step.index, PHASES[step.kind])
            if fault is not None and fault.hits(self.rank, step):
                fault.fire(step)
            t0 = clock()
            try:
                self._exec(step, env, inflight)
            except Exception as e:
                raise RankError(f"rank {self.rank} failed in {step.kind} of {n.describe()}: "
                                f"{type(e).__name__}: {e}", rank=self.rank, kind="raised",
                                doing=f"{step.kind} {n.describe()}") from e
            if trace is not None:
                kind, name = self._event(step)
                trace.append(TraceEvent(kind, step.index, name, t0, clock()))
            for i in step.reads:  # free values after their last reader
                left[i] -= 1
                if left[i] == 0 and i not in keep:
                    env.pop(i, None)
        self.current = None
        self.status(-1, PHASES["idle"])
        return [env[o] for o in g.outputs]


_COLLECTIVE_NAMES = {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute",
                     "ragged_all_to_all"}


class PlanExecutor(RankExecutor):
    """Runs a compiled launch plan (an Executable's `.plan`, target "triton", of the per-device
    program `local`; on a pool rank, the plan it received) as rank `rank`: each
    KernelLaunch launches the generated kernel (outputs freshly allocated, floats poisoned with
    NaN so an unwritten element shows; on `device` "cpu" the Triton interpreter, on "cuda:i" the
    kernel compiled for that GPU, inputs moved there), each CollectiveStep goes through
    `start_collective` (async, scheduled by schedule_plan), each ViewStep is a reshape."""

    def __init__(self, plan: list, local: Graph, mesh: Mesh, rank: int, groups: RankGroups | None = None,
                 status=None, device: str = "cpu"):
        from .schedule import schedule_plan
        self.device = torch.device(device)
        self.interpret = self.device.type == "cpu"
        self.plan, self.local, self.mesh, self.rank = plan, local, mesh, rank
        self.steps = schedule_plan(plan, local)
        self.groups = groups or RankGroups(mesh, rank)
        self.groups.prepare([s.node.attrs["axes"] for s in self.steps if s.kind == "start"])
        self.status = status or (lambda index, phase: None)
        self.coords = mesh.coords(rank)
        self._consts = {n: to_torch(n.attrs["value"]).to(self.device) for n in local.nodes
                        if n.op is Op.CONSTANT and isinstance(n.attrs["value"], np.ndarray)}
        self._count_uses()
        self.current = None
        self.launches = 0

    def _seed(self) -> dict:
        return dict(self._consts)

    def run(self, inputs: list[torch.Tensor], trace: list | None = None, fault: Fault | None = None):
        return super().run([x.to(self.device) for x in inputs], trace, fault)

    def _exec(self, step, env: dict, inflight: dict):
        if step.kind in ("start", "wait"):
            return super()._exec(step, env, inflight)
        if step.kind == "view":
            env[step.node] = env[step.item.source].reshape(step.node.shape)
            return
        k = step.item.kernel
        ins = [env[x].contiguous() for x in k.inputs]
        outs = []
        for o in k.outputs:
            t = torch.empty(o.shape, dtype=TORCH_DTYPE[o.dtype], device=self.device)
            if t.is_floating_point():
                t.fill_(float("nan"))
            outs.append(t)
        k.launch(ins + outs + [int(self.coords[a]) for a in k.axes], interpret=self.interpret)
        self.launches += 1
        for o, t in zip(k.outputs, outs):
            env[o] = t

    def _event(self, step) -> tuple[str, str]:
        if step.kind == "kernel":
            return "kernel", step.item.kernel.name
        return step.kind, step.node.op.value
