"""Functional training steps (SGD, Adam, AdamW) for the torch and JAX twins.

A step is a pure function of its arguments, so it can be captured and partitioned like a forward:

    sgd:          fn(params, *inputs, targets)            -> (loss, new_params)
    adam, adamw:  fn(params, opt_state, *inputs, targets) -> (loss, new_params, new_opt_state)

params is a flat {name: tensor} dict; opt_state is {"step": scalar f32, "m": {name: t}, "v": {name: t}}.
Both twins use the one update in optim.py.
"""

from __future__ import annotations

from .optim import ADAM_B1, ADAM_B2, ADAM_EPS, OPTIMIZERS, check_optimizer, init_state, update  # noqa: F401


# ---------------------------------------------------------------------------------------- torch
def torch_train_step(model_def, optimizer="sgd", lr=1e-3):
    import torch
    from torch.func import functional_call, grad_and_value

    from . import torch_models

    check_optimizer(optimizer)
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
            return loss, update("sgd", params, grads, {}, lr, torch.sqrt)[0]

        def sgd_args(module, batch=2, seed=0, dtype=None):
            return (_detached(module),) + model_def.torch_inputs(batch, seed, dtype) + (
                model_def.torch_targets(batch, seed, dtype),)

        return sgd_step, sgd_args

    def adam_step(params, opt_state, *args):
        grads, loss = grads_and_loss(params, args)
        return (loss,) + update(optimizer, params, grads, opt_state, lr, torch.sqrt)

    def adam_args(module, batch=2, seed=0, dtype=None):
        params = _detached(module)
        state = init_state(optimizer, params, torch.zeros_like, torch.zeros((), dtype=torch.float32))
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

    check_optimizer(optimizer)
    cfg = model_def.config

    def loss_fn(params, inputs, targets):
        return jax_models.loss(cfg, jax_models.forward(cfg, params, *inputs), targets)

    def loss_and_grads(params, args):
        *inputs, targets = args
        return jax.value_and_grad(loss_fn)(params, tuple(inputs), targets)

    if optimizer == "sgd":
        def sgd_step(params, *args):
            loss, grads = loss_and_grads(params, args)
            return loss, update("sgd", params, grads, {}, lr, jnp.sqrt)[0]

        def sgd_args(params, batch=2, seed=0, dtype=None):
            return (dict(params),) + model_def.jax_inputs(batch, seed, dtype) + (
                model_def.jax_targets(batch, seed, dtype),)

        return sgd_step, sgd_args

    def adam_step(params, opt_state, *args):
        loss, grads = loss_and_grads(params, args)
        return (loss,) + update(optimizer, params, grads, opt_state, lr, jnp.sqrt)

    def adam_args(params, batch=2, seed=0, dtype=None):
        state = init_state(optimizer, params, jnp.zeros_like, jnp.zeros((), dtype=jnp.float32))
        return (dict(params), state) + model_def.jax_inputs(batch, seed, dtype) + (
            model_def.jax_targets(batch, seed, dtype),)

    return adam_step, adam_args
