"""`shardc.pipeline_split(x)` for torch: an identity custom op that torch.export and make_fx keep
(as torch.distributed.pipelining's pipe_split, but on a value); the torch frontend makes it a
same-shape reshape named pipeline_split_<k>, where partition(..., pipeline=...) starts a stage."""
from __future__ import annotations

import torch


@torch.library.custom_op("shardc::pipeline_split", mutates_args=())
def pipeline_split_op(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@pipeline_split_op.register_fake
def _(x):
    return torch.empty_like(x)


class PipelineSplit(torch.autograd.Function):
    """The marker with its gradient passed through untouched (torch.func.grad traces through it)."""

    @staticmethod
    def forward(x):
        return pipeline_split_op(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad


def pipeline_split_rule(e, x):
    from ..ir import Op
    k = e.__dict__.setdefault("pipeline_splits", 0)
    e.__dict__["pipeline_splits"] = k + 1
    return e.add(Op.RESHAPE, [x], name=f"pipeline_split_{k}", shape=x.shape)
