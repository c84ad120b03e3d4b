"""The runtime: run a partitioned program on a real engine and check it against the reference.

    outs = run(prog, *args, engine="torch")   # torch.distributed ranks (gloo on CPU), torch tensors
    outs = run(prog, *args, engine="jax")     # one jax.jit(jax.shard_map(...)) program, jax arrays
    outs = run(exe, *args, engine="interpreter")  # a compiled Executable's plan, every device in one process
    report = check(prog, *args, engine="torch")  # per-output errors; raises CheckError on mismatch

Given an SpmdProgram, both engines run the per-device IR program op by op (torch_ops.py /
jax_exec.py tables, which mirror ir/evaluate.py). Given an Executable (shardc.compile), they walk
its launch plan instead: every torch rank launches the Triton kernels, the JAX shard_map program
calls the Pallas kernels (interpreters on CPU), with collectives and views between them; the
interpreter engine (interpreter.py) runs every device's plan in one process, collectives exact.
With GPUs, the torch engine runs a compiled plan's kernels on them (devices.py decides: one rank
per GPU over NCCL, or with a single GPU every device's kernels on it in turn, serial.py).
torch and jax are imported only by the engine that runs. An engine is one module here and one
entry in `ENGINES` below; every engine walks the launch plan through the steps' `.step`,
`.reads` and `.writes`, and splits inputs / assembles outputs with SpmdProgram.input_blocks /
assemble. `Executable` (executable.py) is codegen's plain data with these engines as methods.
"""
from __future__ import annotations

from .check import OutputError, check
from .errors import CheckError, RankError, RankTimeoutError
from .executable import Executable

# engine name → (module in runtime/, its entry point (prog_or_exe, *args, **options) → outputs).
# An engine is its module and its line here.
ENGINES: dict[str, tuple[str, str]] = {
    "torch": ("torch_launch", "run_torch"),       # world=None, timeout_s=300, trace=None, fault=None, device=None; torch tensors
    "jax": ("jax_exec", "run_jax"),               # devices=None, trace=None (XLA profiler, jax_trace.py); jax arrays
    "interpreter": ("interpreter", "run_interpreter"),  # an Executable only; on_kernel=None; numpy arrays
    "torch_pipeline": ("pipeline_exec", "run_pipeline_torch"),  # a PipelineProgram; trace=None; numpy arrays
    "jax_pipeline": ("pipeline_jax", "run_pipeline_jax"),       # a PipelineProgram; devices=None, trace=None; numpy
}


def run(prog, *args, engine: str = "torch", **kw) -> list:
    """Global outputs of `prog` (an SpmdProgram or an Executable carrying one) on `engine` (a
    name in ENGINES; options as noted there). Arguments are the original callable's."""
    import importlib

    from ..errors import Error
    if engine not in ENGINES:
        raise Error(f"unknown engine {engine!r} (expected one of {', '.join(ENGINES)})")
    module, entry = ENGINES[engine]
    return getattr(importlib.import_module(f".{module}", __name__), entry)(prog, *args, **kw)


__all__ = ["CheckError", "ENGINES", "Executable", "OutputError", "RankError", "RankTimeoutError", "check", "run"]
