"""Every device's launch plan on one torch device, one device after another: how a machine with a
single GPU checks and times a whole partitioned step (placement "cuda-serial", devices.py).

    plan = DevicePlan(exe, "cuda")         # a Triton Executable; "cpu" runs the interpreter instead
    outs = plan.run(*args)                 # global outputs, numpy (== exe.run_interpreted(*args))
    blocks = plan.load(*args)              # every device's inputs, resident on the device
    plan.step(blocks)                      # one step, nothing copied to or from the host: to time

It walks the plan as the interpreter engine does (interpreter.py): each kernel launched once per
device, each collective computed from every device's operand exactly (the simulator's arithmetic,
collective_on below, in torch on the device), each view a reshape. The same code runs on CPU
tensors with the kernels interpreted, which is how it is tested without a GPU.
"""
from __future__ import annotations

import numpy as np

from ..codegen.fusion import is_buffer_leaf
from ..errors import Error
from ..ir import Node, Op
from .torch_ops import TORCH_DTYPE, to_numpy, to_torch


def collective_on(n: Node, mesh, vals: list) -> list:
    """Every device's result of collective `n` from every device's operand (torch tensors on one
    device): partition/simulate.py's run_collective, in torch. Half floats are combined in f32."""
    import torch
    out: list = [None] * mesh.size
    for group in mesh.groups(n.attrs["axes"]):
        xs = [vals[d].float() if vals[d].dtype in (torch.float16, torch.bfloat16) else vals[d] for d in group]
        k = len(group)
        if n.op is Op.ALL_REDUCE:
            red = {"sum": torch.add, "max": torch.maximum, "min": torch.minimum}[n.attrs["reduce"]]
            total = xs[0]
            for x in xs[1:]:
                total = red(total, x)
            res = [total] * k
        elif n.op is Op.ALL_GATHER:
            res = [torch.cat(xs, dim=n.attrs["dim"])] * k
        elif n.op is Op.REDUCE_SCATTER:
            total = xs[0]
            for x in xs[1:]:
                total = total + x
            res = list(torch.tensor_split(total, k, dim=n.attrs["dim"]))
        elif n.op is Op.ALL_TO_ALL:
            s, c = n.attrs["split_dim"], n.attrs["concat_dim"]
            pieces = [torch.tensor_split(x, k, dim=s) for x in xs]
            res = [torch.cat([pieces[src][dst] for src in range(k)], dim=c) for dst in range(k)]
        elif n.op is Op.COLLECTIVE_PERMUTE:
            res = [torch.zeros_like(xs[0]) for _ in range(k)]
            for src, dst in n.attrs["pairs"]:
                res[dst] = xs[src]
        else:
            raise Error(f"{n.describe()}: not a collective")
        for d, r in zip(group, res):
            out[d] = r.to(TORCH_DTYPE[n.dtype]).contiguous()
    return out


class DevicePlan:
    """A Triton Executable's plan for every device, run on one torch `device` ("cuda", "cuda:1",
    "cpu"); kernels compiled for the GPU there, interpreted on "cpu"."""

    def __init__(self, exe, device: str = "cuda"):
        import torch
        if getattr(exe, "target", None) != "triton":
            raise Error("DevicePlan runs a compiled Triton Executable (shardc.compile(prog, 'triton'))")
        self.exe, self.prog = exe, exe.prog
        self.device = torch.device(device)
        self.interpret = self.device.type == "cpu"
        self.configs = {k.name: k.config(self.interpret) for k in exe.kernels}
        local = self.prog.local
        self.consts = {n: to_torch(n.attrs["value"]).to(self.device) for n in local.nodes
                       if is_buffer_leaf(n) and n.op is Op.CONSTANT}
        self.uses: dict[Node, int] = {}
        for s in exe.plan:
            for x in s.reads:
                self.uses[x] = self.uses.get(x, 0) + 1
        self.keep = set(local.outputs)

    def load(self, *args) -> list[list]:
        """Every device's input blocks of the callable's arguments, on the device."""
        blocks = self.prog.input_blocks(self.prog.graph.input_values(*args))
        return [[to_torch(b).to(self.device) for b in per_device] for per_device in blocks]

    def step(self, blocks: list[list]) -> list[list]:
        """Every device's output blocks (tensors on the device) of one run of the plan."""
        import torch
        mesh, local = self.prog.mesh, self.prog.local
        devices = range(mesh.size)
        env = [{**dict(zip(local.inputs, blocks[d])), **self.consts} for d in devices]
        left = dict(self.uses)
        for s in self.exe.plan:
            if s.step == "kernel":
                k = s.kernel
                for d in devices:
                    coords = mesh.coords(d)
                    outs = [torch.empty(o.shape, dtype=TORCH_DTYPE[o.dtype], device=self.device) for o in k.outputs]
                    ins = [env[d][x].contiguous() for x in k.inputs]
                    k.launch(ins + outs + [int(coords[a]) for a in k.axes], self.configs[k.name], self.interpret)
                    env[d].update(zip(k.outputs, outs))
            elif s.step == "collective":
                res = collective_on(s.node, mesh, [env[d][s.node.inputs[0]] for d in devices])
                for d in devices:
                    env[d][s.node] = res[d]
            else:
                for d in devices:
                    env[d][s.node] = env[d][s.source].reshape(s.node.shape)
            for x in s.reads:  # free a buffer after its last reader
                left[x] -= 1
                if left[x] == 0 and x not in self.keep:
                    for d in devices:
                        env[d].pop(x, None)
        return [[env[d][o] for o in local.outputs] for d in devices]

    def run(self, *args) -> list[np.ndarray]:
        """Global outputs (numpy) of one step on the callable's arguments."""
        per_device = self.step(self.load(*args))
        return self.prog.assemble([[to_numpy(t) for t in outs] for outs in per_device])
