"""The Executable users hold: codegen's plain data (kernels, fusion groups, the launch plan) with
the runtime's engines attached as methods. shardc.compile returns one; codegen never sees it."""
from __future__ import annotations

import numpy as np

from ..codegen import executable as compiled


class Executable(compiled.Executable):
    """codegen's Executable plus `run` (an engine: "torch" ranks, the "jax" program or the
    "interpreter") and `run_interpreted` (the interpreter engine, numpy out)."""

    @classmethod
    def of(cls, exe: compiled.Executable) -> "Executable":
        return exe if isinstance(exe, cls) else cls(exe.prog, exe.plan, exe.target)

    def run(self, *args, engine: str | None = None, **kw) -> list:
        """Global outputs on the engine, in its arrays (torch tensors or jax arrays): every torch
        rank launches a Triton plan's kernels, the JAX program calls a Pallas plan's kernels
        (interpreters on CPU); an engine given the other target's plan runs it op by op."""
        from . import run
        return run(self, *args, engine=engine or self.engine, **kw)

    def run_interpreted(self, *args, on_kernel=None) -> list[np.ndarray]:
        """Global outputs (numpy) of running every device's plan in one process: kernels on the
        Triton interpreter (Pallas: interpret mode), collectives exact. `on_kernel(kernel, device,
        inputs, outputs)` sees every launch (numpy arrays), e.g. to check it against
        `kernel.reference`."""
        from .interpreter import run_interpreter
        return run_interpreter(self, *args, on_kernel=on_kernel)


def compile(prog, target: str = "triton") -> Executable:
    """codegen.compile, returned as a runnable Executable."""
    from ..codegen import compile as codegen_compile
    return Executable.of(codegen_compile(prog, target))
