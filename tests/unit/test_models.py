"""The model zoo: torch and JAX twins agree (forward, loss, SGD/Adam steps), capture works
(torch.export, jax.make_jaxpr), bf16 runs, and the registry rejects bad names clearly."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from shardc import models
from shardc.errors import Error
from zoo_cases import ZOO as NAMES


def rel_err(got, want) -> float:
    """max |got - want| / max |want|, in float64."""
    got, want = _np(got), _np(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def norm_err(got, want) -> float:
    """||got - want|| / ||want|| (for bf16, where single elements may differ by an ulp or two)."""
    got, want = _np(got), _np(want)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(x).astype(np.float64)  # bf16 arrays come out as ml_dtypes.bfloat16


@pytest.fixture(scope="module", params=NAMES)
def twin(request):
    """(ModelDef, float32 torch module, jax params) for one tiny model, shared across tests."""
    m = models.get(request.param)
    return m, m.torch_module(seed=0), m.jax_params(seed=0)


# ----------------------------------------------------------------------------- params and data
def test_param_names_shapes_and_values_match(twin):
    m, module, params = twin
    torch_shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    assert torch_shapes == m.param_shapes()
    assert list(torch_shapes) == list(m.param_shapes())          # same order as well
    assert {n: tuple(a.shape) for n, a in params.items()} == torch_shapes
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert not list(module.buffers())                              # params are the whole state
    converted = models.torch_params_to_jax(module)
    for n in params:
        np.testing.assert_array_equal(np.asarray(converted[n]), np.asarray(params[n]))
    assert sum(p.numel() for p in module.parameters()) == m.num_params()


def test_seeds_are_deterministic_and_distinct(twin):
    m, module, _ = twin
    again = m.torch_module(seed=0)
    other = m.torch_module(seed=1)
    for (n, a), b, c in zip(module.named_parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b), n
        assert not torch.equal(a, c), n
    assert all(torch.equal(a, b) for a, b in zip(m.torch_inputs(seed=3), m.torch_inputs(seed=3)))
    assert not torch.equal(m.torch_inputs(seed=3)[0], m.torch_inputs(seed=4)[0])


def test_inputs_and_targets_identical_across_frameworks(twin):
    m, _, _ = twin
    for t, j in zip(m.torch_inputs(batch=3, seed=5) + (m.torch_targets(batch=3, seed=5),),
                    m.jax_inputs(batch=3, seed=5) + (m.jax_targets(batch=3, seed=5),)):
        assert t.shape[0] == 3
        np.testing.assert_array_equal(t.numpy(), np.asarray(j))
        if t.is_floating_point():
            assert t.dtype == torch.float32 and j.dtype == jnp.float32
        else:
            assert t.dtype == torch.int64 and j.dtype == jnp.int32


# ------------------------------------------------------------------------------ forward, loss
def test_forward_twins_agree(twin):
    m, module, params = twin
    t_out = module(*m.torch_inputs(seed=1))
    j_out = m.jax_forward(params, *m.jax_inputs(seed=1))
    assert tuple(t_out.shape) == j_out.shape
    assert rel_err(j_out, t_out) < 1e-5
    assert float(t_out.detach().std()) > 0.05  # not a degenerate, near-constant output


def test_loss_twins_agree(twin):
    m, module, params = twin
    t_loss = m.torch_loss(module, *m.torch_inputs(seed=2), m.torch_targets(seed=2))
    j_loss = m.jax_loss(params, *m.jax_inputs(seed=2), m.jax_targets(seed=2))
    assert t_loss.shape == () and j_loss.shape == ()
    assert rel_err(j_loss, t_loss) < 1e-5
    # the keyword form is the same call
    again = m.torch_loss(module, *m.torch_inputs(seed=2), targets=m.torch_targets(seed=2))
    assert torch.equal(again, t_loss)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoders_are_causal(name):
    m = models.get(name)
    module = m.torch_module()
    (ids,) = m.torch_inputs()
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % m.config.vocab_size
    a, b = module(ids), module(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1])


# ---------------------------------------------------------------------------------- training
def _assert_params_close(t_params, j_params, tol, mask=None):
    assert set(t_params) == set(j_params)
    for n in t_params:
        t, j = _np(t_params[n]), _np(j_params[n])
        if mask is not None:
            t, j = t[mask[n]], j[mask[n]]
        assert rel_err(j, t) < tol, n


def test_sgd_step_twins_agree(twin):
    m, module, params = twin
    t_fn, t_args = m.torch_train_step("sgd", lr=0.1)
    j_fn, j_args = m.jax_train_step("sgd", lr=0.1)
    t_loss, t_new = t_fn(*t_args(module, batch=2, seed=0))
    j_loss, j_new = jax.jit(j_fn)(*j_args(params, batch=2, seed=0))
    assert rel_err(j_loss, t_loss) < 1e-5
    _assert_params_close(t_new, j_new, 1e-5)
    # the functional step is torch.optim.SGD's step
    ref = m.torch_module(seed=0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    m.torch_loss(ref, *m.torch_inputs(), m.torch_targets()).backward()
    opt.step()
    _assert_params_close(t_new, dict(ref.named_parameters()), 1e-6)


def test_adam_step_twins_agree(twin):
    m, module, params = twin
    lr = 1e-2
    t_fn, t_args = m.torch_train_step("adam", lr=lr)
    j_fn, j_args = m.jax_train_step("adam", lr=lr)
    args = t_args(module, batch=2, seed=0)
    t_loss, t_new, t_state = t_fn(*args)
    j_loss, j_new, j_state = jax.jit(j_fn)(*j_args(params, batch=2, seed=0))
    assert rel_err(j_loss, t_loss) < 1e-5
    assert float(t_state["step"]) == float(j_state["step"]) == 1.0
    _assert_params_close(t_state["m"], j_state["m"], 1e-5)
    _assert_params_close(t_state["v"], j_state["v"], 1e-5)
    # Adam's first step is ~lr * sign(grad): where the true gradient is 0 (e.g. GPT-2's key bias,
    # to which softmax is invariant) it amplifies rounding noise, so compare where |grad| > 1e-6.
    # (Embedding rows of tokens absent from the batch have zero gradient too.)
    mask = {n: np.abs(_np(g)) > 1e-6 for n, g in t_state["m"].items()}
    assert sum(k.sum() for k in mask.values()) > 0.75 * m.num_params()
    _assert_params_close(t_new, j_new, 1e-5, mask)
    # the functional step is torch.optim.Adam's step
    ref = m.torch_module(seed=0)
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    m.torch_loss(ref, *m.torch_inputs(), m.torch_targets()).backward()
    opt.step()
    _assert_params_close(t_new, dict(ref.named_parameters()), 1e-5, mask)
    # a second step consumes the returned state
    loss2, _, state2 = t_fn(t_new, t_state, *args[2:])
    assert float(state2["step"]) == 2.0 and float(loss2) < float(t_loss)


def test_train_step_rejects_unknown_optimizer():
    with pytest.raises(Error, match="sgd, adam"):
        models.get("mlp").torch_train_step("lion")
    with pytest.raises(Error, match="lion"):
        models.get("mlp").jax_train_step("lion")


# ----------------------------------------------------------------------------------- capture
def test_torch_export(twin):
    m, module, _ = twin
    inputs = m.torch_inputs()
    ep = torch.export.export(module, inputs)
    assert {n for n in ep.state_dict} == set(m.param_shapes())
    torch.testing.assert_close(ep.module()(*inputs), module(*inputs), rtol=0, atol=0)


def test_make_jaxpr(twin):
    m, _, params = twin
    jaxpr = jax.make_jaxpr(m.jax_forward)(params, *m.jax_inputs())
    assert len(jaxpr.jaxpr.invars) == len(params) + len(m.jax_inputs())
    step, args = m.jax_train_step("adam")
    jax.make_jaxpr(step)(*args(params))


# -------------------------------------------------------------------------------------- bf16
def test_bf16_forward_runs_in_both_and_agrees(twin):
    m, _, _ = twin
    module = m.torch_module(seed=0, dtype=torch.bfloat16)
    params = m.jax_params(seed=0, dtype=jnp.bfloat16)
    t_out = module(*m.torch_inputs(dtype=torch.bfloat16))
    j_out = m.jax_forward(params, *m.jax_inputs(dtype=jnp.bfloat16))
    assert t_out.dtype == torch.bfloat16 and j_out.dtype == jnp.bfloat16
    assert norm_err(j_out, t_out) < 2e-2
    f32 = m.torch_module(seed=0)(*m.torch_inputs())
    assert norm_err(t_out, f32) < 2e-2
    # train steps keep bf16 params bf16
    step, step_args = m.jax_train_step("sgd")
    _, new = jax.jit(step)(*step_args(params, dtype=jnp.bfloat16))
    assert all(p.dtype == jnp.bfloat16 for p in new.values())


# --------------------------------------------------------------------------------------- MoE
def _moe_reference(cfg, params, x):
    """Token-by-token numpy MoE: the dispatch rules written as plain loops."""
    p = {n: np.asarray(a, dtype=np.float64) for n, a in params.items()}
    b, s, d = x.shape
    xt = np.asarray(x, dtype=np.float64).reshape(b * s, d)
    n_tok, k, cap = b * s, cfg.top_k, cfg.capacity(b * s)
    logits = xt @ p["layers.0.router.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    choice = np.argsort(-probs, axis=-1)[:, :k]
    fill = [0] * cfg.n_experts
    y = np.zeros_like(xt)
    dropped = 0
    for j in range(k):            # first choices claim capacity before second choices
        for t in range(n_tok):
            e = choice[t, j]
            if fill[e] == cap:
                dropped += 1
                continue
            fill[e] += 1
            h = xt[t] @ p["layers.0.w_in"][e]
            h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))  # exact GELU
            w = probs[t, e] / probs[t, choice[t]].sum()
            y[t] += w * (h @ p["layers.0.w_out"][e])
    return (xt + y).reshape(b, s, d), dropped


def test_moe_matches_loop_reference_and_drops_tokens():
    m = models.get("moe")
    params = m.jax_params(seed=0)
    (x,) = m.jax_inputs(seed=0)
    want, dropped = _moe_reference(m.config, params, np.asarray(x))
    assert dropped > 0  # the tiny config's capacity is tight enough to exercise dropping
    assert rel_err(m.jax_forward(params, x), want) < 1e-5
    assert rel_err(m.torch_module(seed=0)(*m.torch_inputs(seed=0)), want) < 1e-5


def test_moe_capacity():
    cfg = models.get("moe", n_experts=8, top_k=2, capacity_factor=1.25).config
    assert cfg.capacity(1024) == 320
    assert cfg.capacity(3) == 1
    assert models.get("moe", capacity_factor=100.0).config.capacity(32) == 32


# ---------------------------------------------------------------------------------- registry
def test_registry_and_overrides():
    assert set(models.ZOO) == set(NAMES)
    assert all(d.size == "tiny" and d.name == n for n, d in models.ZOO.items())
    m = models.get("gpt2:tiny")
    assert (m.name, m.size, m.config.n_layer) == ("gpt2", "tiny", 2)
    one = models.get("gpt2", n_layer=1)
    assert one.config.n_layer == 1 and one.size == "tiny"
    assert "h.1.ln_1.weight" not in one.param_shapes()
    with pytest.raises(Exception):
        one.config.n_layer = 3  # frozen
    assert models.get("llama:small", seq_len=128).config.seq_len == 128


@pytest.mark.parametrize("spec, fields, words", [
    ("gpt5", {}, ["gpt5", "gpt2", "gpt3", "llama", "llama3", "mlp", "moe"]),  # gpt3 is a preset now
    ("gpt2:huge", {}, ["huge", "tiny", "small"]),
    ("gpt2", {"n_layers": 3}, ["n_layers", "n_layer", "vocab_size"]),
    ("gpt2", {"n_head": 5}, ["multiple of n_head"]),
    ("llama", {"n_kv_head": 3}, ["multiple of n_kv_head"]),
])
def test_get_errors_name_the_fault_and_the_choices(spec, fields, words):
    with pytest.raises(Error) as info:
        models.get(spec, **fields)
    for w in words:
        assert w in str(info.value)


def test_small_configs_have_gpt2_small_scale():
    gpt2 = models.get("gpt2:small")
    assert gpt2.num_params() == 124_439_808  # GPT-2 small with the tied head, as published
    meta = gpt2.torch_meta_module()
    assert sum(p.numel() for p in meta.parameters()) == 124_439_808
    assert all(p.is_meta for p in meta.parameters())
    assert 100e6 < models.get("llama:small").num_params() < 150e6
    assert models.get("moe:small").num_params() > 50e6
    assert models.get("mlp:small").num_params() > 30e6


def test_import_does_not_import_frameworks():
    code = "import sys, shardc.models as m; m.get('gpt2:small'); print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__file__.rsplit("/tests/", 1)[0]).stdout
    assert out.split() == ["False", "False"]
