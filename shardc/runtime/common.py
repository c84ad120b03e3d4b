"""What the engines share: accepting an SpmdProgram or an Executable, splitting the caller's
arguments into every device's blocks and assembling global outputs from blocks (both written once,
on SpmdProgram: `input_blocks`, `assemble`), checking a program's layouts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import Error


@dataclass(frozen=True)
class TraceEvent:
    """One step on one rank (torch engine) or device (JAX engine, jax_trace.py): kind "op" |
    "start" | "wait" (| "kernel" | "view" when running a compiled launch plan; "kernel" for an
    instruction XLA ran), the node's index in the local program (the instruction's position, for
    JAX), its op name (a kernel's or instruction's name), and times (seconds) when it began and
    ended."""
    kind: str
    index: int
    op: str
    t0: float
    t1: float


def as_program(prog):
    """An SpmdProgram, or anything that carries one (codegen's Executable: `.prog`)."""
    from ..partition import SpmdProgram
    if isinstance(prog, SpmdProgram):
        return prog
    inner = getattr(prog, "prog", None)
    if isinstance(inner, SpmdProgram):
        return inner
    raise Error(f"expected a partitioned program (shardc.partition(...)) or an Executable, "
                f"got {type(prog).__name__}")


def local_blocks(prog, args, devices=None) -> list[list[np.ndarray] | None]:
    """Every device's local block of every input, blocks[device][input] (only `devices`' if given)."""
    return prog.input_blocks(prog.graph.input_values(*args), devices)


def assemble(prog, per_device: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Global outputs from every device's output blocks (replicas must agree exactly)."""
    return prog.assemble(per_device)


def check_layouts(prog):
    """Each local input/output shape must be its global shape's block under its sharding (a
    hand-made or corrupted program fails here, by name, instead of deep inside an engine)."""
    from ..partition.mesh import local_shape
    g, loc, mesh = prog.graph, prog.local, prog.mesh
    pairs = [("input", p.name, p.shape, lp.shape, s) for p, lp, s in zip(g.inputs, loc.inputs, prog.input_shardings)]
    pairs += [("output", name, o.shape, lo.shape, s)
              for o, lo, s, name in zip(g.outputs, loc.outputs, prog.output_shardings, g.output_names)]
    if len(g.inputs) != len(loc.inputs) or len(g.outputs) != len(loc.outputs):
        raise Error(f"program {g.name!r}: the local program has {len(loc.inputs)} inputs and "
                    f"{len(loc.outputs)} outputs, the global graph {len(g.inputs)} and {len(g.outputs)}")
    for kind, name, gshape, lshape, s in pairs:
        if s.rank != len(gshape) or local_shape(gshape, s, mesh) != tuple(lshape):
            raise Error(f"{kind} {name!r}: local shape {list(lshape)} is not the block of {list(gshape)} "
                        f"under {s} on {mesh}")
