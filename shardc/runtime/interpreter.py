"""The interpreter engine: every device's launch plan in one process, in lockstep, step by step:
kernels through the Triton interpreter (target "pallas": Pallas interpret mode), collectives exactly
as partition/simulate.py computes them, views as reshapes. It checks generated kernels on a CPU
machine without starting ranks, and `on_kernel` sees every launch (numpy in and out)."""
from __future__ import annotations

import numpy as np

from ..codegen.fusion import is_buffer_leaf
from ..errors import Error
from ..ir import Node, Op
from ..ir.graph import to_numpy
from ..partition.simulate import run_collective


class _Buffers:
    """How one target's kernels take and give arrays: torch tensors for Triton, numpy for Pallas."""

    def __init__(self, target: str):
        self.target = target
        if target == "pallas":
            self.to_buffer, self.to_numpy = np.asarray, np.asarray
        else:
            from .torch_ops import to_torch
            self.to_buffer, self.to_numpy = to_torch, to_numpy

    def launch(self, kernel, ins: list, axis_values: list[int]) -> list:
        if self.target == "pallas":
            from ..codegen.pallas import launch as pallas_launch
            return pallas_launch(kernel, ins, axis_values)
        import torch

        from .torch_ops import TORCH_DTYPE
        outs = [torch.empty(o.shape, dtype=TORCH_DTYPE[o.dtype]) for o in kernel.outputs]
        kernel.launch(ins + outs + axis_values)
        return outs


def run_interpreter(exe, *args, on_kernel=None) -> list[np.ndarray]:
    """Global outputs (numpy) of running every device's plan of `exe` in one process.
    `on_kernel(kernel, device, inputs, outputs)` sees every launch (numpy arrays), e.g. to check it
    against `kernel.reference`."""
    if not hasattr(exe, "plan"):
        raise Error("the interpreter engine runs a compiled Executable (shardc.compile(prog)); "
                    "a partitioned program runs every device in one process with prog.simulate(*args)")
    return run_plan(exe, exe.prog.graph.input_values(*args), on_kernel)


def run_plan(exe, inputs: dict[str, np.ndarray], on_kernel=None) -> list[np.ndarray]:
    """`run_interpreter` given the global input values by name."""
    prog, buf = exe.prog, _Buffers(exe.target)
    mesh, local = prog.mesh, prog.local
    devices = range(mesh.size)
    env: list[dict] = [{p: buf.to_buffer(b) for p, b in zip(local.inputs, blocks)}
                       for blocks in prog.input_blocks(inputs)]
    for n in local.nodes:
        if is_buffer_leaf(n) and n.op is Op.CONSTANT:
            t = buf.to_buffer(n.attrs["value"])
            for d in devices:
                env[d][n] = t
    uses: dict[Node, int] = {}
    for s in exe.plan:
        for x in s.reads:
            uses[x] = uses.get(x, 0) + 1
    keep = set(local.outputs)

    def kernel(s):
        k = s.kernel
        for d in devices:
            ins = [env[d][x] for x in k.inputs]
            coords = mesh.coords(d)
            outs = buf.launch(k, ins, [int(coords[a]) for a in k.axes])
            for o, t in zip(k.outputs, outs):
                env[d][o] = t
            if on_kernel is not None:
                on_kernel(k, d, [buf.to_numpy(t) for t in ins], [buf.to_numpy(t) for t in outs])

    def collective(s):
        n = s.node
        res = run_collective(n, mesh, [buf.to_numpy(env[d][n.inputs[0]]) for d in devices],
                             [[buf.to_numpy(env[d][i]) for i in n.inputs[1:]] for d in devices])
        for d in devices:
            env[d][n] = buf.to_buffer(res[d])

    def view(s):
        for d in devices:
            env[d][s.node] = env[d][s.source].reshape(s.node.shape)

    run_step = {"kernel": kernel, "collective": collective, "view": view}
    for s in exe.plan:
        run_step[s.step](s)
        for x in s.reads:
            uses[x] -= 1
            if uses[x] == 0 and x not in keep:
                for d in devices:
                    env[d].pop(x, None)
    return prog.assemble([[buf.to_numpy(env[d][o]) for o in local.outputs] for d in devices])
