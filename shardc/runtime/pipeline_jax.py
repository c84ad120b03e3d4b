"""The JAX pipeline engine: one jitted shard_map program per stage and action, transfers between them.

    outs = shardc.runtime.run(pipeline_prog, *args, engine="jax_pipeline", trace=trace)

Devices: pipeline device d holds devices d·R .. d·R+R-1 of jax.devices() (R = the other axes'
size, dp·tp), a JAX sub-mesh over those axes. Each of a stage's node lists (free, forward,
backward, weight, step) is one jax.jit(jax.shard_map(...)) program on its device's sub-mesh,
compiled once and called once per microbatch (the microbatch index is an argument: axis_index
over "mb"); collectives within the stage are lax collectives over dp/tp (jax_exec tables). Values
live on their stage's devices as every device's block stacked, [R, *local], split over the
sub-mesh. A transfer between stages sends device r of one stage's block to device r of the
other, as the torch engine's isend/recv: a device_put where one process holds both stages, else a
jitted ppermute over a two-row mesh {"pipe": 2, dp, tp} whose rows are the two sub-meshes.
Gradient accumulation adds each microbatch's contribution on the stage's devices; the step
program all-reduces the sums over the stage's data axes and runs the update.

One controller drives the schedule: every process walks the same global order of actions
(pipeline_schedule.order of the slot lists) and issues the programs of the stages whose devices
it holds, plus every transfer that touches them. So the same code runs as one process over 8 CPU
devices or under jax.distributed as several processes (each holding some stages); outputs are
then exchanged with multihost_utils.process_allgather so that every process returns all of them.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..errors import Error
from ..ir import Op
from ..ir.ops import COLLECTIVES

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

PIPE = "pipe"     # the two-row axis of a transfer's mesh
# XLA:CPU runs the engine where it is tested (many small per-stage programs: compiling them is most
# of a run); without LLVM's costlier passes each compiles in about two thirds of the time.
CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class _Segment:
    """One node list of one stage as a jitted shard_map program over the stage's sub-mesh.
    `sums` maps nodes whose summed operand arrives as an input (accumulations across
    microbatches, whole-batch token counts) to the axes they still all-reduce over."""

    def __init__(self, nodes, sums: dict, keep: set, sub, jmesh):
        from .jax_exec import _collective, jax_node
        computed, ins = self._wiring(nodes, sums, keep)
        every = PartitionSpec(tuple(sub.axis_names))
        mesh_axes = sub.axes

        def body(j, *xs):
            env = {n: x[0] for n, x in zip(ins, xs)}
            for n in computed:
                if n in sums:
                    rest = sums[n]
                    env[n] = env[n] if not rest else lax.psum(env[n], rest[0] if len(rest) == 1 else rest)
                elif n.op in COLLECTIVES:
                    env[n] = _collective(n, env[n.inputs[0]], mesh_axes, *[env[i] for i in n.inputs[1:]])
                elif n.op is Op.AXIS_INDEX:
                    env[n] = j if n.attrs["axis"] == "mb" else lax.axis_index(n.attrs["axis"]).astype(jnp.int32)
                else:
                    env[n] = jax_node(n, [env[i] for i in n.inputs])
            return tuple(env[o][None] for o in self.outs)

        cpu = all(d.platform == "cpu" for d in jmesh.devices.flat)
        self.fn = jax.jit(jax.shard_map(body, mesh=jmesh, in_specs=(PartitionSpec(),) + (every,) * len(ins),
                                        out_specs=(every,) * len(self.outs), check_vma=False),
                          compiler_options=CPU_COMPILE if cpu else None) if computed else None

    def _wiring(self, nodes, sums, keep):
        """(computed nodes, inputs); sets self.nodes, self.ins, self.outs."""
        computed = [n for n in nodes if n.op is not Op.PARAMETER]
        made = set(computed)
        ins, seen = [], set()
        for n in computed:
            reads = [n] if n in sums else n.inputs
            for i in reads:
                if (i not in made or i is n) and i not in seen:
                    seen.add(i)
                    ins.append(i)
        self.nodes, self.ins, self.outs = list(nodes), ins, [n for n in computed if n in keep]
        return computed, ins

    def renamed(self, nodes, sums, keep) -> "_Segment":
        """The same program for another node list of the same structure."""
        seg = object.__new__(_Segment)
        seg._wiring(nodes, sums, keep)
        seg.fn = self.fn
        return seg

    def __call__(self, j: int, get) -> dict:
        if self.fn is None:
            return {}
        # one program in flight at a time: CPU collectives of programs dispatched concurrently
        # can starve each other's rendezvous of threads (then XLA aborts the process)
        outs = jax.block_until_ready(self.fn(np.int32(j), *[get(n) for n in self.ins]))
        return dict(zip(self.outs, outs))


_PROGRAMS: dict = {}     # structure of a segment on a device list -> its _Segment (its jitted program)


def _segment(nodes, sums: dict, keep: set, sub, jmesh) -> "_Segment":
    """The _Segment of a node list, shared by every segment of the same structure on the same
    devices: the stages of one model under another schedule (GPipe's and 1F1B's are the same
    programs; zero-bubble's free, F and step are too) compile once in a process."""
    index, outside = {}, {}       # a node's position; an input from outside: its position among those
    key = [tuple(d.id for d in jmesh.devices.flat), tuple(sub.axis_names), tuple(sub.shape)]
    for n in nodes:
        ins = tuple(index[i] if i in index else ("in", outside.setdefault(i, len(outside)), i.op.value,
                                                  i.shape, i.dtype.value) for i in n.inputs)
        index[n] = len(index)
        key.append((n.op.value, _frozen(n.attrs), n.shape, n.dtype.value, ins, n in keep,
                    tuple(sums[n]) if n in sums else None))
    key = tuple(key)
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= 512:                    # the oldest go first
            del _PROGRAMS[next(iter(_PROGRAMS))]
        _PROGRAMS[key] = _Segment(nodes, sums, keep, sub, jmesh)
    seg = _PROGRAMS[key]
    return seg if seg.nodes == list(nodes) else seg.renamed(nodes, sums, keep)


def _frozen(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, np.ndarray) or hasattr(v, "__array__") and not isinstance(v, (str, bytes)):
        a = np.asarray(v)
        return ("array", a.shape, a.dtype.str, hash(a.tobytes()))
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


class _Stage:
    """One stage on its pipeline device: segment programs, parameters, per-step and per-microbatch values."""

    def __init__(self, prog, k: int, d: int, jmesh, sharding, sub, keep_extra):
        st = prog.stages[k]
        self.k, self.d, self.sharding = k, d, sharding
        lists = {"free": st.free, "F": st.forward, "B": st.backward, "W": st.weight, "step": st.step}
        pre = {c: nodes for c, nodes in prog.pre.items() if c in st.free}
        accs = {n for n in st.step if n.op is Op.ALL_REDUCE and "mb" in n.attrs["axes"]}
        rest = {c: tuple(a for a in c.attrs["axes"] if a != "mb") for c in list(pre) + list(accs)}
        reads = {name: {i for n in nodes for i in ([] if n in rest else n.inputs)} for name, nodes in lists.items()}
        reads["sums"] = {c.inputs[0] for c in rest}
        keep = {name: set().union(*(r for o, r in reads.items() if o != name), keep_extra) for name in lists}
        self.segs = {name: _segment(nodes, {c: rest[c] for c in nodes if c in rest}, keep[name], sub, jmesh)
                     for name, nodes in lists.items()}
        self.pre = {c: _segment(nodes, {}, {c.inputs[0]}, sub, jmesh) for c, nodes in pre.items()}
        self.accs = [c for c in st.step if c in accs]
        self.used = set().union(*(set(s.ins) for s in list(self.segs.values()) + list(self.pre.values())))
        self.used |= {o for o in keep_extra if o.op is Op.PARAMETER}    # outputs that are inputs
        self.own = any(dev.process_index == jax.process_index() for dev in jmesh.devices.flat)

    def load(self, blocks, batch_in, pos, devs, m):
        """This run's parameters and microbatches onto the stage's devices; fresh value tables."""
        def put(rows):
            x = np.stack(rows)
            return jax.make_array_from_callback(x.shape, self.sharding, lambda idx, x=x: x[idx])
        R = devs.sub.size
        self.inputs = {n: put([blocks[devs.device(0, r)][pos[n]] for r in range(R)])
                       for n in self.used if n in pos and n not in batch_in} if self.own else {}
        self.batch = {n: [put([blocks[devs.device(j, r)][pos[n]] for r in range(R)]) for j in range(m)]
                      for n in self.used if n in batch_in} if self.own else {}
        self.senv, self.menv, self.acc = {}, [{} for _ in range(m)], {}

    def get(self, n, j=None):
        if n in self.inputs:
            return self.inputs[n]
        if n in self.batch:
            return self.batch[n][j]
        if j is not None and n in self.menv[j]:
            return self.menv[j][n]
        if n in self.senv:
            return self.senv[n]
        raise Error(f"jax pipeline stage {self.k}, microbatch {j}: {n.describe()} is not here (not sent in time)")


class _Transfers:
    """Transfers between two pipeline devices' sub-meshes: device copies where one process holds
    both, else jitted ppermutes (one per (src, dst) pair) that both processes take part in."""

    def __init__(self, device_rows, sub):
        self.rows, self.sub, self.fns = device_rows, sub, {}

    def send(self, x, src: int, dst: int, shape, dtype, dst_sharding):
        if src == dst:
            return x
        here = jax.process_index()
        if all(dev.process_index == here for dev in self.rows[src] + self.rows[dst]):
            # both ends in this process: copy each device's block (no program to compile)
            shards = {s.device: s.data for s in x.addressable_shards}
            got = [jax.device_put(shards[a], b) for a, b in zip(self.rows[src], self.rows[dst])]
            return jax.make_array_from_single_device_arrays((len(got),) + tuple(shape), dst_sharding, got)
        if (src, dst) not in self.fns:
            names = (PIPE,) + tuple(self.sub.axis_names)
            mesh = jax.sharding.Mesh(np.array(self.rows[src] + self.rows[dst], dtype=object)
                                     .reshape((2,) + tuple(self.sub.shape)), names)
            spec = PartitionSpec(PIPE, tuple(self.sub.axis_names))
            fn = jax.jit(jax.shard_map(lambda v: lax.ppermute(v, PIPE, [(0, 1)]), mesh=mesh,
                                       in_specs=spec, out_specs=spec, check_vma=False))
            self.fns[(src, dst)] = (fn, NamedSharding(mesh, spec))
        fn, sharding = self.fns[(src, dst)]
        R = self.sub.size
        srcs = set(self.rows[src])
        parts = []
        shards = {s.device: s.data for s in x.addressable_shards} if x is not None else {}
        for dev in sharding.addressable_devices:      # the receiving row contributes zeros
            if dev in srcs:
                parts.append(shards[dev][None])
            else:
                parts.append(jax.device_put(jnp.zeros((1, 1) + tuple(shape), dtype), dev))
        out = jax.block_until_ready(fn(jax.make_array_from_single_device_arrays((2, R) + tuple(shape), sharding, parts)))
        got = [s.data[0] for s in out.addressable_shards if s.device in set(self.rows[dst])]
        if not got:
            return None
        return jax.make_array_from_single_device_arrays((R,) + tuple(shape), dst_sharding, got)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(prog, devices):
    """(stages, transfers, rows) of `prog` on `devices`, built (and jitted) once per device list."""
    from ..partition.pipeline_sim import StageDevices
    local, S, p = prog.inner.local, prog.num_stages, len(prog.slots)
    sub = StageDevices(prog.inner.mesh).sub
    R = sub.size
    if len(devices) < p * R:
        raise Error(f"the pipeline over {prog.mesh} needs {p * R} devices, JAX has {len(devices)} "
                    f"(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={p * R} before importing jax)")
    key = tuple(dev.id for dev in devices[:p * R])
    cache = _COMPILED.setdefault(prog, {})
    if key in cache:
        return cache[key]
    rows = [list(devices[d * R:(d + 1) * R]) for d in range(p)]
    for d, r in enumerate(rows):
        if len({dev.process_index for dev in r}) > 1:
            raise Error(f"pipeline device {d} spans processes {sorted({dev.process_index for dev in r})}: each "
                        f"stage's {R} devices (the axes {', '.join(sub.axis_names)}) must be one process's")
    jmeshes = [jax.sharding.Mesh(np.array(r, dtype=object).reshape(sub.shape), sub.axis_names) for r in rows]
    shardings = [NamedSharding(jm, PartitionSpec(tuple(sub.axis_names))) for jm in jmeshes]
    out_stage = _out_stages(prog)
    extra = {k: {t.node for t in prog.transfers if t.src == k} | {o for o, s in zip(local.outputs, out_stage) if s == k}
             for k in range(S)}
    stages = [_Stage(prog, k, k % p, jmeshes[k % p], shardings[k % p], sub, extra[k]) for k in range(S)]
    cache[key] = (stages, _Transfers(rows, sub), rows)
    return cache[key]


def _out_stages(prog) -> list[int]:
    """The stage that holds each output of the step."""
    S = prog.num_stages
    return [prog.stage_of.get(o, next((k for k in range(S) if o in prog.stages[k].free), 0))
            for o in prog.inner.local.outputs]


def run_pipeline_jax(prog, *args, devices=None, trace: list | None = None) -> list[np.ndarray]:
    """Global outputs (numpy) of a PipelineProgram on pp·R JAX devices (default jax.devices(),
    in the order of the mesh {pp, other axes}); `trace` receives [(stage, r, actions run)]."""
    from ..partition.pipeline import MB, PipelineProgram
    from ..partition.pipeline_schedule import order
    from ..partition.pipeline_sim import StageDevices
    if not isinstance(prog, PipelineProgram):
        raise Error(f"engine 'jax_pipeline' runs a PipelineProgram (partition(..., pipeline=...)), "
                    f"got {type(prog).__name__}")
    inner, local = prog.inner, prog.inner.local
    m, p = prog.pipeline.microbatches, len(prog.slots)
    devs = StageDevices(inner.mesh)
    R = devs.sub.size
    stages, wire, rows = _compiled(prog, list(jax.devices() if devices is None else devices))
    if jax.process_count() > 1:
        from . import jax_job
        jax_job.start()        # collectively, on the first run: who each process is, heartbeats
    blocks = inner.input_blocks(prog.graph.input_values(*args),
                                devices=[devs.device(j, r) for j in range(m) for r in range(R)])
    pos = {x: i for i, x in enumerate(local.inputs)}
    batch_in = {x for x, s in zip(local.inputs, inner.input_shardings) if MB in s.used_axes}
    for st in stages:
        st.load(blocks, batch_in, pos, devs, m)
    out_stage = _out_stages(prog)
    sends: dict = {}
    for t in prog.transfers:
        sends.setdefault((t.src, t.phase), []).append(t)
    from .jax_job import watch

    def deliver(src_stage, phase, j, env_of):
        for t in sends.get((src_stage.k, phase), ()):
            dst = stages[t.dst]
            if not (src_stage.own or dst.own):
                continue
            x = env_of(src_stage).get(t.node) if src_stage.own else None
            try:
                with watch(f"transfer of {t.node.describe()} from stage {t.src} to stage {t.dst}"):
                    y = wire.send(x, src_stage.d, dst.d, t.node.shape, _jnp_dtype(t.node), dst.sharding)
            except Exception as e:     # a peer process died (gloo: connection closed) or hung
                raise _transfer_failed(t, j, rows, e) from e
            if dst.own:
                (dst.senv if j is None else dst.menv[j])[t.node] = y

    for st in stages:
        if st.own:
            for c, seg in st.pre.items():      # whole-batch sums of batch-only values
                total = None
                for k in range(m):
                    v = seg(k, lambda n, k=k: st.get(n, k))[c.inputs[0]]
                    total = v if total is None else total + v
                st.senv[c] = total
            st.senv.update(st.segs["free"](0, st.get))
    done = [[] for _ in range(p)]       # per pipeline device, as its slot list writes the actions
    for k, kind, j in order(prog.slots):
        st = stages[k]
        if st.own:
            st.menv[j].update(st.segs[kind](j, lambda n: st.get(n, j)))
            for c in st.accs:
                v = st.menv[j].get(c.inputs[0])
                if v is not None and (c, j) not in st.acc:
                    st.acc[(c, j)] = True
                    st.acc[c] = v if c not in st.acc else st.acc[c] + v
            done[st.d].append((kind, j) if len(prog.slots[st.d][0]) == 2 else (kind, j, k // p))
        deliver(st, kind, j, lambda s, j=j: s.menv[j])
    for st in reversed(stages):        # step values go to lower stages
        if st.own:
            for c in st.accs:
                if c not in st.acc:
                    raise Error(f"jax pipeline stage {st.k}: accumulation {c.describe()} received no microbatch")
                st.senv[c] = st.acc[c]
            st.senv.update(st.segs["step"](0, st.get))
        deliver(st, "step", None, lambda s: s.senv)
    per_stage_out = {}
    for i, (o, k) in enumerate(zip(local.outputs, out_stage)):
        if stages[k].own:
            per_stage_out[i] = np.asarray(jax.device_get(stages[k].get(o, 0)))
    if jax.process_count() > 1:
        owner = [rows[k % p][0].process_index for k in out_stage]
        per_stage_out = _exchange(per_stage_out, [(R, *o.shape) for o in local.outputs],
                                  [o.dtype.np for o in local.outputs], owner)
    per_device = [None] * inner.mesh.size
    for j in range(m):
        for r in range(R):
            per_device[devs.device(j, r)] = [per_stage_out[i][r] for i in range(len(local.outputs))]
    if trace is not None:
        trace.extend((d, r, done[d]) for d in range(p) for r in range(R) if stages[d].own)
    return inner.assemble(per_device)


def _transfer_failed(t, j, rows, err):
    """The RankError for a transfer that raised: names this process and the peer's (host, pid)."""
    from . import jax_job
    me = jax.process_index()
    ends = [rows[t.src % len(rows)][0].process_index, rows[t.dst % len(rows)][0].process_index]
    what = (f"transfer of {t.node.describe()} from stage {t.src} to stage {t.dst}"
            f"{'' if j is None else f' (microbatch {j})'}")
    return jax_job.failure(what, err, peers=[q for q in ends if q != me] or None)


def _jnp_dtype(n):
    from .jax_exec import JNP_DTYPE
    return JNP_DTYPE[n.dtype]


def _exchange(have: dict, shapes, dtypes, owner) -> dict:
    """Every output on every process (jax.distributed): each process contributes the outputs its
    stages hold and zeros for the others; every process keeps the owner's."""
    from jax.experimental import multihost_utils
    mine = [have[i] if i in have else np.zeros(shapes[i], dtypes[i]) for i in range(len(shapes))]
    every = multihost_utils.process_allgather(mine)
    return {i: np.asarray(every[i][owner[i]]) for i in range(len(shapes))}
