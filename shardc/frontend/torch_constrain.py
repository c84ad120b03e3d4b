"""`shardc.constrain(x, P(...))` for torch: an identity custom op that torch.export and make_fx
keep, carrying the spec as text; the torch frontend turns it into a sharding constraint."""
from __future__ import annotations

import json

import torch


@torch.library.custom_op("shardc::constrain", mutates_args=())
def constrain_op(x: torch.Tensor, spec: str) -> torch.Tensor:
    return x.clone()


@constrain_op.register_fake
def _(x, spec):
    return torch.empty_like(x)


class Constrain(torch.autograd.Function):
    """The op with its gradient (passed through untouched); torch.func.grad traces through it."""

    @staticmethod
    def forward(x, spec):
        return constrain_op(x, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def encode(spec) -> str:
    return json.dumps([list(e) if isinstance(e, tuple) else e for e in spec])


def decode(text: str) -> tuple:
    return tuple(tuple(e) if isinstance(e, list) else e for e in json.loads(text))


def constraint_rule(e, x, spec: str):
    """The IR side: a same-shape reshape named constraint_<k> (as the JAX frontend does)."""
    from ..ir import Op
    constraints = e.__dict__.setdefault("constraints", {})
    name = f"constraint_{len(constraints)}"
    constraints[name] = decode(spec)
    return e.add(Op.RESHAPE, [x], name=name, shape=x.shape)
