"""What codegen produces, as plain data: the kernels (each with its generated source, the IR nodes
it fuses, and how to load and launch it from the kernel cache) and the per-device launch plan
(KernelLaunch, CollectiveStep and ViewStep in order; every step has `.reads` and `.writes`).
Running a plan is the runtime's business: the interpreter engine (every device in one process),
torch.distributed ranks and the JAX program all live in shardc/runtime."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import DType, Node, Op
from ..ir.evaluate import eval_node
from .cache import import_file
from .interpret import interpret_mode
from .fusion import FusionGroup


def torch_dtype(dt: DType):
    import torch
    return {DType.f32: torch.float32, DType.f16: torch.float16, DType.bf16: torch.bfloat16,
            DType.i32: torch.int32, DType.i64: torch.int64, DType.bool: torch.bool}[dt]


class Kernel:
    """One generated kernel launch: its source, the IR nodes it fuses and the buffers it reads/writes."""

    def __init__(self, name: str, kind: str, source: str, ops: list[Node], inputs: list[Node],
                 outputs: list[Node], axes: list[str], reason: str, path, key: str, choose,
                 signature: dict | None = None, tuning: list | None = None, group: FusionGroup | None = None,
                 dims: dict | None = None, vmem=None, dot_sites: list | None = None):
        self.name, self.kind, self.source, self.reason = name, kind, source, reason
        # the dots it computes and the narrowed loops around each (EmittedKernel.dot_sites)
        self.dot_sites: list = list(dot_sites or [])
        self.ops: list[Node] = list(ops)
        self.inputs: list[Node] = list(inputs)
        self.outputs: list[Node] = list(outputs)
        self.axes: list[str] = list(axes)
        self.path, self.key = path, key
        self.signature = signature or {}
        self.tuning = tuning or []
        self.dims = dims or {}       # problem sizes the launch grid covers (autotune's roofline model)
        self.group = group           # the fusion group it was emitted from (None on a rank that loaded it)
        self.vmem = vmem             # Pallas: its VMEM buffers (codegen/vmem.VmemUse; .nbytes the footprint)
        self._choose = choose        # interpret: bool -> launch config
        self._modules: dict[bool, object] = {}

    @classmethod
    def emitted(cls, name: str, emitted, group: FusionGroup, path, key: str) -> "Kernel":
        """The kernel an emitter wrote for `group`, stored in the kernel cache at `path`."""
        return cls(name, emitted.kind, emitted.source, group.nodes, emitted.inputs, emitted.outputs,
                   emitted.axes, group.reason, path, key, emitted.choose, emitted.signature,
                   emitted.tuning, group, emitted.dims, emitted.vmem, emitted.dot_sites)

    @property
    def members(self) -> list[FusionGroup]:
        """The fusion groups this launch runs: its own, or a multi-tensor launch's members
        (codegen/fused_multi.py); none on a rank that loaded the kernel from the wire."""
        return [] if self.group is None else list(self.group.pattern.get("members", [self.group]))

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

    def launch(self, args: list, config: dict | None = None, interpret: bool = True):
        """Run on the Triton interpreter (CPU tensors), or compiled for the GPU (interpret=False,
        CUDA tensors): args are the inputs, the outputs, then the axis indices."""
        mod = self.module(interpret)
        with interpret_mode(interpret):
            mod.launch(args, config or self.config(interpret))

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
    """A launch-plan step: run `kernel` (reads its inputs, writes its outputs)."""
    kernel: Kernel
    step = "kernel"

    @property
    def reads(self) -> list[Node]:
        return self.kernel.inputs

    @property
    def writes(self) -> list[Node]:
        return self.kernel.outputs


class Executable:
    """Kernels plus the launch plan every device runs (one SPMD program: the same plan on each).
    Plain data: shardc.compile returns runtime.Executable, this with the engines' `run` methods."""

    def __init__(self, prog, plan: list, target: str):
        self.prog = prog
        self.plan = plan
        self.target = target

    @property
    def kernels(self) -> list[Kernel]:
        return [s.kernel for s in self.plan if s.step == "kernel"]

    def plan_text(self) -> str:
        out = []
        for i, s in enumerate(self.plan):
            if s.step == "kernel":
                k = s.kernel
                out.append(f"{i:3d} kernel {k.name} [{k.kind}] {len(k.ops)} ops -> "
                           f"{', '.join(o.describe() for o in k.outputs)}  ({k.reason})")
            elif s.step == "collective":
                out.append(f"{i:3d} {s.node.op.value} {s.node.describe()}")
            else:
                out.append(f"{i:3d} view {s.node.describe()} of {s.source.describe()}")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<Executable {self.target}: {len(self.kernels)} kernels, {len(self.plan)} steps per device>"

    @property
    def engine(self) -> str:
        """Where `run` executes by default: torch.distributed ranks for Triton, one JAX program for Pallas."""
        return {"triton": "torch", "pallas": "jax"}[self.target]
