"""Folding a captured N-layer graph into a repeated block (ir/fold.py, issue 14 item 2): HF-style
torch models and a JAX Python loop fold, partition once per block and simulate the capture; a
lax.scan over stacked weights folds too; a graph whose layers differ is left as it is, with the node that differs named."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.errors import IRError
from shardc.models import hf_style as H
from shardc.partition.plans import is_state

SMALL = H.Cfg(vocab=32, d=32, n_head=2, n_kv_head=2, n_layer=6, seq=8, d_ff=64)


@functools.lru_cache(maxsize=None)
def captured(family: str, train: bool, c: H.Cfg = SMALL):
    if train:
        fn, args = H.sgd_step(family, c, 4)
        return shardc.from_torch(fn, args, capture="make_fx"), args
    args = (H.ids(c, 4),)
    return shardc.from_torch(H.build(family, c), args), args


def _specs(g, family):
    specs = H.megatron_specs(family)
    specs.update({p.name: P("dp") for p in g.inputs if not is_state(g, p) and p.rank})
    return specs


@pytest.mark.parametrize("family,train,c", [pytest.param("llama", False, SMALL, marks=pytest.mark.slow),
                                            ("llama", True, SMALL), ("gpt2", False, SMALL)])
def test_hf_style_folds_and_simulates(family, train, c):
    """6 layers → layers 0, 1, 4, 5 held, layer 1 standing for 1..3; evaluate is the capture's
    bit for bit; partitioned once per block on dp2 x tp2, simulate equals the capture."""
    g, args = captured(family, train, c)
    f = shardc.fold(g)
    assert f.repeat is not None and f.repeat.depth == 6 and f.repeat.copies == 3, getattr(f, "fold_note", "")
    assert len(f.nodes) < 0.75 * len(g.nodes) and "folded" in f.fold_note
    assert f.input_names == [n for n in g.input_names if ".layers.2." not in n and ".layers.3." not in n] \
        or len(f.inputs) < len(g.inputs)
    ref = g.evaluate(*args)
    for a, b in zip(f.evaluate(*args), ref):
        np.testing.assert_array_equal(a, b)
    prog = shardc.partition(f, Mesh(dp=2, tp=2), _specs(g, family))
    assert prog.repeat is not None, prog.notes
    assert prog.repeat.copies == 3 and any(c.copies == 3 for c in prog.collectives)
    assert len(prog.unrolled().collectives) == sum(c.copies for c in prog.collectives)
    for a, b in zip(prog.simulate(*args), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gpt2_training_step_folds_and_partitions_whole():
    """GPT-2's SGD step (tied embeddings) folds exactly, but after the collective CSE its
    per-device layers are not the same computation (an all-reduce merged into a neighbouring
    layer's stretch), so partition partitions the capture, says so, and simulates it."""
    g, args = captured("gpt2", True)
    f = shardc.fold(g)
    assert f.repeat is not None and f.repeat.copies == 3, getattr(f, "fold_note", "")
    ref = g.evaluate(*args)
    for a, b in zip(f.evaluate(*args), ref):
        np.testing.assert_array_equal(a, b)
    prog = shardc.partition(f, Mesh(dp=2, tp=2), _specs(g, "gpt2"))
    assert prog.repeat is None and "partitioned whole" in prog.notes[-1], prog.notes
    for a, b in zip(prog.simulate(*args), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _norm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w


def _jax_model(params, x):
    """A Python loop over a list of per-layer weights (how a JAX user writes a stack)."""
    for layer in params["layers"]:
        x = x + jax.nn.gelu(_norm(x, layer["norm"]) @ layer["w1"]) @ layer["w2"]
    return jnp.sum(_norm(x, params["norm"]) @ params["head"])


def _jax_params(depth, d=16, ff=32, seed=0):
    rng = np.random.default_rng(seed)
    w = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32) / np.sqrt(s[0]))
    layers = [{"norm": jnp.asarray(1 + 0.1 * rng.standard_normal(d).astype(np.float32)), "w1": w(d, ff),
               "w2": w(ff, d)} for _ in range(depth)]
    return {"layers": layers, "norm": jnp.ones(d, jnp.float32), "head": w(d, 4)}


@pytest.mark.parametrize("train", [False, True], ids=["forward", "sgd"])
def test_jax_python_loop_folds(train, monkeypatch):
    params = _jax_params(7)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 16)).astype(np.float32))
    fn = _jax_model
    if train:
        def fn(params, x):
            loss, grads = jax.value_and_grad(_jax_model)(params, x)
            return loss, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    g = shardc.from_jax(fn, params, x)
    f = shardc.from_jax(fn, params, x, fold=True)
    assert f.repeat is not None and f.repeat.depth == 7, getattr(f, "fold_note", "")
    ref = g.evaluate(params, x)
    for a, b in zip(f.evaluate(params, x), ref):
        np.testing.assert_array_equal(a, b)
    specs = {n: P(None, "tp") for n in g.input_names if n.endswith("['w1']")}   # every layer's, by name
    specs.update({n: P("tp", None) for n in g.input_names if n.endswith("['w2']")})
    specs["x"] = P("dp")
    prog = shardc.partition(f, Mesh(dp=2, tp=2), specs)
    with pytest.raises(shardc.ShardingError, match="differs from the spec"):
        shardc.partition(f, Mesh(dp=2, tp=2), {**specs, "params['layers'][3]['w1']": P("tp", None)})
    if not train:   # where the partitioner lowers the folded layers differently, the capture is partitioned
        from shardc.partition.program import SpmdProgram

        def not_repeating(self):
            raise IRError("layers 1 and 2 are not the same computation (as the test pretends)")
        monkeypatch.setattr(SpmdProgram, "unrolled", not_repeating)
        whole = shardc.partition(f, Mesh(dp=2, tp=2), specs)
        monkeypatch.undo()
        assert whole.repeat is None and "partitioned whole" in whole.notes[-1]
        for a, b in zip(whole.simulate(params, x), ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert prog.repeat.copies == 4
    for a, b in zip(prog.simulate(params, x), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _scan_model(params, x):
    """The same model as a lax.scan over stacked weights (MaxText's layout)."""
    def layer(x, w):
        return x + jax.nn.gelu(_norm(x, w["norm"]) @ w["w1"]) @ w["w2"], None
    x, _ = jax.lax.scan(layer, x, params["layers"])
    return jnp.sum(_norm(x, params["norm"]) @ params["head"])


def test_jax_scan_over_stacked_weights_folds():
    """A lax.scan's SGD step: each stacked weight split into one input per layer, folded; the
    folded graph takes and returns the stacked arrays, and simulates the capture on dp2 x tp2."""
    p = _jax_params(6)
    params = {"layers": jax.tree_util.tree_map(lambda *ws: jnp.stack(ws), *p["layers"]),
              "norm": p["norm"], "head": p["head"]}
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8, 16)).astype(np.float32))

    def step(params, x):
        loss, grads = jax.value_and_grad(_scan_model)(params, x)
        return loss, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    g = shardc.from_jax(step, params, x)
    f = shardc.from_jax(step, params, x, fold=True)
    assert f.repeat is not None and f.repeat.depth == 6, getattr(f, "fold_note", "")
    assert "params['layers']['w1'][layers.1.]" in f.input_names and len(f.nodes) < 0.6 * len(g.nodes)
    ref = g.evaluate(params, x)
    got = f.evaluate(params, x)
    assert [a.shape for a in got] == [a.shape for a in ref]   # stacked again: [6, 16, 32] ...
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # specs name the stacked arrays, as for the capture (each layer's piece gets the rest)
    specs = {"params['layers']['w1']": P(None, None, "tp"), "params['layers']['w2']": P(None, "tp", None), "x": P("dp")}
    prog = shardc.partition(f, Mesh(dp=2, tp=2), specs)
    assert prog.repeat.copies == 3
    assert prog.sharding_of("params['layers']['w1'][layers.1.]").used_axes == ("tp",)
    with pytest.raises(shardc.ShardingError, match="stacked layers"):
        shardc.partition(f, Mesh(dp=2, tp=2), {"params['layers']['w1']": P("tp")})
    for a, b in zip(prog.simulate(params, x), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_different_layer_is_not_folded():
    """One layer computes something else (an extra scale in layer 3): not folded, and the note
    names the layer and the node."""
    def model(params, x):
        for i, layer in enumerate(params["layers"]):
            h = jax.nn.gelu(x @ layer["w1"])
            x = x + (h * 2.0 if i == 3 else h) @ layer["w2"]
        return x
    params = {"layers": _jax_params(6)["layers"]}
    x = jnp.ones((4, 16), jnp.float32)
    g = shardc.from_jax(model, params, x, fold=True)
    assert g.repeat is None
    assert "layer 3's constant" in g.fold_note and "is not layer 1's" in g.fold_note, g.fold_note
    few = shardc.from_jax(model, {"layers": params["layers"][:4]}, x, fold=True)
    assert few.repeat is None and "4 layers, fewer than 5" in few.fold_note
    plain = shardc.fold(shardc.from_jax(lambda a, b: a @ b, x, x.T))
    assert plain.repeat is None and "no input is a layer's parameter" in plain.fold_note


def test_zoo_torch_capture_repeats():
    """capture(repeat=True) with the torch frontend: the whole model captured and folded; its
    evaluate takes the model's arguments and gives the unfolded capture's values."""
    from shardc import models
    m = models.get("llama:tiny", n_layer=5)
    g, args = m.capture(False, "torch", 2, repeat=True)
    full, _ = m.capture(False, "torch", 2)
    assert g.repeat.depth == 5 and g.repeat.copies == 2
    np.testing.assert_array_equal(g.evaluate(*args)[0], full.evaluate(*args)[0])
