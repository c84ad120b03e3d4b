"""What a Pallas kernel holds in a TPU core's VMEM, and the limit it compiles under.

    use = VmemUse(blocks=((shape, itemsize), ...), scratch=((shape, itemsize), ...))
    use.nbytes                       the footprint: every BlockSpec block twice (the pipeline
                                     double-buffers each input and output block: one in use, one in
                                     flight) plus the scratch buffers once, each padded to Mosaic's
                                     VMEM tiles (last dim to 128 lanes; second-to-last to 8 rows of
                                     32-bit, 16 of 16-bit, 32 of 8-bit values)
    limit_bytes(use)                 None where the kernel fits the generation's default scoped
                                     limit; else the vmem_limit_bytes to compile it with; a
                                     shardc.Error naming the kernel where even that is too much

Every Pallas emitter describes its kernel as a VmemUse (codegen/pallas.py from its BlockSpecs and
scratch shapes, codegen/grouped.py from its template's tiles): this module is the one place that
turns that description into bytes, and bytes into a compile decision.

The footprint counts what the pipeline and the kernel allocate; the values a kernel body computes
(a rebuilt score tile, a row's temporaries) live in vector registers and spill to VMEM that Mosaic
allocates itself. So a kernel is held to FIT (3/4) of a limit, the last quarter left for those.
The target generation is SHARDC_PALLAS_TPU (its scoped limit and physical VMEM come from the
hardware preset, shardc.analysis.hardware), by default tpu-v5p, whose 16 MiB default limit and
64 MiB of VMEM per core are the smallest of the presets: a kernel written for it fits v5e and v6e
too. SHARDC_PALLAS_TPU=none writes kernels for the interpreter alone (footprints still recorded,
nothing checked): how bench/ counts bytes for plans no TPU could compile yet.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import Error

MiB = 1 << 20
FIT = 0.75              # share of a limit the counted buffers may take (the rest: the body's spills)
TARGET = "tpu-v5p"      # the default generation (SHARDC_PALLAS_TPU overrides it)


def target():
    """The TPU generation kernels are written for (a shardc.hardware preset), from SHARDC_PALLAS_TPU
    (default tpu-v5p); None for "none": kernels for the interpreter alone, no VMEM check."""
    from ..analysis import hardware
    name = os.environ.get("SHARDC_PALLAS_TPU", "").strip().lower() or TARGET
    if name == "none":
        return None
    hw = hardware.get(name)
    if not hw.vmem_bytes:
        raise Error(f"SHARDC_PALLAS_TPU={name}: not a TPU (no VMEM); use tpu-v5e, tpu-v5p, tpu-v6e or none")
    return hw


def padded_bytes(shape: tuple, itemsize: int) -> int:
    """Bytes of a VMEM buffer of `shape`: Mosaic lays the last two dims out in (sublane, 128) tiles,
    sublanes 8 for 32-bit values (16 for 16-bit, 32 for 8-bit); a rank-1 buffer is one row."""
    shape = tuple(shape) or (1,)
    if len(shape) == 1:
        shape = (1,) + shape
    rows = 8 * max(1, 4 // itemsize)
    *lead, r, c = shape
    return math.prod(lead) * (-(-r // rows) * rows) * (-(-c // 128) * 128) * itemsize


@dataclass(frozen=True)
class VmemUse:
    """A Pallas kernel's VMEM buffers: its BlockSpec blocks (inputs and outputs) and scratch."""
    blocks: tuple = ()    # ((shape, itemsize), ...): double-buffered by the pipeline
    scratch: tuple = ()   # ((shape, itemsize), ...): allocated once

    @property
    def nbytes(self) -> int:
        return (2 * sum(padded_bytes(s, i) for s, i in self.blocks)
                + sum(padded_bytes(s, i) for s, i in self.scratch))


def default_fits(nbytes: int, hw) -> bool:
    """Within the generation's default scoped limit (with the body's quarter left)."""
    return nbytes <= FIT * hw.scoped_vmem_bytes


def max_bytes(hw) -> int:
    """The most a kernel may count: FIT of the largest limit compiled for, 3/4 of the core's VMEM
    (the rest for Mosaic's internal scratch and XLA's own VMEM use around the kernel)."""
    return int(FIT * FIT * hw.vmem_bytes)


class TooLarge(Error):
    """A kernel whose blocks cannot fit the target's VMEM (the planner splits such a group)."""


def limit_bytes(use: VmemUse) -> int | None:
    """The vmem_limit_bytes a kernel of `use` compiles with on the target: None within the default
    scoped limit (or with no target), else its footprint over FIT rounded up to a MiB; TooLarge
    where it passes `max_bytes`."""
    hw = target()
    n = use.nbytes
    if hw is None or default_fits(n, hw):
        return None
    if n > max_bytes(hw):
        shape, size = max(use.blocks + use.scratch, key=lambda b: padded_bytes(*b))
        raise TooLarge(f"its blocks and scratch need {n / MiB:.1f} MiB of VMEM (largest: "
                       f"{tuple(shape)} of {size}-byte values), more than the {max_bytes(hw) / MiB:.0f} MiB a kernel "
                       f"may use on {hw.name} ({hw.vmem_bytes // MiB} MiB per core) and no tiling of it fits; "
                       f"SHARDC_PALLAS_TPU=none writes it for the interpreter alone")
    return -(-int(n / FIT) // MiB) * MiB
