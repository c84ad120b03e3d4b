"""Shape-only arguments for a zoo model: jax.ShapeDtypeStruct or meta tensors in place of values,
so that a 70B-parameter training step captures without holding a single weight.

    fn, args = shape_only_args(model_def, train=True, frontend="jax", batch=8, optimizer="adam")

Parameters are in `dtype` (bf16 by default for production presets); Adam's moments and step
count are f32 (mixed precision: the update casts the new parameter back to its own dtype).
"""
from __future__ import annotations

from ..errors import Error

DTYPES = ("bf16", "f16", "f32")


def io_shapes(config, batch: int) -> tuple[list, tuple]:
    """([(shape, kind)] of the forward inputs, (shape, kind) of the targets), kind "int" or
    "float", without drawing any data (data.example_batch's shapes)."""
    family = config.family
    if family == "mlp":
        return [((batch, config.d_in), "float")], ((batch, config.d_out), "float")
    if family in ("gpt2", "llama", "mixtral"):
        return [((batch, config.seq_len), "int")], ((batch, config.seq_len), "int")
    if family == "moe":
        shape = (batch, config.seq_len, config.d_model)
        return [(shape, "float")], (shape, "float")
    raise Error(f"no shape-only inputs for model family {family!r}")


def shape_only_args(model_def, train: bool, frontend: str, batch: int, optimizer: str, lr: float,
                    dtype: str = "bf16"):
    if dtype not in DTYPES:
        raise Error(f"parameter dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if frontend == "torch":
        return _torch_args(model_def, train, batch, optimizer, lr, dtype)
    import jax
    import jax.numpy as jnp

    pd = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}[dtype]
    shapes = model_def.param_shapes()
    ins, tgt = io_shapes(model_def.config, batch)

    def sds(shape, kind):
        return jax.ShapeDtypeStruct(shape, jnp.int32 if kind == "int" else pd)

    params = {n: jax.ShapeDtypeStruct(s, pd) for n, s in shapes.items()}
    inputs = tuple(sds(s, k) for s, k in ins)
    if not train:
        return model_def.jax_forward, (params, *inputs)
    fn, _ = model_def.jax_train_step(optimizer, lr=lr)
    if optimizer == "sgd":
        return fn, (params, *inputs, sds(*tgt))
    f32 = {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in shapes.items()}
    state = {"step": jax.ShapeDtypeStruct((), jnp.float32), "m": f32, "v": dict(f32)}
    return fn, (params, state, *inputs, sds(*tgt))


def _torch_args(model_def, train, batch, optimizer, lr, dtype):
    import torch

    pd = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    ins, tgt = io_shapes(model_def.config, batch)

    def meta(shape, kind):
        return torch.empty(shape, dtype=torch.int64 if kind == "int" else pd, device="meta")

    inputs = tuple(meta(s, k) for s, k in ins)
    if not train:
        return model_def.torch_meta_module().to(pd), inputs
    fn, _ = model_def.torch_train_step(optimizer, lr=lr)
    shapes = model_def.param_shapes()
    params = {n: torch.empty(s, dtype=pd, device="meta") for n, s in shapes.items()}
    if optimizer == "sgd":
        return fn, (params, *inputs, meta(*tgt))
    def f32():  # distinct tensors for m and v (one tensor passed twice would be one input)
        return {n: torch.empty(s, dtype=torch.float32, device="meta") for n, s in shapes.items()}

    state = {"step": torch.zeros((), dtype=torch.float32, device="meta"), "m": f32(), "v": f32()}
    return fn, (params, state, *inputs, meta(*tgt))
