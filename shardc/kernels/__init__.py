"""Hand-written, parameterized Triton kernel templates and their tuning spaces.

Each template is Triton source with holes (`{name}`) that codegen/triton.py fills with code the
fusion planner's groups need: the loads of a matmul's operands (its prologue), what a tile of the
result becomes before it is stored (its epilogue), the score transform of an attention kernel.
Each module also names its tuning parameters: `TUNING` (the space an autotuner searches on a GPU)
and `choose(..., interpret)` (one good point: on the CPU interpreter, the largest tiles that fit,
since interpreter cost grows with grid size × loop trips).
"""
from . import attention, grouped_matmul, matmul, rows, scatter

__all__ = ["attention", "grouped_matmul", "matmul", "rows", "scatter", "next_pow2"]


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
