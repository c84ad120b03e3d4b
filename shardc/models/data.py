"""Framework-free parameter initialization and example batches, as numpy arrays.

Both twins are filled from these arrays, so for the same seed the torch module, the JAX params,
the torch inputs and the JAX inputs hold identical values. Parameters and data use separate
random streams (seeded with (0, seed) and (1, seed)) so that inputs are not copies of weights.
"""

from __future__ import annotations

import numpy as np

from .configs import NORM_MODULES


def is_norm_weight(name: str) -> bool:
    """True for the scale of a LayerNorm/RMSNorm (e.g. "h.0.ln_1.weight", "norm.weight")."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in NORM_MODULES


def init_params(config, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 parameters: N(0, init_std) for weights and biases; norm scales near 1 (1 + N(0, 0.1)).

    Norm scales and biases are random rather than 1 and 0 so that tests notice a parameter that
    is dropped or applied to the wrong tensor.
    """
    rng = np.random.default_rng((0, seed))
    params = {}
    for name, shape in config.param_shapes().items():
        z = rng.standard_normal(shape, dtype=np.float32)
        if is_norm_weight(name):
            params[name] = np.float32(1.0) + np.float32(0.1) * z
        else:
            params[name] = np.float32(config.init_std) * z
    return params


def example_batch(config, batch: int = 2, seed: int = 0) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """(forward inputs, loss targets) for one batch.

    mlp:        x [B, d_in] float32,        targets [B, d_out] float32
    gpt2/llama: ids [B, S] int64,           targets [B, S] int64 = the next token of each position
    moe:        x [B, S, d_model] float32,  targets [B, S, d_model] float32
    """
    rng = np.random.default_rng((1, seed))
    family = config.family
    if family == "mlp":
        x = rng.standard_normal((batch, config.d_in), dtype=np.float32)
        return (x,), rng.standard_normal((batch, config.d_out), dtype=np.float32)
    if family in ("gpt2", "llama", "mixtral"):
        # One stream of S+1 tokens: the model reads tokens[:-1] and predicts tokens[1:].
        tokens = rng.integers(0, config.vocab_size, size=(batch, config.seq_len + 1), dtype=np.int64)
        return (tokens[:, :-1].copy(),), tokens[:, 1:].copy()
    if family == "moe":
        shape = (batch, config.seq_len, config.d_model)
        x = rng.standard_normal(shape, dtype=np.float32)
        return (x,), rng.standard_normal(shape, dtype=np.float32)
    raise AssertionError(f"unknown family {family!r}")
