"""shardc.torch.parallelize and shardc.jax.jit give the unsharded model's outputs."""
import numpy as np
import torch

import shardc
import shardc.jax
import shardc.torch
from shardc import Mesh, P, models
from shardc.testing import assert_close


def test_parallelize_matches_the_module(torch_pool):
    m = models.get("gpt2:tiny")
    module = m.torch_module(0)
    (ids,) = m.torch_inputs(4, 1)
    par = shardc.torch.parallelize(module, Mesh(dp=2, tp=2), {"ids": P("dp"), **m.tp_specs()}, world=torch_pool)
    out = par(ids)
    assert isinstance(out, torch.Tensor)
    assert_close(out.detach().numpy(), module(ids).detach().numpy())
    par(ids)
    assert len(par._compiled) == 1  # compiled once per input signature


def test_parallelize_with_a_plan(torch_pool):
    m = models.get("mlp:tiny")
    module = m.torch_module(0)
    (x,) = m.torch_inputs(8, 1)
    out = shardc.torch.parallelize(module, Mesh(dp=4), "fsdp", world=torch_pool)(x)
    assert_close(out.detach().numpy(), module(x).detach().numpy())


def test_jax_jit_matches_jax():
    import jax
    m = models.get("llama:tiny")
    params = m.jax_params(0)
    (ids,) = m.jax_inputs(4, 1)
    f = shardc.jax.jit(m.jax_forward, mesh=Mesh(dp=2, tp=2), in_specs=m.tp_specs(), plan="dp")  # globs
    out = f(params, ids)
    assert isinstance(out, jax.Array)
    assert_close(np.asarray(out), np.asarray(m.jax_forward(params, ids)))
    f(params, ids)
    assert len(f.compiled) == 1


def test_jax_jit_takes_spec_pytrees():
    import jax.numpy as jnp

    def mlp(w, x):
        return {"y": jnp.tanh(x @ w["a"]) @ w["b"]}

    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((8, 16)).astype(np.float32), "b": rng.standard_normal((16, 4)).astype(np.float32)}
    x = rng.standard_normal((6, 8)).astype(np.float32)
    # in_specs: one entry per argument, a P (or None) per array; out_specs by name
    f = shardc.jax.jit(mlp, mesh=Mesh(tp=4), in_specs=({"a": P(None, "tp"), "b": P("tp", None)}, None),
                       out_specs={"y": P()})
    out = f(w, x)
    assert set(out) == {"y"}
    assert_close(np.asarray(out["y"]), np.asarray(mlp(w, x)["y"]))
    (g, exe), = f.compiled.values()
    assert [c.kind for c in exe.prog.collectives] == ["all_reduce"]


def test_torch_compile_backend(torch_pool):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    torch.manual_seed(0)
    model, x = Net(), torch.randn(6, 8)
    torch._dynamo.reset()
    specs = {"up.weight": P("tp", None), "up.bias": P("tp"), "*down.weight": P(None, "tp"), "x": P("dp")}
    inner = shardc.torch.backend(Mesh(dp=2, tp=2), specs, world=torch_pool)
    made = []

    def backend(gm, example_inputs):
        made.append(inner(gm, example_inputs))
        return made[-1]

    out = torch.compile(model, backend=backend)(x)
    assert_close(out.detach().numpy(), model(x).detach().numpy())
    (run,) = made
    prog = run.executable.prog
    assert prog.sharding_of("params['up.weight']").spec() == P("tp", None)
    assert [c.kind for c in prog.collectives] == ["all_reduce"]  # Megatron: one, after down
