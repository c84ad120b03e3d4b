"""Functional training steps (SGD, Adam) for the torch and JAX twins.

A step is a pure function of its arguments, so it can be captured and partitioned like a forward:

    sgd:   fn(params, *inputs, targets)            -> (loss, new_params)
    adam:  fn(params, opt_state, *inputs, targets) -> (loss, new_params, new_opt_state)

params is a flat {name: tensor} dict; opt_state is {"step": scalar f32, "m": {name: t}, "v": {name: t}}.
Both twins use the same update formulas, written out below (Adam as in Kingma & Ba, with bias
correction; eps added after the square root as torch.optim.Adam does). The bias-correction
scalars are cast to the parameter dtype so bf16 params stay bf16 (JAX would promote otherwise).
"""

from __future__ import annotations

from shardc.errors import Error

OPTIMIZERS = ("sgd", "adam")
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def _check(optimizer):
    if optimizer not in OPTIMIZERS:
        raise Error(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


# ---------------------------------------------------------------------------------------- torch
def torch_train_step(model_def, optimizer="sgd", lr=1e-3):
    import torch
    from torch.func import functional_call, grad_and_value

    from . import torch_models

    _check(optimizer)
    cfg = model_def.config
    # A parameterless skeleton on the meta device: functional_call swaps in the params argument,
    # so the step closes over no real tensors.
    skeleton = torch_models.build(cfg, device="meta")

    def loss_fn(params, inputs, targets):
        return torch_models.loss(cfg, functional_call(skeleton, params, inputs), targets)

    def grads_and_loss(params, args):
        *inputs, targets = args
        return grad_and_value(loss_fn)(params, tuple(inputs), targets)

    if optimizer == "sgd":
        def sgd_step(params, *args):
            grads, loss = grads_and_loss(params, args)
            return loss, {n: p - lr * grads[n] for n, p in params.items()}

        def sgd_args(module, batch=2, seed=0, dtype=None):
            return (_detached(module),) + model_def.torch_inputs(batch, seed, dtype) + (
                model_def.torch_targets(batch, seed, dtype),)

        return sgd_step, sgd_args

    def adam_step(params, opt_state, *args):
        grads, loss = grads_and_loss(params, args)
        step = opt_state["step"] + 1
        new_params, new_m, new_v = {}, {}, {}
        for n, p in params.items():
            g = grads[n]
            m = ADAM_B1 * opt_state["m"][n] + (1 - ADAM_B1) * g
            v = ADAM_B2 * opt_state["v"][n] + (1 - ADAM_B2) * g * g
            bc1 = (1 - ADAM_B1 ** step).to(p.dtype)
            bc2 = (1 - ADAM_B2 ** step).to(p.dtype)
            new_params[n] = p - lr * (m / bc1) / (torch.sqrt(v / bc2) + ADAM_EPS)
            new_m[n], new_v[n] = m, v
        return loss, new_params, {"step": step, "m": new_m, "v": new_v}

    def adam_args(module, batch=2, seed=0, dtype=None):
        params = _detached(module)
        state = {"step": torch.zeros((), dtype=torch.float32),
                 "m": {n: torch.zeros_like(p) for n, p in params.items()},
                 "v": {n: torch.zeros_like(p) for n, p in params.items()}}
        return (params, state) + model_def.torch_inputs(batch, seed, dtype) + (
            model_def.torch_targets(batch, seed, dtype),)

    return adam_step, adam_args


def _detached(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ------------------------------------------------------------------------------------------ JAX
def jax_train_step(model_def, optimizer="sgd", lr=1e-3):
    import jax
    import jax.numpy as jnp

    from . import jax_models

    _check(optimizer)
    cfg = model_def.config

    def loss_fn(params, inputs, targets):
        return jax_models.loss(cfg, jax_models.forward(cfg, params, *inputs), targets)

    def loss_and_grads(params, args):
        *inputs, targets = args
        return jax.value_and_grad(loss_fn)(params, tuple(inputs), targets)

    if optimizer == "sgd":
        def sgd_step(params, *args):
            loss, grads = loss_and_grads(params, args)
            return loss, {n: p - lr * grads[n] for n, p in params.items()}

        def sgd_args(params, batch=2, seed=0, dtype=None):
            return (dict(params),) + model_def.jax_inputs(batch, seed, dtype) + (
                model_def.jax_targets(batch, seed, dtype),)

        return sgd_step, sgd_args

    def adam_step(params, opt_state, *args):
        loss, grads = loss_and_grads(params, args)
        step = opt_state["step"] + 1
        new_params, new_m, new_v = {}, {}, {}
        for n, p in params.items():
            g = grads[n]
            m = ADAM_B1 * opt_state["m"][n] + (1 - ADAM_B1) * g
            v = ADAM_B2 * opt_state["v"][n] + (1 - ADAM_B2) * g * g
            bc1 = (1 - ADAM_B1 ** step).astype(p.dtype)
            bc2 = (1 - ADAM_B2 ** step).astype(p.dtype)
            new_params[n] = p - lr * (m / bc1) / (jnp.sqrt(v / bc2) + ADAM_EPS)
            new_m[n], new_v[n] = m, v
        return loss, new_params, {"step": step, "m": new_m, "v": new_v}

    def adam_args(params, batch=2, seed=0, dtype=None):
        state = {"step": jnp.zeros((), dtype=jnp.float32),
                 "m": {n: jnp.zeros_like(p) for n, p in params.items()},
                 "v": {n: jnp.zeros_like(p) for n, p in params.items()}}
        return (dict(params), state) + model_def.jax_inputs(batch, seed, dtype) + (
            model_def.jax_targets(batch, seed, dtype),)

    return adam_step, adam_args
