"""An expert-parallel MoE layer (MaxText-style JAX: argsort, bincount, ragged_dot) on the real
engines: the per-device program with its ragged all-to-alls and grouped matmuls runs on 4 gloo
ranks and on JAX's CPU devices and equals the simulator and the unsharded numpy reference."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.ir.graph import to_numpy
from shardc.runtime import run

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

E, D, F, K = 4, 16, 8, 2


def moe(params, x):
    b, s, d = x.shape
    xt = x.reshape(b * s, d)
    w, ids = lax.top_k(jax.nn.softmax(xt @ params["router"].T, axis=-1), K)
    ids, w = ids.reshape(-1), (w / w.sum(-1, keepdims=True)).reshape(-1)
    order = jnp.argsort(ids)
    sizes = jnp.bincount(ids, length=E)
    xs = jnp.repeat(xt, K, axis=0)[order]
    h = jax.nn.silu(lax.ragged_dot(xs, params["w1"], sizes))
    y = lax.ragged_dot(h, params["w2"], sizes)[jnp.argsort(order)] * w[:, None]
    return y.reshape(b * s, K, d).sum(1).reshape(b, s, d)


@pytest.fixture(scope="module")
def program():
    r = np.random.default_rng(11)
    params = {"router": r.standard_normal((E, D)).astype(np.float32),
              "w1": (r.standard_normal((E, D, F)) / 4).astype(np.float32),
              "w2": (r.standard_normal((E, F, D)) / 3).astype(np.float32)}
    x = r.standard_normal((8, 2, D)).astype(np.float32)
    g = shardc.from_jax(moe, params, x)
    prog = shardc.partition(g, Mesh(ep=4), {"x": P("ep", None, None), "out": P("ep", None, None),
                                            "params['w1']": P("ep", None, None), "params['w2']": P("ep", None, None)})
    assert [c.kind for c in prog.collectives].count("ragged_all_to_all") == 2, prog.ledger()
    want = g.evaluate(params, x)[0]
    np.testing.assert_array_equal(prog.simulate(params, x)[0], want)
    return prog, (params, x), want


def test_expert_parallel_layer_on_torch_ranks(torch_pool, program):
    prog, args, want = program
    got = to_numpy(run(prog, *args, engine="torch", world=torch_pool, timeout_s=120)[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_expert_parallel_layer_on_jax_devices(program):
    prog, args, want = program
    got = np.asarray(run(prog, *args, engine="jax")[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
