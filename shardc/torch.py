"""PyTorch integration.

- `shardc.torch.parallelize(module, mesh, specs_or_plan)` returns a module whose forward runs
  the partitioned, compiled program on torch.distributed ranks (spawned locally, or this job's
  ranks under torchrun), compiled on the first call for each input signature. It is
  differentiable: `loss.backward()` runs a partitioned VJP program on the ranks and fills `.grad`
  of the module's own parameters; parameters are read afresh on every call, so an optimizer can
  train it (shardc/torch_autograd.py).
- `torch.compile(model, backend=shardc.torch.backend(mesh, specs))` partitions every graph
  dynamo captures, forward and backward (AOTAutograd's joint graph, split in two: both halves
  run on the ranks); lifted parameters and buffers are named by module path (shardc/torch_dynamo.py).
"""
from __future__ import annotations

import torch

from .partition import Mesh


def _signature(args, kwargs=None) -> tuple:
    leaves, spec = torch.utils._pytree.tree_flatten((tuple(args), dict(kwargs or {})))
    return (str(spec),) + tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("const", a)
                                for a in leaves)


class Parallelized(torch.nn.Module):
    """`module` partitioned over `mesh`: same call, same outputs, every device's share on a rank;
    gradients flow to `module`'s parameters through a partitioned backward."""

    def __init__(self, module: torch.nn.Module, mesh: Mesh, specs=None, plan: str | None = None,
                 target: str = "triton", **run_options):
        super().__init__()
        self.module = module
        self.mesh, self.target, self.run_options = mesh, target, run_options
        if isinstance(specs, str):  # parallelize(m, mesh, "fsdp")
            specs, plan = None, specs
        self.specs, self.plan = specs, plan
        self._compiled: dict[tuple, object] = {}
        self._runners: dict[tuple, object] = {}

    def runner(self, *args, **kwargs):
        """The forward/backward programs for these arguments' shapes and dtypes (made once)."""
        from .torch_autograd import Runner
        key = _signature(args, kwargs)
        if key not in self._runners:
            r = Runner(self.module, self.mesh, self.specs, self.plan, self.target, self.run_options, args, kwargs)
            self._runners[key], self._compiled[key] = r, r.exe
        return self._runners[key]

    def compiled(self, *args, **kwargs):
        """The forward's Executable for these arguments' shapes and dtypes (made once)."""
        return self.runner(*args, **kwargs).exe

    def forward(self, *args, **kwargs):
        from .torch_autograd import Function
        kwargs = dict(sorted(kwargs.items()))  # one signature whatever the keywords' order
        r = self.runner(*args, **kwargs)
        state = r.state_tensors()
        arg_tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in state + arg_tensors):
            outs = Function.apply(r, len(state), *state, *arg_tensors)
        else:
            outs = r.forward(state, arg_tensors)
        return outs[0] if len(outs) == 1 else tuple(outs)


def parallelize(module: torch.nn.Module, mesh: Mesh, specs_or_plan=None, **options) -> Parallelized:
    """A module whose forward runs `module` partitioned over `mesh` (specs dict, or a plan name)."""
    return Parallelized(module, mesh, specs_or_plan, **options)


def backend(mesh: Mesh, specs=None, plan: str | None = None, target: str = "triton", **run_options):
    """A torch.compile backend: `torch.compile(model, backend=shardc.torch.backend(mesh, specs))`.
    Each graph dynamo captures is partitioned over `mesh` and run on torch.distributed ranks,
    forward and backward (through AOTAutograd); lifted parameters and buffers are named
    "params['<module path>']". What the backend returns for a graph has `.shardc` (its
    `.forward` and `.backward` Executables) and `.executable` (the forward's)."""
    from .torch_dynamo import backend as _impl
    return _impl(mesh, specs, plan, target, **run_options)
