"""What the Triton and Pallas emitters share: the kernel an emitter writes, a value in kernel text,
and Python literals in generated source."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..ir import DType, Node


def no_config(interpret: bool) -> dict:
    return {}


@dataclass
class EmittedKernel:
    """One generated kernel: its source, the materialized values it reads and writes, the mesh axes
    whose index it takes as a scalar, and how to pick its launch config."""
    name: str
    kind: str
    source: str
    inputs: list[Node]
    outputs: list[Node]
    axes: list[str]
    signature: dict = field(default_factory=dict)  # Triton: argument → type, for ahead-of-time compiles
    choose: object = no_config                     # interpret: bool -> launch config
    tuning: list = field(default_factory=list)     # the kernels/ template's tuning space
    grid: tuple = ()                               # Pallas: the grid of the pallas_call
    dims: dict = field(default_factory=dict)       # Triton: the problem sizes its grid covers (the tuner's model)
    vmem: object = None                            # Pallas: its VMEM buffers (codegen/vmem.VmemUse)
    # the dots it computes, each with the narrowed loops around it (codegen/masked_blocks.py):
    # [(dot node, (Bounds...))]; codegen/stats.py counts the dot FLOPs executed against dense
    dot_sites: list = field(default_factory=list)


class KernelValue:
    """A value in generated kernel text: the text (a variable or a literal), its IR dtype and, for
    a constant known on the host, its value. Each emitter adds what it tracks (Triton: the tile
    dimensions it depends on; Pallas: its block shape)."""

    __slots__ = ("text", "dtype", "const")

    def __str__(self) -> str:
        return self.text


def literal(v, dtype: DType) -> str:
    """`v` as a Python literal of `dtype` in generated source (nan and ±inf spelled as floats)."""
    if dtype is DType.bool:
        return "True" if bool(v) else "False"
    if dtype.is_int:
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(v)
