"""Optimizer updates written once for torch and JAX arrays (both have the operators used here).

    new_params, new_state = update(optimizer, params, grads, state, lr, sqrt)

params, grads: flat {name: array}; state: `init_state(optimizer, params, zeros_like, scalar)`,
{"step": scalar f32, "m": {...}, "v": {...}} for Adam and AdamW, {} for SGD. Adam as Kingma & Ba
with bias correction, eps added after the square root, as torch.optim.Adam; AdamW decays the
parameter by lr·weight_decay before the Adam step, as torch.optim.AdamW (default decay 0.01).
Bias-correction scalars are cast to the parameter dtype so bf16 parameters stay bf16."""
from __future__ import annotations

from ..errors import Error

OPTIMIZERS = ("sgd", "adam", "adamw")
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
ADAMW_DECAY = 0.01


def check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise Error(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def _dict_map(f, *trees: dict) -> dict:
    return {k: f(*(t[k] for t in trees)) for k in trees[0]}


def init_state(optimizer: str, params, zeros_like, scalar_zero, tree_map=_dict_map) -> dict:
    """The optimizer state for `params` (a flat dict, or any pytree with jax.tree_util.tree_map)."""
    check_optimizer(optimizer)
    if optimizer == "sgd":
        return {}
    return {"step": scalar_zero, "m": tree_map(zeros_like, params), "v": tree_map(zeros_like, params)}


def _cast(x, like):
    return x.astype(like.dtype) if hasattr(x, "astype") else x.to(like.dtype)


def update(optimizer: str, params, grads, state: dict, lr: float, sqrt, tree_map=_dict_map,
           weight_decay: float = ADAMW_DECAY) -> tuple:
    """(new params, new state) after one step; `sqrt` is torch.sqrt or jnp.sqrt."""
    check_optimizer(optimizer)
    if optimizer == "sgd":
        return tree_map(lambda p, g: p - lr * g, params, grads), state
    step = state["step"] + 1
    m = tree_map(lambda m, g: ADAM_B1 * m + (1 - ADAM_B1) * g, state["m"], grads)
    v = tree_map(lambda v, g: ADAM_B2 * v + (1 - ADAM_B2) * g * g, state["v"], grads)

    def new_param(p, m, v):
        bc1, bc2 = _cast(1 - ADAM_B1 ** step, p), _cast(1 - ADAM_B2 ** step, p)
        if optimizer == "adamw":
            p = p * (1 - lr * weight_decay)
        # in the parameter's dtype: bf16 parameters with f32 moments stay bf16
        return _cast(p - lr * (m / bc1) / (sqrt(v / bc2) + ADAM_EPS), p)

    return tree_map(new_param, params, m, v), {"step": step, "m": m, "v": v}
