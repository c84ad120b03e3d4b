"""Comparison helpers shared by tests, benchmarks and `shardc.check`: errors relative to the
reference's scale, with tolerances that fit the dtype."""
from __future__ import annotations

import numpy as np

# relative tolerance per dtype name: f32 results of long reductions differ in the last bits
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2, "float64": 1e-12}


def rel_err(got, want, floor: float = 1e-30) -> float:
    """Max |got - want| over max |want| (robust to entries near zero); exact match for ints.
    `floor` bounds the scale from below, for results that cancel to near zero from terms of
    size ~floor (sums of O(1) random inputs)."""
    got = np.asarray(got).astype(np.float64)
    want = np.asarray(want).astype(np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != reference shape {want.shape}")
    if not want.size:
        return 0.0
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)) or np.any(got[~finite] != want[~finite]):
        return float("inf")
    scale = max(float(np.max(np.abs(want[finite]))) if finite.any() else 0.0, floor)
    return float(np.max(np.abs(got[finite] - want[finite]), initial=0.0) / scale)


def tolerance(dtype) -> float:
    name = np.dtype(dtype).name
    return TOLERANCE.get(name, 0.0)


def assert_close(got, want, tol: float | None = None, what: str = "output", floor: float = 1e-30):
    want = np.asarray(want)
    tol = tolerance(want.dtype) if tol is None else tol
    err = rel_err(got, want, floor)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3g} exceeds {tol:.3g}")
    return err
