"""Training through the integrations: three optimizer steps through shardc.torch.parallelize,
the torch.compile backend and shardc.jax.jit under jax.grad give the unsharded loop's parameters
(f32, rel. error < 1e-5); forward and backward both run partitioned over dp=2 x tp=2."""
import copy
import warnings

import numpy as np
import pytest
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
    print(f"max rel. error of the parameters after {STEPS} steps: {max(errs.values()):.2e}")
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


def _jax_mlp(params, x):
    import jax.numpy as jnp
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + x


def _jax_adam(loss, params, batches, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    """A hand-written Adam (no optax): 3 steps of jax.grad(loss) and the update."""
    import jax
    import jax.numpy as jnp
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    v = {k: jnp.zeros_like(p) for k, p in params.items()}
    for t, (x, y) in enumerate(batches, start=1):
        grads = jax.grad(loss)(params, x, y)
        m = {k: b1 * m[k] + (1 - b1) * grads[k] for k in params}
        v = {k: b2 * v[k] + (1 - b2) * grads[k] ** 2 for k in params}
        params = {k: params[k] - lr * (m[k] / (1 - b1 ** t)) / (jnp.sqrt(v[k] / (1 - b2 ** t)) + eps)
                  for k in params}
    return params


def test_jax_jit_under_grad_trains_like_jax():
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((8, 16)).astype(np.float32) * 0.3,
              "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
              "w2": rng.standard_normal((16, 8)).astype(np.float32) * 0.3}
    batches = [(rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32))
               for _ in range(STEPS)]
    # jax.jit-style prefix specs: a spec per parameter in the first argument, P("dp") for all of x
    sharded = shardc.jax.jit(_jax_mlp, mesh=MESH, in_specs=({"w1": P(None, "tp"), "b1": P("tp"), "w2": P("tp", None)},
                                                            P("dp")))

    def loss_of(f):
        return lambda p, x, y: jnp.mean((f(p, x) - y) ** 2)

    want = _jax_adam(loss_of(_jax_mlp), params, batches)
    got = _jax_adam(loss_of(sharded), params, batches)
    errs = {k: rel_err(np.asarray(got[k]), np.asarray(want[k])) for k in params}
    print(f"max rel. error of the parameters after {STEPS} steps: {max(errs.values()):.2e}")
    assert max(errs.values()) < 1e-5, errs
    assert max(rel_err(np.asarray(want[k]), params[k]) for k in params) > 1e-3  # it trained
    assert len(sharded.compiled) == 1
    ((sig, _),) = sharded.backward_compiled.values()
    g, exe, _ = sig.vjp  # the backward program, pinned to the forward's shardings
    prog = exe.prog
    # gradients come in the arguments' leaf order (b1, w1, w2, x): d w1 is split as w1
    assert [prog.sharding_of(n).spec() for n in g.output_names[:3]] == [P("tp"), P(None, "tp"), P("tp", None)]
    assert any("dp" in c.axes and c.kind in ("all_reduce", "reduce_scatter") for c in prog.collectives)


def test_jax_jit_prefix_specs_cover_subtrees():
    import jax.numpy as jnp
    rng = np.random.default_rng(1)
    params = {"a": rng.standard_normal((8, 8)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32)}
    x = rng.standard_normal((4, 8)).astype(np.float32)
    f = shardc.jax.jit(lambda p, x: jnp.tanh(x @ p["a"] + p["b"]), mesh=MESH, in_specs=(None, P("dp")))
    np.testing.assert_allclose(np.asarray(f(params, x)), np.tanh(x @ params["a"] + params["b"]), rtol=1e-5, atol=1e-6)
    ((g, exe),) = f.compiled.values()
    assert exe.prog.sharding_of("x").spec()[0] == "dp"
    f2 = shardc.jax.jit(lambda p, x: x @ p["a"], mesh=MESH, in_specs=(P(), None))  # P() replicates a whole dict
    f2(params, x)
    ((g2, exe2),) = f2.compiled.values()
    assert all(not s.used_axes for p, s in zip(g2.inputs, exe2.prog.input_shardings) if p.name.startswith("p["))
    import jax
    with pytest.raises(shardc.Error, match="outside jax.jit"):  # no values to run under jax.jit: refused
        jax.jit(f)(params, x)
    with pytest.raises(shardc.ShardingError, match="not a prefix"):
        shardc.jax.jit(lambda p, x: x, mesh=MESH, in_specs=(None, None, None))(params, x)


def test_parallelize_trains_with_the_fsdp_plan(torch_pool):
    batches = _batches()
    want = _train(ref := copy.deepcopy(_MODEL), ref, batches)
    model = copy.deepcopy(_MODEL)
    par = shardc.torch.parallelize(model, Mesh(dp=4), "fsdp", world=torch_pool)
    _assert_same_params(_train(model, par, batches), want)
    runner, = par._runners.values()
    bwd = next(iter(runner.backwards.values()))[0].prog
    assert bwd.sharding_of("out['up.weight']").dims[0].axes == ("dp",)  # ZeRO-3: gradients stay split
    assert "reduce_scatter" in {c.kind for c in bwd.collectives}


class _Broken(MLP):
    def forward(self, x):
        h = torch.tanh(self.up(x))
        torch._dynamo.graph_break()  # two dynamo graphs, each with some of the parameters
        return self.norm(x + self.down(h))


def test_torch_compile_backend_across_a_graph_break(torch_pool):
    torch.manual_seed(0)
    model, (x, y) = _Broken(), _batches(1)[0]
    ref = copy.deepcopy(model)
    ((ref(x) - y) ** 2).mean().backward()
    torch._dynamo.reset()
    backend = shardc.torch.backend(MESH, MEGATRON, world=torch_pool)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ((torch.compile(model, backend=backend)(x) - y) ** 2).mean().backward()
    said = " ".join(str(w.message) for w in seen)  # each graph names the specs it leaves to the other
    assert "['down.weight'] name nothing in dynamo graph 'dynamo_graph_1'" in said
    assert "['up.weight', 'up.bias'] name nothing in dynamo graph 'dynamo_graph_2'" in said
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert rel_err(p.grad.numpy(), q.grad.numpy()) < 1e-5, n


def test_parallelized_block_passes_gradients_to_its_input(torch_pool):
    """A parallelized block inside a bigger model: its input's gradient flows to the layers before it."""
    torch.manual_seed(0)
    pre, block = torch.nn.Linear(8, 8), copy.deepcopy(_MODEL)
    ref_pre, ref_block = copy.deepcopy(pre), copy.deepcopy(block)
    par = shardc.torch.parallelize(block, MESH, MEGATRON, world=torch_pool)
    x, y = _batches(1)[0]
    ((par(pre(x)) - y) ** 2).mean().backward()
    ((ref_block(ref_pre(x)) - y) ** 2).mean().backward()
    for p, q in zip([*pre.parameters(), *block.parameters()], [*ref_pre.parameters(), *ref_block.parameters()]):
        assert rel_err(p.grad.numpy(), q.grad.numpy()) < 1e-5
    runner, = par._runners.values()
    bwd = next(iter(runner.backwards.values()))[0].prog
    assert bwd.sharding_of("out['x']").spec()[0] == "dp"  # the input's gradient split as the input
