"""Where the torch engine runs a program: one decision, made here and nowhere else.

    choose_placement(world=4, gpus=0, compiled=True)   -> Placement("cpu", ...)
    choose_placement(world=4, gpus=8, compiled=True)   -> Placement("cuda-ranks", ...)
    choose_placement(world=4, gpus=1, compiled=True)   -> Placement("cuda-serial", ...)

- "cpu": gloo ranks on this machine, kernels on the Triton interpreter (what CI runs);
- "cuda-ranks": one rank per GPU, NCCL collectives, kernels compiled for the GPU;
- "cuda-serial": fewer GPUs than devices (one GPU checking a whole mesh): every device's kernels
  run on GPU 0 one device after another, collectives computed exactly in between (as the
  interpreter engine does on a CPU), in this process (runtime/serial.py).

Only compiled Triton executables go to a GPU: a partitioned program runs op by op, on CPU ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import Error

REQUESTS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    kind: str   # "cpu" | "cuda-ranks" | "cuda-serial"
    why: str

    @property
    def on_gpu(self) -> bool:
        return self.kind != "cpu"


def gpu_count() -> int:
    """CUDA devices torch can use here (0 on a CPU build or a broken driver)."""
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver install is "no GPU"
        return 0


def choose_placement(world: int, gpus: int, compiled: bool, request: str | None = None) -> Placement:
    """Where a program of `world` devices runs, given `gpus` visible GPUs. `compiled`: an
    Executable of Triton kernels (else a program run op by op). `request`: "auto" (None), "cpu"
    or "cuda" (an error where it cannot be honoured)."""
    request = request or "auto"
    if request not in REQUESTS:
        raise Error(f"device={request!r}: expected one of {', '.join(REQUESTS)}")
    if request == "cpu":
        return Placement("cpu", "device='cpu' was asked for")
    if not compiled:
        if request == "cuda":
            raise Error("device='cuda' runs compiled kernels: shardc.compile(prog) first "
                        "(a partitioned program runs op by op on CPU ranks)")
        return Placement("cpu", "a partitioned program runs op by op on CPU ranks")
    if gpus == 0:
        if request == "cuda":
            raise Error("device='cuda' but torch sees no CUDA GPU here")
        return Placement("cpu", "no GPU: gloo ranks, kernels on the Triton interpreter")
    if world > 1 and gpus >= world:
        return Placement("cuda-ranks", f"{gpus} GPUs for {world} devices: one rank per GPU, NCCL")
    return Placement("cuda-serial", f"{gpus} GPU(s) for {world} device(s): every device's kernels on GPU 0 "
                                    "in turn, collectives exact in between")
