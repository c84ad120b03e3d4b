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
torch and jax are imported only by the engine that runs. An engine is one module here and one
entry in `ENGINES` / `run` below; every engine walks the launch plan through the steps' `.step`,
`.reads` and `.writes`, and splits inputs / assembles outputs with SpmdProgram.input_blocks /
assemble. `Executable` (executable.py) is codegen's plain data with these engines as methods.
"""
from __future__ import annotations

from .check import OutputError, check
from .errors import CheckError, RankError, RankTimeoutError
from .executable import Executable

ENGINES = ("torch", "jax", "interpreter")


def run(prog, *args, engine: str = "torch", **kw) -> list:
    """Global outputs of `prog` (an SpmdProgram or an Executable carrying one) on `engine`:
    "torch" → run_torch(prog, *args, world=None, timeout_s=300, trace=None, fault=None);
    "jax" → run_jax(prog, *args, devices=None); "interpreter" (an Executable only) →
    run_interpreter(exe, *args, on_kernel=None), numpy arrays. Arguments are the original callable's."""
    if engine == "torch":
        from .torch_launch import run_torch
        return run_torch(prog, *args, **kw)
    if engine == "jax":
        from .jax_exec import run_jax
        return run_jax(prog, *args, **kw)
    from ..errors import Error
    if engine == "interpreter":
        if not hasattr(prog, "plan"):
            raise Error("the interpreter engine runs a compiled Executable (shardc.compile(prog)); "
                        "a partitioned program runs every device in one process with prog.simulate(*args)")
        from .interpreter import run_interpreter
        return run_interpreter(prog, *args, **kw)
    raise Error(f"unknown engine {engine!r} (expected one of {', '.join(ENGINES)})")


__all__ = ["CheckError", "ENGINES", "Executable", "OutputError", "RankError", "RankTimeoutError", "check", "run"]
