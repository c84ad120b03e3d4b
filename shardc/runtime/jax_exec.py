"""The JAX engine: the per-device IR program as one jax.jit(jax.shard_map(body, ...)) program.
`body` runs the local IR op by op with an IR → jax.numpy/lax table (the semantics of
ir/evaluate.py) and lax collectives (psum/pmax/pmin, all_gather(tiled), psum_scatter(tiled),
all_to_all(tiled), ppermute); axis_index comes from lax.axis_index. Given a Pallas Executable
(shardc.compile(prog, "pallas")), `body` instead walks its launch plan: each KernelLaunch calls the
generated pallas_call (interpret mode off TPU), collective steps use the same lax collectives and
view steps reshape (run_plan_local).

Inputs: a sharding JAX can express (every split dim divides evenly, no strided "outer" factor) is
passed as a global array with that NamedSharding. Others (padded dims, fused-QKV strided splits)
are fed block by block: the jax input is every device's block stacked, [n_devices, *local],
split over all mesh axes on dim 0; the body drops the leading dim. Outputs likewise: expressible
ones come back as global jax.Arrays with their NamedSharding, the rest as stacked blocks that the
host reassembles with unshard_arrays. Arrays are built with make_array_from_callback (each process
supplies only its addressable devices' blocks), so nothing assumes a single process; with
jax.distributed on many hosts the default device list is jax.devices() (global, in mesh order);
outputs that span other processes' devices are gathered to every process (process_allgather)."""
from __future__ import annotations

import math
import weakref
from typing import Callable

import numpy as np

from ..errors import Error, IRError
from ..ir import DType, Graph, Node, Op
from ..ir.ops import COLLECTIVES
from ..partition.mesh import Mesh, Sharding, shard_array, unshard_arrays

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

JNP_DTYPE = {DType.f32: jnp.float32, DType.f16: jnp.float16, DType.bf16: jnp.bfloat16,
             DType.i32: jnp.int32, DType.i64: jnp.int64, DType.bool: jnp.bool_}
_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def _div(a, b):
    if _is_float(a):
        return a / b
    if a.dtype == jnp.bool_:
        return a
    safe = jnp.where(b == 0, jnp.ones_like(b), b)
    return jnp.where(b == 0, jnp.full_like(a, -1), lax.div(a, safe))  # lax.div truncates


def _rem(a, b):
    if _is_float(a):
        return lax.rem(a, b)  # C fmod: the sign of the dividend, as np.fmod
    safe = jnp.where(b == 0, jnp.ones_like(b), b)
    return jnp.where(b == 0, jnp.zeros_like(a), lax.rem(a, safe))


def _constant(n: Node):
    v = n.attrs["value"]
    if isinstance(v, np.ndarray):
        return jnp.asarray(v.astype(n.dtype.np))
    return jnp.full(n.shape, v, dtype=JNP_DTYPE[n.dtype])


def _broadcast(n: Node, x):
    return lax.broadcast_in_dim(x, n.shape, tuple(n.attrs["dims"]))


def _fold(n: Node, x, idx):
    b, axis = n.attrs.get("batch_dims", 0), n.attrs["axis"]
    nb, pre, post = math.prod(x.shape[:b]), math.prod(x.shape[b:axis]), math.prod(x.shape[axis + 1:])
    return x.reshape(nb, pre, x.shape[axis], post), idx.reshape(nb, -1), (nb, pre, post)


def _gather(n: Node, x, idx):
    x4, i2, (nb, pre, post) = _fold(n, x, idx)
    i2 = jnp.clip(i2, 0, x4.shape[2] - 1)  # out-of-range indices clamp, as XLA's gather
    out = x4[jnp.arange(nb)[:, None, None], jnp.arange(pre)[None, :, None], i2[:, None, :]]
    return out.reshape(n.shape)


def _scatter(n: Node, x, idx, upd):
    x4, i2, (nb, pre, post) = _fold(n, x, idx)
    k = i2.shape[1]
    keep = (i2 >= 0) & (i2 < x4.shape[2])  # out-of-range updates are dropped, as XLA's scatter
    i2 = jnp.where(keep, i2, 0)
    u4 = jnp.where(keep[:, None, :, None], upd.reshape(nb, pre, k, post), 0).astype(upd.dtype)
    where = (jnp.arange(nb)[:, None, None], jnp.arange(pre)[None, :, None], i2[:, None, :])
    if x.dtype == jnp.bool_:
        out = x4.astype(jnp.int32).at[where].add(u4.astype(jnp.int32)) > 0
    else:
        out = x4.at[where].add(u4)
    return out.reshape(n.shape)


def _reduce(kind: str):
    def fn(n: Node, x):
        axes = tuple(n.attrs["axes"])
        if not axes:
            return x
        if x.dtype == jnp.bool_:
            return (jnp.all if kind == "min" else jnp.any)(x, axis=axes)
        if kind == "sum":
            return jnp.sum(x, axis=axes, dtype=x.dtype)
        return (jnp.max if kind == "max" else jnp.min)(x, axis=axes)
    return fn


def _dot_general(n: Node, a, b):
    at = n.attrs
    dims = ((tuple(at["lhs_contract"]), tuple(at["rhs_contract"])), (tuple(at["lhs_batch"]), tuple(at["rhs_batch"])))
    return lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST)  # (halves arrive as f32)


def _group_masks(sizes, offset, groups: int, length: int):
    """[groups, length] bools: which positions of the grouped dim belong to group offset+j."""
    sizes = jnp.maximum(sizes.astype(jnp.int32), 0)
    ends = jnp.cumsum(sizes)
    starts = ends - sizes
    j = jnp.arange(groups) + (0 if offset is None else offset.astype(jnp.int32))
    jc = jnp.clip(j, 0, sizes.shape[0] - 1)
    ok = (j >= 0) & (j < sizes.shape[0])
    pos = jnp.arange(length)[None, :]
    return ok[:, None] & (pos >= starts[jc][:, None]) & (pos < ends[jc][:, None])


def _ragged_dot(n: Node, a, b, sizes, offset=None):
    """Static shapes: each group's product masked to its rows (or its slice of k)."""
    hi = lax.Precision.HIGHEST
    if n.attrs["mode"] == "rows":
        masks = _group_masks(sizes, offset, b.shape[0], a.shape[0])
        outs = jnp.einsum("mk,gkn->gmn", a, b, precision=hi)
        return jnp.sum(jnp.where(masks[:, :, None], outs, 0), axis=0)
    masks = _group_masks(sizes, offset, n.shape[0], a.shape[1])
    return jnp.einsum("gmk,kn->gmn", jnp.where(masks[:, None, :], a[None], 0), b, precision=hi)


def _pad(n: Node, x):
    cfg = [(int(lo), int(hi), 0) for lo, hi in zip(n.attrs["low"], n.attrs["high"])]
    return lax.pad(x, jnp.asarray(n.attrs["value"], dtype=x.dtype), cfg)


_UNARY: dict[Op, Callable] = {
    Op.NEG: jnp.negative, Op.ABS: jnp.abs, Op.SIGN: jnp.sign, Op.EXP: jnp.exp, Op.LOG: jnp.log,
    Op.LOG1P: jnp.log1p, Op.SQRT: jnp.sqrt, Op.RSQRT: lax.rsqrt, Op.TANH: jnp.tanh,
    Op.LOGISTIC: lax.logistic, Op.ERF: lax.erf, Op.SIN: jnp.sin, Op.COS: jnp.cos,
    Op.FLOOR: jnp.floor, Op.CEIL: jnp.ceil, Op.ROUND: jnp.round, Op.NOT: jnp.invert,
}
_BINARY: dict[Op, Callable] = {
    Op.ADD: jnp.add, Op.SUB: jnp.subtract, Op.MUL: jnp.multiply, Op.DIV: _div, Op.REM: _rem,
    Op.POW: jnp.power, Op.MAX: jnp.maximum, Op.MIN: jnp.minimum, Op.AND: jnp.bitwise_and,
    Op.OR: jnp.bitwise_or, Op.XOR: jnp.bitwise_xor, Op.SHL: jnp.left_shift, Op.SHR: jnp.right_shift,
    Op.EQ: jnp.equal, Op.NE: jnp.not_equal, Op.LT: jnp.less, Op.LE: jnp.less_equal,
    Op.GT: jnp.greater, Op.GE: jnp.greater_equal,
}

# Each entry: fn(node, *operand arrays) -> result (dtype fixed up by the caller). Collectives and
# axis_index are in `_collective` / the body: they need the mesh axes.
JAX_OPS: dict[Op, Callable] = {
    Op.CONSTANT: _constant,
    Op.IOTA: lambda n: lax.broadcasted_iota(JNP_DTYPE[n.dtype], n.shape, n.attrs["dimension"]),
    **{op: (lambda f: lambda n, x: f(x))(f) for op, f in _UNARY.items()},
    **{op: (lambda f: lambda n, a, b: f(a, b))(f) for op, f in _BINARY.items()},
    Op.SELECT: lambda n, p, t, f: jnp.where(p, t, f),
    Op.CAST: lambda n, x: x.astype(JNP_DTYPE[n.dtype]),
    Op.BROADCAST: _broadcast,
    Op.RESHAPE: lambda n, x: x.reshape(n.shape),
    Op.TRANSPOSE: lambda n, x: jnp.transpose(x, n.attrs["perm"]),
    Op.SLICE: lambda n, x: lax.slice(x, n.attrs["start"], n.attrs["limit"], n.attrs["stride"]),
    Op.CONCATENATE: lambda n, *xs: jnp.concatenate(xs, axis=n.attrs["axis"]),
    Op.PAD: _pad,
    Op.GATHER: _gather,
    Op.SCATTER: _scatter,
    Op.REDUCE_SUM: _reduce("sum"),
    Op.REDUCE_MAX: _reduce("max"),
    Op.REDUCE_MIN: _reduce("min"),
    Op.DOT_GENERAL: _dot_general,
    Op.RAGGED_DOT: _ragged_dot,
}
NEEDS_MESH = frozenset({Op.PARAMETER, Op.AXIS_INDEX}) | COLLECTIVES


def jax_node(n: Node, args: list):
    """One node's value from its operands; half floats compute in f32 and round once per op."""
    args = [a.astype(jnp.float32) if a.dtype in _HALF else a for a in args]
    out = JAX_OPS[n.op](n, *args)
    want = JNP_DTYPE[n.dtype]
    if out.dtype != want:
        out = out.astype(want)
    if tuple(out.shape) != n.shape:
        raise IRError(f"{n.describe()}: jax produced shape {tuple(out.shape)}")
    return out


def _ppermute(x, axes: tuple, pairs, mesh_axes: dict):
    """ppermute numbers a group over several axes in the mesh's axis order (unlike axis_index and
    all_gather, which follow the order given): renumber pairs from `axes` order to mesh order."""
    ordered = tuple(a for a in mesh_axes if a in axes)
    if ordered != axes:
        sizes = [mesh_axes[a] for a in axes]
        def renumber(p):
            coords = dict(zip(axes, np.unravel_index(p, sizes)))
            return int(np.ravel_multi_index([coords[a] for a in ordered], [mesh_axes[a] for a in ordered]))
        pairs = [(renumber(a), renumber(b)) for a, b in pairs]
    name = ordered[0] if len(ordered) == 1 else ordered
    return lax.ppermute(x, name, perm=[(int(a), int(b)) for a, b in pairs])


def _ragged_all_to_all(n: Node, x, send, name, k: int):
    """XLA:CPU has no ragged-all-to-all: each peer's segment goes in a slot of the whole buffer's
    rows, a dense all-to-all moves the slots, and each device packs what it got in sender order."""
    rows_in = x.shape[0]
    send = jnp.maximum(send.astype(jnp.int32), 0)
    off = jnp.cumsum(send) - send
    r = jnp.arange(rows_in)
    idx = jnp.clip(off[:, None] + r[None, :], 0, rows_in - 1)
    valid = (r[None, :] < send[:, None]).reshape((k, rows_in) + (1,) * (x.ndim - 1))
    slots = jnp.where(valid, x[idx], 0)                            # [k, rows_in, ...]
    got = lax.all_to_all(slots, name, 0, 0, tiled=True)            # slot i: from sender i
    cnt = lax.all_to_all(send.reshape(k, 1), name, 0, 0, tiled=True).reshape(k)
    ends = jnp.cumsum(cnt)
    t = jnp.arange(n.attrs["rows"])
    src = jnp.sum(t[:, None] >= ends[None, :], axis=1)
    srcc = jnp.minimum(src, k - 1)
    within = jnp.clip(t - (ends - cnt)[srcc], 0, rows_in - 1)
    keep = (src < k).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(keep, got[srcc, within], 0)


def _collective(n: Node, x, mesh_axes: dict, *rest):
    axes = tuple(n.attrs["axes"])
    name = axes[0] if len(axes) == 1 else axes  # a tuple: the group rank is row-major in this order
    dt = x.dtype
    if dt in _HALF:
        x = x.astype(jnp.float32)  # as the simulator: reduce in f32, round once
    elif dt == jnp.bool_:
        x = x.astype(jnp.int32)
    if n.op is Op.ALL_REDUCE:
        out = {"sum": lax.psum, "max": lax.pmax, "min": lax.pmin}[n.attrs["reduce"]](x, name)
    elif n.op is Op.ALL_GATHER:
        out = lax.all_gather(x, name, axis=n.attrs["dim"], tiled=True)
    elif n.op is Op.REDUCE_SCATTER:
        out = lax.psum_scatter(x, name, scatter_dimension=n.attrs["dim"], tiled=True)
    elif n.op is Op.ALL_TO_ALL:
        out = lax.all_to_all(x, name, n.attrs["split_dim"], n.attrs["concat_dim"], tiled=True)
    elif n.op is Op.COLLECTIVE_PERMUTE:
        out = _ppermute(x, axes, n.attrs["pairs"], mesh_axes)
    elif n.op is Op.RAGGED_ALL_TO_ALL:
        out = _ragged_all_to_all(n, x, rest[0], name, int(np.prod([mesh_axes[a] for a in axes])))
    else:
        raise Error(f"{n.describe()}: not a collective")
    return (out != 0) if n.dtype is DType.bool else out.astype(JNP_DTYPE[n.dtype])


def run_local(g: Graph, inputs: list, mesh_axes: dict) -> list:
    """The local program inside shard_map: op by op, collectives over the named mesh axes."""
    env = dict(zip(g.inputs, inputs))
    for n in g.nodes:
        if n.op is Op.PARAMETER:
            continue
        try:
            if n.op in COLLECTIVES:
                env[n] = _collective(n, env[n.inputs[0]], mesh_axes, *[env[i] for i in n.inputs[1:]])
            elif n.op is Op.AXIS_INDEX:
                env[n] = lax.axis_index(n.attrs["axis"]).astype(jnp.int32)
            else:
                env[n] = jax_node(n, [env[i] for i in n.inputs])
        except Error:
            raise
        except Exception as e:
            raise Error(f"jax: {n.describe()}: {type(e).__name__}: {e}") from e
    return [env[o] for o in g.outputs]


def run_plan_local(exe, inputs: list, mesh_axes: dict, launched: list | None = None) -> list:
    """A Pallas Executable's launch plan inside shard_map: a kernel step → the generated
    pallas_call (interpret mode on CPU), a collective step → the lax collective of `run_local`,
    a view step → reshape. Axis indices come from lax.axis_index. `launched` collects the names of
    the kernels traced (in plan order)."""
    from ..codegen.fusion import is_buffer_leaf
    from ..codegen.pallas import traced_call
    local = exe.prog.local
    env = dict(zip(local.inputs, inputs))
    for n in local.nodes:
        if is_buffer_leaf(n) and n.op is Op.CONSTANT:
            env[n] = jnp.asarray(np.asarray(n.attrs["value"]).astype(n.dtype.np))
    interpret = jax.default_backend() != "tpu"

    def kernel(step):
        k = step.kernel
        axes = [lax.axis_index(a).astype(jnp.int32) for a in k.axes]
        outs = traced_call(k, axes, [env[x] for x in k.inputs], interpret=interpret)
        for o, v in zip(k.outputs, outs):
            want = JNP_DTYPE[o.dtype]
            env[o] = v if v.dtype == want else v.astype(want)
        if launched is not None:
            launched.append(k.name)

    def collective(step):
        n = step.node
        env[n] = _collective(n, env[n.inputs[0]], mesh_axes, *[env[i] for i in n.inputs[1:]])

    def view(step):
        env[step.node] = env[step.source].reshape(step.node.shape)

    run_step = {"kernel": kernel, "collective": collective, "view": view}
    for step in exe.plan:
        if step.step not in run_step:
            raise Error(f"jax: unknown plan step {step!r}")
        try:
            run_step[step.step](step)
        except Error:
            raise
        except Exception as e:
            what = f"kernel {step.kernel.name}" if step.step == "kernel" else step.node.describe()
            raise Error(f"jax: {what}: {type(e).__name__}: {e}") from e
    return [env[o] for o in local.outputs]


def _pallas_exe(prog):
    """`prog` if it is a Pallas Executable (its plan runs kernels on the JAX engine), else None."""
    return prog if getattr(prog, "target", None) == "pallas" and hasattr(prog, "plan") else None


# ------------------------------------------------------------------------------------ layouts
def expressible(shape, s: Sharding, mesh: Mesh) -> bool:
    """Can a NamedSharding say this? (even splits, no strided outer factor, nothing pending)"""
    if s.partial:
        return False
    return all(not d.axes or (d.outer == 1 and n % mesh.group_size(d.axes) == 0)
               for n, d in zip(shape, s.dims))


def _spec(s: Sharding) -> PartitionSpec:
    return PartitionSpec(*[None if not d.axes else d.axes[0] if len(d.axes) == 1 else tuple(d.axes)
                           for d in s.dims])


class JaxProgram:
    """The jitted shard_map program of one SpmdProgram on one list of devices; given a Pallas
    Executable, its body walks the launch plan (generated kernels) instead of the IR op by op."""

    def __init__(self, prog, devices):
        from .common import as_program, check_layouts
        exe = _pallas_exe(prog)
        prog = as_program(prog)
        check_layouts(prog)
        self.exe = exe
        self.launched: list[str] = []  # kernels the body traced (Pallas Executables), plan order
        mesh = prog.mesh
        self.prog, self.devices = prog, list(devices)
        self.jmesh = jax.sharding.Mesh(np.array(self.devices, dtype=object).reshape(mesh.shape), mesh.axis_names)
        self.all_axes = PartitionSpec(tuple(mesh.axis_names))
        g = prog.graph
        self.in_direct = [expressible(p.shape, s, mesh) for p, s in zip(g.inputs, prog.input_shardings)]
        self.out_direct = [expressible(o.shape, s, mesh) for o, s in zip(g.outputs, prog.output_shardings)]
        in_specs = tuple(_spec(s) if d else self.all_axes for s, d in zip(prog.input_shardings, self.in_direct))
        out_specs = tuple(_spec(s) if d else self.all_axes for s, d in zip(prog.output_shardings, self.out_direct))
        local, in_direct, out_direct = prog.local, self.in_direct, self.out_direct

        def body(*xs):
            xs = [x if d else x[0] for x, d in zip(xs, in_direct)]
            if exe is not None:
                self.launched.clear()
                outs = run_plan_local(exe, xs, mesh.axes, self.launched)
            else:
                outs = run_local(local, xs, mesh.axes)
            return tuple(o if d else o[None] for o, d in zip(outs, out_direct))

        # i64 values need x64 (Pallas kernels compute i64 as i32; their outputs are cast back)
        self.x64 = any(n.dtype is DType.i64 for n in local.nodes)
        self.fn = jax.jit(jax.shard_map(body, mesh=self.jmesh, in_specs=in_specs, out_specs=out_specs,
                                        check_vma=False))

    def inputs(self, values: dict[str, np.ndarray]) -> list:
        prog, mesh = self.prog, self.prog.mesh
        arrays = []
        for p, s, direct in zip(prog.graph.inputs, prog.input_shardings, self.in_direct):
            x = np.asarray(values[p.name])
            if direct:
                arrays.append(jax.make_array_from_callback(x.shape, NamedSharding(self.jmesh, _spec(s)),
                                                           lambda idx, x=x: x[idx]))
            else:
                local = prog.local.inputs[len(arrays)].shape

                def blocks(idx, x=x, s=s):
                    rows = range(mesh.size)[idx[0]]
                    return np.stack([shard_array(x, s, mesh, d) for d in rows])
                arrays.append(jax.make_array_from_callback((mesh.size, *local),
                                                           NamedSharding(self.jmesh, self.all_axes), blocks))
        return arrays

    def outputs(self, outs) -> list:
        prog, mesh = self.prog, self.prog.mesh
        result = []
        for o, go, s, name, direct in zip(outs, prog.graph.outputs, prog.output_shardings,
                                          prog.graph.output_names, self.out_direct):
            if not o.is_fully_addressable and not o.is_fully_replicated:   # jax.distributed: gather
                from jax.experimental import multihost_utils
                o = jnp.asarray(multihost_utils.process_allgather(o, tiled=True))
            if direct:
                result.append(o)
            else:
                stacked = np.asarray(o)
                result.append(jnp.asarray(unshard_arrays(list(stacked), go.shape, s, mesh, what=f"output {name!r}")))
        return result

    def __call__(self, *args) -> list:
        import contextlib
        with jax.enable_x64(True) if self.x64 else contextlib.nullcontext():  # i64 values need x64
            values = self.prog.graph.input_values(*args)
            if jax.process_count() == 1:
                return self.outputs(self.fn(*self.inputs(values)))
            from . import jax_job       # jax.distributed: a peer process that dies is named
            jax_job.start()
            what = f"the program of {self.prog.graph.name!r} over {self.prog.mesh}"
            try:
                with jax_job.watch(what):
                    return self.outputs(jax.block_until_ready(self.fn(*self.inputs(values))))
            except Exception as e:
                raise jax_job.failure(what, e) from e


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def jax_program(prog, devices=None) -> JaxProgram:
    """The (cached) jitted shard_map program for `prog` on `devices` (default: the first
    mesh.size of jax.devices(), in mesh order)."""
    from .common import as_program
    exe = _pallas_exe(prog)
    prog = as_program(prog)
    n = prog.mesh.size
    if devices is None:
        devs = jax.devices()
        if len(devs) < n:
            raise Error(f"{prog.mesh} needs {n} devices, JAX has {len(devs)} "
                        f"(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={n} before importing jax)")
        devices = devs[:n]
    elif len(devices) != n:
        raise Error(f"{prog.mesh} needs {n} devices, got {len(devices)}")
    cache = _COMPILED.setdefault(exe if exe is not None else prog, {})
    key = tuple(d.id for d in devices)
    if key not in cache:
        cache[key] = JaxProgram(exe if exe is not None else prog, devices)
    return cache[key]


def run_jax(prog, *args, devices=None, trace: list | None = None) -> list:
    """Run the partitioned program as one jax.jit(jax.shard_map(...)) program; the global outputs
    as jax.Arrays (sharded as the program's output shardings where JAX can express them). With
    `trace` (a list), one measured TraceEvent list per device is appended to it, from XLA's
    profiler (jax_trace.py)."""
    run = jax_program(prog, devices)
    if trace is None:
        return run(*args)
    from .jax_trace import traced
    return traced(run, args, len(run.devices), trace)
