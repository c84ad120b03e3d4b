"""Launching the torch executor: inside a torch.distributed job (torchrun), or on a local pool of
worker processes (one gloo process group on 127.0.0.1, reused by many runs, since starting one
takes seconds). A rank that raises, dies or hangs ends the run within its time limit with a
RankError naming the rank and the op or collective (and model source line) it was at; the pool's
processes are then all killed and reaped, and the next run starts a fresh pool.

Where the ranks run is devices.choose_placement's decision: gloo ranks with interpreted kernels on
a CPU machine; with GPUs, a compiled Executable runs one rank per GPU over NCCL (a pool of
device "cuda"), or, with fewer GPUs than devices, every device's kernels on one GPU in this
process (serial.DevicePlan)."""
from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import socket
import sys
import threading
import time
import traceback
import weakref
from multiprocessing.connection import wait as _wait_any

import numpy as np

from ..errors import Error
from ..ir import Graph
from ..partition.mesh import Mesh
from .common import as_program, assemble, check_layouts, local_blocks
from .errors import RankError, RankTimeoutError
from .torch_exec import PHASE_NAMES, Fault, TraceEvent  # noqa: F401  (Fault, TraceEvent: API)
from .wire import graph_from_wire, graph_to_wire, plan_from_wire, plan_to_wire

GRACE_S = 0.5          # after the first failure, how long to collect the others' reports (root cause)
START_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------------------- worker side
def _watch_parent():
    """Exit when the parent is gone (no orphans even if the parent is SIGKILLed)."""
    parent = os.getppid()

    def loop():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=loop, daemon=True).start()


def _worker_main(rank: int, world: int, port: int, conn, status, pg_timeout_s: float, env: dict,
                 device: str = "cpu"):
    os.environ.update(env)
    os.environ.pop("SHARDC_DUMP_DIR", None)  # the parent writes each stage once; ranks add nothing to it
    _watch_parent()
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from .torch_exec import PHASES, RankExecutor, RankGroups
    from .torch_ops import to_numpy, to_torch
    torch.set_num_threads(1)
    if device == "cuda":  # one GPU per rank
        torch.cuda.set_device(rank)
    rank_device = f"cuda:{rank}" if device == "cuda" else "cpu"
    try:
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=pg_timeout_s))
    except BaseException:
        conn.send(("error", -1, rank, -1, 0, traceback.format_exc()))
        return
    conn.send(("ready", rank, os.getpid()))
    executors: dict[int, RankExecutor] = {}
    groups: dict[Mesh, RankGroups] = {}
    base = 3 * rank

    def set_status(index: int, phase: int):
        status[base + 1] = index
        status[base + 2] = phase

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        _, job, key, wire, mesh_axes, blocks, opts = msg
        status[base] = job
        set_status(-1, PHASES["idle"])
        ex = None
        try:
            ex = executors.get(key)
            if ex is None:
                mesh = Mesh(mesh_axes)
                grp = groups.setdefault(mesh, RankGroups(mesh, rank))
                local = graph_from_wire(wire)
                if "plan" in opts:
                    from .torch_exec import PlanExecutor
                    plan = _received_plan(local, opts["plan"], interpret=device == "cpu")
                    ex = executors[key] = PlanExecutor(plan, local, mesh, rank, grp, set_status, rank_device)
                else:
                    ex = executors[key] = RankExecutor(local, mesh, rank, grp, set_status)
            trace = [] if opts.get("trace") else None
            outs = ex.run([to_torch(b) for b in blocks], trace=trace, fault=opts.get("fault"))
            conn.send(("ok", job, rank, [to_numpy(o) for o in outs], trace))
        except BaseException as e:  # report and wait: the parent ends the job for every rank
            cause = e.__cause__ or e
            step = ex.current if ex is not None else None
            text = "".join(traceback.format_exception_only(type(cause), cause)).strip()
            tb = traceback.format_exc()
            try:
                conn.send(("error", job, rank, step.index if step else -1,
                           PHASES[step.kind] if step else 0, text + "\n" + tb))
            except OSError:
                break
    # leave without tearing the process group down: peers are stopping too, and gloo's teardown
    # while a peer still holds its connections can abort; the parent reaps us either way
    os._exit(0)


def _received_plan(local: Graph, spec: dict, interpret: bool = True) -> list:
    """The parent's compiled launch plan on a rank: the kernels it was sent, loaded from their
    source through this rank's kernel cache (nothing is compiled here). On a CPU rank kernels run
    on the Triton interpreter, which Triton binds when it is imported: set before that."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    if spec.get("cache_dir"):
        os.environ["SHARDC_CACHE_DIR"] = spec["cache_dir"]
    return plan_from_wire(spec, local)


def kernel_spec(exe) -> dict:
    """What a rank needs to run `exe`'s plan: its kernels' source and keys, and the steps."""
    return {**plan_to_wire(exe), "cache_dir": os.environ.get("SHARDC_CACHE_DIR")}


def as_kernel_executable(prog):
    """`prog` when it is a compiled Executable whose kernels the torch ranks can launch (Triton),
    else None (SpmdPrograms, and Pallas executables, run op by op)."""
    from ..codegen.executable import Executable
    return prog if isinstance(prog, Executable) and prog.target == "triton" else None


# ------------------------------------------------------------------------------------- parent side
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _context():
    """forkserver: one clean server process imports torch once; every (re)start of a pool forks
    from it in milliseconds instead of importing torch in each new rank (seconds)."""
    import multiprocessing as mp
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["shardc.runtime.torch_launch", "shardc.runtime.torch_exec"])
    return ctx


@contextlib.contextmanager
def _main_hidden():
    """Workers must never re-run the user's script: multiprocessing's spawn and forkserver
    re-import the parent's __main__ in each child (from its __file__ or __spec__), which runs a
    plain script without an `if __name__ == "__main__":` guard once more in every rank. The ranks
    need nothing from it (they receive plain data), so hide it while they start."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _exit_text(code) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class LocalPool:
    """`world` worker processes on this machine with one gloo process group, reused by many runs.
    Start is lazy (first run) and takes seconds; after a failed run the pool kills and reaps every
    worker and the next run starts a fresh one. Use as a context manager, or close()."""

    def __init__(self, world: int, pg_timeout_s: float = 1800.0, start_timeout_s: float = START_TIMEOUT_S,
                 device: str = "cpu"):
        if device not in ("cpu", "cuda"):
            raise Error(f"LocalPool(device={device!r}): expected 'cpu' (gloo) or 'cuda' (one GPU per rank, NCCL)")
        self.world = int(world)
        self.device = device
        self.pg_timeout_s = pg_timeout_s
        self.start_timeout_s = start_timeout_s
        self.procs: list = []
        self.conns: list = []
        self.status = None
        self.starts = 0                     # how many times a process group was started
        self.last_traces: list[list[TraceEvent]] | None = None
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._next_key = itertools.count()
        self._sent: set[int] = set()
        self._jobs = itertools.count(1)
        self._lock = threading.Lock()

    # -- life cycle
    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def started(self) -> bool:
        return bool(self.procs)

    def start(self):
        if self.procs:
            return
        ctx = _context()
        self.status = ctx.RawArray("q", 3 * self.world)
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # CPU ranks interpret kernels
               "TRITON_INTERPRET": "1" if self.device == "cpu" else "0"}
        if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
            env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's traffic on the loopback interface
        port = _free_port()
        for r in range(self.world):
            parent_end, child_end = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_worker_main, name=f"shardc-rank{r}", daemon=True,
                            args=(r, self.world, port, child_end, self.status, self.pg_timeout_s, env,
                                  self.device))
            with _main_hidden():
                p.start()
            child_end.close()
            self.procs.append(p)
            self.conns.append(parent_end)
        self.starts += 1
        self._sent.clear()
        deadline = time.monotonic() + self.start_timeout_s
        waiting = set(range(self.world))
        while waiting:
            left = deadline - time.monotonic()
            ready = _wait_any([self.conns[r] for r in waiting] + [self.procs[r].sentinel for r in waiting],
                              timeout=max(left, 0))
            if not ready:
                self.kill()
                raise RankTimeoutError(f"torch pool: ranks {sorted(waiting)} did not join the process group "
                                       f"within {self.start_timeout_s:.0f} s", rank=min(waiting), kind="hung",
                                       doing="init_process_group")
            for r in list(waiting):
                if self.conns[r] in ready:
                    try:
                        msg = self.conns[r].recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg and msg[0] == "ready":
                        waiting.discard(r)
                        continue
                    self.kill()
                    raise RankError(f"torch pool: rank {r} failed to start: {msg[-1] if msg else 'died'}",
                                    rank=r, kind="raised", doing="init_process_group")
                if self.procs[r].sentinel in ready:
                    code = self.procs[r].exitcode
                    self.kill()
                    raise RankError(f"torch pool: rank {r} {_exit_text(code)} while starting",
                                    rank=r, kind="died", doing="init_process_group")

    def kill(self):
        """Kill every worker now and reap it (no process is left behind)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(timeout=30)
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []
        self._sent.clear()

    def close(self):
        """Stop the workers politely, then kill whatever is still there."""
        for c in self.conns:
            try:
                c.send(("stop",))
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=5)
        self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- runs
    def _key(self, local) -> int:  # a Graph (op by op) or an Executable (its kernels)
        if local not in self._keys:
            self._keys[local] = next(self._next_key)
        return self._keys[local]

    def run(self, local: Graph, mesh: Mesh, blocks: list[list[np.ndarray]], timeout_s: float = 300.0,
            trace: bool = False, fault: Fault | None = None, exe=None) -> list[list[np.ndarray]]:
        """Every rank's local output blocks, given every rank's local input blocks. With `exe` (a
        Triton Executable of `local`) the ranks launch its kernels instead of running op by op."""
        if mesh.size != self.world:
            raise Error(f"{mesh} has {mesh.size} devices but the pool has {self.world} ranks")
        if self.device == "cuda" and exe is None:
            raise Error("a CUDA pool runs compiled executables (shardc.compile(prog)); programs run op by op "
                        "on a CPU pool")
        with self._lock:
            self.start()
            key = self._key(local if exe is None else exe)
            wire = None if key in self._sent else graph_to_wire(local)
            job = next(self._jobs)
            opts = {"trace": trace, "fault": fault}
            if exe is not None:  # the compiled plan travels with the program (once per pool start)
                opts["plan"] = kernel_spec(exe) if wire is not None else None
            for r in range(self.world):
                try:
                    self.conns[r].send(("run", job, key, wire, dict(mesh.axes), blocks[r], opts))
                except OSError:
                    pass  # a dead rank: its sentinel reports it below
            self._sent.add(key)
            return self._collect(job, local, timeout_s)

    def _collect(self, job: int, local: Graph, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        outs: dict[int, list] = {}
        traces: dict[int, list] = {}
        errors: dict[int, tuple] = {}
        dead: dict[int, int | None] = {}
        first_failure = None
        while len(outs) < self.world:
            now = time.monotonic()
            if first_failure is not None and now >= first_failure + GRACE_S:
                break
            limit = deadline if first_failure is None else min(deadline, first_failure + GRACE_S)
            live = [r for r in range(self.world) if r not in outs and r not in errors and r not in dead]
            if not live:
                break
            ready = _wait_any([self.conns[r] for r in live] + [self.procs[r].sentinel for r in live],
                              timeout=max(limit - now, 0))
            if not ready:
                if first_failure is None:  # the deadline: somebody hangs
                    self._fail_timeout(job, local, timeout_s, outs)
                continue
            for r in live:
                if self.conns[r] in ready:
                    try:
                        msg = self.conns[r].recv()
                    except (EOFError, OSError):
                        self.procs[r].join(timeout=5)
                        dead[r] = self.procs[r].exitcode
                        first_failure = first_failure or time.monotonic()
                        continue
                    if msg[0] == "ok" and msg[1] == job:
                        outs[r], traces[r] = msg[3], msg[4]
                    elif msg[0] == "error":
                        errors[r] = msg
                        first_failure = first_failure or time.monotonic()
                elif self.procs[r].sentinel in ready:
                    self.procs[r].join(timeout=5)
                    dead[r] = self.procs[r].exitcode
                    first_failure = first_failure or time.monotonic()
        if errors or dead:
            self._fail(job, local, errors, dead)
        self.last_traces = [traces[r] for r in range(self.world)] if all(traces.get(r) is not None for r in range(self.world)) else None
        return [outs[r] for r in range(self.world)]

    def _doing(self, local: Graph, index: int, phase: int) -> str:
        if index is None or index < 0:
            return "between ops"
        what = {"op": "running", "start": "starting", "wait": "waiting for", "kernel": "running the kernel for",
                "view": "viewing"}.get(PHASE_NAMES.get(phase), "at")
        return f"{what} {local.nodes[index].describe()}"

    def _states(self, job: int, local: Graph) -> dict[int, tuple[int, int, str]]:
        st = {}
        for r in range(self.world):
            j, idx, ph = self.status[3 * r], self.status[3 * r + 1], self.status[3 * r + 2]
            st[r] = (idx, ph, self._doing(local, idx, ph) if j == job else "not started on this run")
        return st

    def _fail(self, job, local, errors, dead):
        states = self._states(job, local)
        self.kill()
        lines = []
        for r, code in sorted(dead.items()):
            lines.append(f"  rank {r}: {_exit_text(code)} while {states[r][2]}")
        for r, msg in sorted(errors.items()):
            _, _, _, idx, ph, text = msg
            lines.append(f"  rank {r}: raised while {self._doing(local, idx, ph)}: {text.splitlines()[0]}")
        # root cause: a death first, then an error outside communication, then any error
        if dead:
            r = min(dead)
            kind, doing, head = "died", states[r][2], f"rank {r} {_exit_text(dead[r])} while {states[r][2]}"
        else:
            comp = [r for r, m in errors.items() if PHASE_NAMES.get(m[4]) == "op"]
            r = min(comp or errors)
            _, _, _, idx, ph, text = errors[r]
            kind, doing = "raised", self._doing(local, idx, ph)
            head = f"rank {r} raised while {doing}: {text.splitlines()[0]}"
        details = "\n".join(lines)
        tb = errors[r][5] if r in errors else ""
        raise RankError(f"{head}\n{details}" + (f"\n--- rank {r} traceback ---\n{tb}" if tb else ""),
                        rank=r, kind=kind, doing=doing, details=details)

    def _fail_timeout(self, job, local, timeout_s, outs):
        states = self._states(job, local)
        self.kill()
        busy = [r for r, (idx, ph, _) in states.items() if r not in outs and PHASE_NAMES.get(ph) != "wait"]
        stuck = busy or [r for r in range(self.world) if r not in outs]
        lines = [f"  rank {r}: {'finished' if r in outs else states[r][2]}" for r in range(self.world)]
        r = stuck[0]
        raise RankTimeoutError(f"run did not finish within {timeout_s:g} s: rank {r} hung while {states[r][2]}\n"
                               + "\n".join(lines), rank=r, kind="hung", doing=states[r][2],
                               details="\n".join(lines))


_POOLS: dict[tuple[int, str], LocalPool] = {}


def default_pool(world: int, device: str = "cpu") -> LocalPool:
    """The process-wide pool of `world` ranks on `device` (made on first use, closed at exit)."""
    if (world, device) not in _POOLS:
        _POOLS[(world, device)] = LocalPool(world, device=device)
    return _POOLS[(world, device)]


@atexit.register
def _close_pools():
    for p in _POOLS.values():
        p.close()


# ------------------------------------------------------------------------------------- entry point
def in_distributed_job(mesh: Mesh) -> bool:
    """True inside a torch.distributed job (torchrun) whose world size is the mesh's size."""
    import torch.distributed as dist
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() == mesh.size
    env = os.environ
    return ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env
            and int(env["WORLD_SIZE"]) == mesh.size)


def run_torch(prog, *args, world=None, timeout_s: float = 300.0, trace: list | None = None,
              fault: Fault | None = None, device: str | None = None) -> list:
    """Run the partitioned program on torch.distributed ranks; the global outputs as torch tensors.

    Inside a torch.distributed job (torchrun: RANK/WORLD_SIZE set, world size == mesh size) this
    process runs its own rank (a gloo group is started if none is; NCCL where its kernels run on
    GPUs) and every rank returns the
    global outputs (gathered to all ranks). Otherwise `world` picks the local ranks: None → the
    shared default pool of mesh.size processes, a LocalPool → that pool. `timeout_s` bounds the
    whole run (a rank that hangs, dies or raises ends it with a RankError); `trace`, a list, gets
    each rank's TraceEvents; `fault` injects a failure (tests). `device`: "auto" (None), "cpu" or
    "cuda": where a compiled executable runs (devices.choose_placement decides)."""
    from .devices import choose_placement, gpu_count
    from .torch_ops import to_torch
    exe = as_kernel_executable(prog)
    prog = as_program(prog)
    check_layouts(prog)
    mesh = prog.mesh
    place = choose_placement(mesh.size, gpu_count() if exe is not None else 0, exe is not None, device)
    if world is not None and not isinstance(world, LocalPool) and int(world) != mesh.size:
        raise Error(f"run_torch: world={world} but {mesh} has {mesh.size} devices (one rank per device)")
    in_job = not isinstance(world, LocalPool) and in_distributed_job(mesh)
    if place.kind == "cuda-serial" and not isinstance(world, LocalPool) and not in_job:
        if trace is not None or fault is not None:
            raise Error(f"run_torch: trace= and fault= need ranks; here {place.why}")
        from .serial import DevicePlan
        return [to_torch(o) for o in DevicePlan(exe, "cuda").run(*args)]
    if isinstance(world, LocalPool):
        pool = world
    else:
        pool = None if in_job else default_pool(mesh.size, "cuda" if place.on_gpu else "cpu")
    if pool is None:
        outs = _run_in_job(prog, args, trace, fault, exe, place.on_gpu)
    else:
        blocks = local_blocks(prog, args)
        per_rank = pool.run(prog.local, mesh, blocks, timeout_s=timeout_s, trace=trace is not None, fault=fault,
                            exe=exe)
        if trace is not None:
            trace.extend(pool.last_traces or [])
        outs = assemble(prog, per_rank)
    return [to_torch(o) for o in outs]


_JOB_EXECUTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_JOB_GROUPS: dict = {}
_JOB_WORLD = None


def _run_in_job(prog, args, trace, fault, exe=None, on_gpu: bool = False) -> list[np.ndarray]:
    """This process's rank of a torch.distributed job; outputs all-gathered to every rank. With
    `exe` this rank launches its kernels: on the GPU of its LOCAL_RANK (NCCL) where `on_gpu`,
    else on the Triton interpreter (CPU tensors, gloo)."""
    import torch
    import torch.distributed as dist

    from .torch_exec import InjectedFault, PlanExecutor, RankExecutor, RankGroups
    from .torch_ops import to_numpy, to_torch
    device = "cpu"
    if on_gpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    global _JOB_WORLD
    if _JOB_WORLD is not dist.group.WORLD:  # a new process group: groups made for the old are stale
        _JOB_EXECUTORS.clear()
        _JOB_GROUPS.clear()
        _JOB_WORLD = dist.group.WORLD
    rank, mesh = dist.get_rank(), prog.mesh
    blocks = local_blocks(prog, args, devices=[rank])
    what = prog.local if exe is None else exe
    ex = _JOB_EXECUTORS.get(what)
    if ex is None:
        groups = _JOB_GROUPS.setdefault(mesh, RankGroups(mesh, rank))
        ex = _JOB_EXECUTORS[what] = (RankExecutor(prog.local, mesh, rank, groups) if exe is None
                                     else PlanExecutor(exe.plan, prog.local, mesh, rank, groups, device=device))
    mine = [] if trace is not None else None
    from .job import failure, job_state
    roster, beat = job_state()       # who each rank is, and heartbeats: a dead peer is named (job.py)
    try:
        outs = [to_numpy(o) for o in ex.run([to_torch(b) for b in blocks[rank]], trace=mine, fault=fault)]
        every: list = [None] * mesh.size
        dist.all_gather_object(every, outs)
    except Exception as e:
        cause = e.__cause__ if isinstance(e, RankError) else e
        if isinstance(cause, (Error, InjectedFault)):     # this rank's own error, not a lost peer
            raise
        doing = {"what": getattr(e, "doing", None) or "gathering the outputs",
                 "peers": [r for r in range(mesh.size) if r != rank]}
        raise failure(rank, roster, doing, cause or e, beat) from e
    if trace is not None:
        traces: list = [None] * mesh.size
        dist.all_gather_object(traces, mine)
        trace.extend(traces)
    return assemble(prog, every)


@atexit.register
def _drop_job_state():
    """Release process groups while the interpreter is whole (late destruction can abort)."""
    _JOB_EXECUTORS.clear()
    _JOB_GROUPS.clear()
