"""What codegen produces: the kernels and the per-device launch plan (kernels, collectives and
views in order), and an executor that checks them on CPU: every device's plan runs in one process,
kernels through the Triton interpreter (target "pallas": Pallas interpret mode), collectives
exactly as partition/simulate.py computes them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import DType, Node, Op
from ..ir.evaluate import eval_node
from ..ir.graph import to_numpy
from .cache import import_file
from .interpret import interpret_mode
from .fusion import CollectiveStep, FusionGroup, ViewStep, is_buffer_leaf


def torch_dtype(dt: DType):
    import torch
    return {DType.f32: torch.float32, DType.f16: torch.float16, DType.bf16: torch.bfloat16,
            DType.i32: torch.int32, DType.i64: torch.int64, DType.bool: torch.bool}[dt]


def to_torch(a: np.ndarray):
    import torch
    a = np.array(a, copy=True, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if a.dtype == DType.bf16.np:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


class Kernel:
    """One generated kernel launch: its source, the IR nodes it fuses and the buffers it reads/writes."""

    def __init__(self, name: str, emitted, group: FusionGroup, path, key: str):
        self.name = name
        self.kind = emitted.kind
        self.source = emitted.source
        self.ops: list[Node] = list(group.nodes)
        self.inputs: list[Node] = list(emitted.inputs)
        self.outputs: list[Node] = list(emitted.outputs)
        self.axes: list[str] = list(emitted.axes)
        self.reason = group.reason
        self.group = group
        self.path = path
        self.key = key
        self.signature = emitted.signature
        self.tuning = emitted.tuning
        self._choose = emitted.choose
        self._modules: dict[bool, object] = {}

    def config(self, interpret: bool) -> dict:
        return self._choose(interpret)

    def module(self, interpret: bool):
        if interpret not in self._modules:
            with interpret_mode(interpret):
                self._modules[interpret] = import_file(self.path, f"shardc_kernels.{'i' if interpret else 'c'}_{self.path.stem}")
        return self._modules[interpret]

    @property
    def jit_fn(self):
        """The kernel as a triton JITFunction (compiler mode), e.g. for ASTSource."""
        return getattr(self.module(False), self.path.stem)

    def launch(self, args: list, config: dict | None = None):
        """Run on the Triton interpreter: args are torch tensors (inputs, outputs) then axis indices."""
        mod = self.module(True)
        with interpret_mode(True):
            mod.launch(args, config or self.config(True))

    def reference(self, values: dict[Node, np.ndarray], coords: dict[str, int]) -> list[np.ndarray]:
        """The numpy evaluation of the IR nodes this kernel fuses, from its input values."""
        env = dict(values)
        for n in self.ops:
            if n in env:
                continue
            if n.op is Op.AXIS_INDEX:
                env[n] = np.asarray(coords[n.attrs["axis"]], dtype=np.int32)
            else:
                env[n] = eval_node(n, [env[i] for i in n.inputs])
        return [env[o] for o in self.outputs]

    def __repr__(self) -> str:
        return f"<Kernel {self.name} {self.kind}: {len(self.ops)} ops, {len(self.inputs)} in, {len(self.outputs)} out>"


@dataclass
class KernelLaunch:
    kernel: Kernel


class Executable:
    """Kernels plus the launch plan every device runs (one SPMD program: the same plan on each)."""

    def __init__(self, prog, plan: list, target: str):
        self.prog = prog
        self.plan = plan
        self.target = target

    @property
    def kernels(self) -> list[Kernel]:
        return [s.kernel for s in self.plan if isinstance(s, KernelLaunch)]

    def plan_text(self) -> str:
        out = []
        for i, s in enumerate(self.plan):
            if isinstance(s, KernelLaunch):
                k = s.kernel
                out.append(f"{i:3d} kernel {k.name} [{k.kind}] {len(k.ops)} ops -> "
                           f"{', '.join(o.describe() for o in k.outputs)}  ({k.reason})")
            elif isinstance(s, CollectiveStep):
                out.append(f"{i:3d} {s.node.op.value} {s.node.describe()}")
            else:
                out.append(f"{i:3d} view {s.node.describe()} of {s.source.describe()}")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<Executable {self.target}: {len(self.kernels)} kernels, {len(self.plan)} steps per device>"

    @property
    def engine(self) -> str:
        """Where `run` executes: torch.distributed ranks for Triton, one JAX program for Pallas."""
        return {"triton": "torch", "pallas": "jax"}[self.target]

    def run(self, *args, engine: str | None = None, **kw) -> list:
        """Global outputs on the engine, in its arrays (torch tensors or jax arrays): every torch
        rank launches a Triton plan's kernels, the JAX program calls a Pallas plan's kernels
        (interpreters on CPU); an engine given the other target's plan runs it op by op."""
        from ..runtime import run
        return run(self, *args, engine=engine or self.engine, **kw)

    def run_interpreted(self, *args, on_kernel=None) -> list[np.ndarray]:
        """Global outputs (numpy) of running every device's plan in one process: kernels on the
        Triton interpreter, collectives exact. `on_kernel(kernel, device, inputs, outputs)` sees
        every launch (numpy arrays), e.g. to check it against `kernel.reference`."""
        return run_plan(self, self.prog.graph.input_values(*args), on_kernel)


def run_plan(exe: Executable, inputs: dict[str, np.ndarray], on_kernel=None) -> list[np.ndarray]:
    if exe.target == "pallas":  # Pallas kernels in interpret mode: numpy buffers, jax arrays per launch
        from .pallas import launch as pallas_launch
        to_buffer, to_numpy_ = np.asarray, np.asarray
    else:
        import torch
        to_buffer, to_numpy_ = to_torch, to_numpy

    from ..partition.mesh import shard_array, unshard_arrays
    from ..partition.simulate import run_collective
    prog = exe.prog
    mesh, local, g = prog.mesh, prog.local, prog.graph
    devices = range(mesh.size)
    env: list[dict] = [{} for _ in devices]
    for p_global, p_local, s in zip(g.inputs, local.inputs, prog.input_shardings):
        x = np.asarray(inputs[p_global.name])
        for d in devices:
            env[d][p_local] = to_buffer(shard_array(x, s, mesh, d))
    for n in local.nodes:
        if is_buffer_leaf(n) and n.op is Op.CONSTANT:
            t = to_buffer(n.attrs["value"])
            for d in devices:
                env[d][n] = t
    uses: dict[Node, int] = {}
    for s in exe.plan:
        for x in _reads(s):
            uses[x] = uses.get(x, 0) + 1
    keep = set(local.outputs)
    for s in exe.plan:
        if isinstance(s, KernelLaunch):
            k = s.kernel
            for d in devices:
                ins = [env[d][x] for x in k.inputs]
                coords = mesh.coords(d)
                if exe.target == "pallas":
                    outs = pallas_launch(k, ins, [int(coords[a]) for a in k.axes])
                else:
                    outs = [torch.empty(o.shape, dtype=torch_dtype(o.dtype)) for o in k.outputs]
                    k.launch(ins + outs + [int(coords[a]) for a in k.axes])
                for o, t in zip(k.outputs, outs):
                    env[d][o] = t
                if on_kernel is not None:
                    on_kernel(k, d, [to_numpy_(t) for t in ins], [to_numpy_(t) for t in outs])
        elif isinstance(s, CollectiveStep):
            n = s.node
            res = run_collective(n, mesh, [to_numpy_(env[d][n.inputs[0]]) for d in devices])
            for d in devices:
                env[d][n] = to_buffer(res[d])
        elif isinstance(s, ViewStep):
            for d in devices:
                env[d][s.node] = env[d][s.source].reshape(s.node.shape)
        for x in _reads(s):
            uses[x] -= 1
            if uses[x] == 0 and x not in keep:
                for d in devices:
                    env[d].pop(x, None)
    return [unshard_arrays([to_numpy_(env[d][o]) for d in devices], go.shape, s, mesh, what=f"output {name!r}")
            for o, go, s, name in zip(local.outputs, g.outputs, prog.output_shardings, g.output_names)]


def _reads(step) -> list[Node]:
    if isinstance(step, KernelLaunch):
        return step.kernel.inputs
    if isinstance(step, CollectiveStep):
        return [step.node.inputs[0]]
    return [step.source]
