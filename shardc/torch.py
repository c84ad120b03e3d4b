"""PyTorch integration: `shardc.torch.parallelize(module, mesh, specs_or_plan)` returns a module
whose forward runs the partitioned, compiled program on torch.distributed ranks (spawned locally,
or this job's ranks under torchrun). It compiles on the first call for each input signature."""
from __future__ import annotations

import torch

from .partition import Mesh


def _signature(args) -> tuple:
    return tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("const", a) for a in args)


class Parallelized(torch.nn.Module):
    """`module` partitioned over `mesh`: same call, same outputs, every device's share on a rank."""

    def __init__(self, module: torch.nn.Module, mesh: Mesh, specs=None, plan: str | None = None,
                 target: str = "triton", **run_options):
        super().__init__()
        self.module = module
        self.mesh, self.target, self.run_options = mesh, target, run_options
        if isinstance(specs, str):  # parallelize(m, mesh, "fsdp")
            specs, plan = None, specs
        self.specs, self.plan = specs, plan
        self._compiled: dict[tuple, object] = {}

    def compiled(self, *args):
        """The Executable for these arguments' shapes and dtypes (made once)."""
        import shardc
        key = _signature(args)
        if key not in self._compiled:
            g = shardc.from_torch(self.module, args)
            prog = shardc.partition(g, self.mesh, self.specs, self.plan)
            self._compiled[key] = shardc.compile(prog, target=self.target)
        return self._compiled[key]

    def forward(self, *args):
        # parameters are read at capture time: a module whose weights change needs a fresh wrapper
        outs = self.compiled(*args).run(*args, engine="torch", **self.run_options)
        return outs[0] if len(outs) == 1 else tuple(outs)


def parallelize(module: torch.nn.Module, mesh: Mesh, specs_or_plan=None, **options) -> Parallelized:
    """A module whose forward runs `module` partitioned over `mesh` (specs dict, or a plan name)."""
    return Parallelized(module, mesh, specs_or_plan, **options)
