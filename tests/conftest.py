"""Test-wide set-up: the Triton interpreter and 8 JAX CPU devices, before anything imports them."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """Fresh random inputs for each test, reproducible from the printed seed."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


def rel_err(got, want) -> float:
    """Max error relative to the reference's scale (robust to entries near zero)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != {want.shape}")
    scale = max(np.max(np.abs(want)) if want.size else 0.0, 1e-30)
    return float(np.max(np.abs(got - want)) / scale) if want.size else 0.0
