"""The softmax statistics in one pass (codegen/fused_flash.py): a training step's attention
forward is one flash kernel per (batch·head, query block) that builds each scores tile once and
stores O with the row max and Σexp the backward reads; a looped row reduction computes max and
Σexp(y - max) in one loop (online log-sum-exp). Every kernel equals numpy of its IR nodes (Triton
interpreter, Pallas interpret mode) with blocks smaller than the sequence, which is not a
multiple of them, and the whole step equals evaluate."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, partition
from shardc.codegen import fused_flash
from shardc.ir import Op
from shardc.testing import rel_err
from test_codegen_pallas import export_all, run_and_check
from test_codegen_zoo import run_and_check_kernels

SEQ = 40  # three key blocks of 16 on Triton (the last one partial), five of 8 on Pallas


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 queries and keys for the interpreter's attention kernels, chunks of 16 for
    its looped rows: several blocks per row, so the running max and sum are rescaled."""
    from shardc.kernels import attention, rows
    choose = attention.choose
    monkeypatch.setattr(attention, "choose", lambda *a: {**choose(*a), "BM": 16, "BN": 16})
    monkeypatch.setattr(rows, "MAX_ROW_TILE", 16)


def _attention_step():
    """Σ (causal_attention(q, k, v)·Wo)² and its gradients, q, k and v cut from one [1, SEQ, 48]
    activation (GPT-2's fused QKV: one buffer read as queries and as keys), with the zoo's
    attention (scale, causal mask of -1e9, jax's softmax); dO reads O, as in a model."""
    import jax
    import jax.numpy as jnp
    from shardc.models.jax_models import causal_attention
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal((1, SEQ, 48)), jnp.float32)
    wo = jnp.asarray(rng.standard_normal((8, 8)) / 3, jnp.float32)

    def heads(t):
        return t.reshape(1, SEQ, 2, 8).transpose(0, 2, 1, 3)

    def loss(x):
        q, k, v = (heads(x[..., i * 16:(i + 1) * 16]) for i in range(3))
        return (jnp.einsum("bhqd,de->bhqe", causal_attention(q, k, v), wo) ** 2).sum()
    return shardc.from_jax(jax.value_and_grad(loss), x), (x,)


def _qk_builds(k) -> int:
    """How many times the kernel's source builds a scores tile: its dots (Triton's rebuilt dots
    are one loop each) less the P·V product."""
    if k.source.count("jnp.") or "pallas" in k.source[:200]:
        return k.source.count("lax.dot_general(") - 1
    return k.source.count("tl.dot(") - 1


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_training_forward_attention_builds_scores_once(target, small_blocks):
    g, args = _attention_step()
    prog = partition(g, Mesh(dp=1))
    if target == "pallas":
        from shardc.codegen.pallas import vmem_budget
        # a budget the whole block overflows: the keys are read from their own copy of the
        # QKV buffer, in blocks of 8 (the online softmax over 5 grid steps)
        with vmem_budget(24 << 10):
            exe, got = run_and_check(prog, args, 1e-5)
    else:
        exe, got = run_and_check_kernels(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):  # the loss sums ±O(1) terms: an f32 atol too
        assert rel_err(a, b) <= 1e-5 or np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5
    flash = [k for k in exe.kernels if k.kind == "attention"]
    assert len(flash) == 1, exe.plan_text()
    (k,) = flash
    assert sorted(n.op.value for n in k.outputs) == ["dot_general", "reduce_max", "reduce_sum"], k.outputs
    assert _qk_builds(k) == 1, k.source  # QKᵀ once per block: 1 pass, not 3 (max, Σexp, P·V)
    if target == "pallas":
        assert f"GRID = ({SEQ // 8},)" in k.source, k.source  # key blocks over the grid, not one whole block
        assert len(k.inputs) == 2 and k.inputs[0] is k.inputs[1], k.inputs  # the buffer, twice
        export_all(exe.kernels)
    else:
        assert "_start in range" not in k.source  # no rebuilt-dot loop: the scores of the pass
    for k in exe.kernels:  # no [.., SEQ, SEQ] buffer in or out of any kernel
        for x in k.inputs + k.outputs:
            assert x.shape[-2:] != (SEQ, SEQ), f"{k.name} moves {x.describe()}"


def test_statistics_in_a_matmul_prologue_take_one_loop(small_blocks, monkeypatch):
    """Without the flash group, P·V's prologue computes max and Σexp in one loop over the keys
    (the online log-sum-exp): the scores built twice per program, not three times."""
    monkeypatch.setattr(fused_flash, "into_attention", lambda groups, *a: groups)
    g, args = _attention_step()
    exe, got = run_and_check_kernels(partition(g, Mesh(dp=1)), args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5 or np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5
    pv = [k for k in exe.kernels if any(n.op is Op.REDUCE_MAX for n in k.group.pattern.get("rowstats", ()))]
    assert len(pv) == 1 and _qk_builds(pv[0]) == 2, exe.plan_text()


def test_looped_log_sum_exp_is_one_pass(small_blocks):
    """logsumexp (jax.nn.logsumexp: g(max) = select(isfinite(max), max, 0)) and log_softmax (g =
    max(-inf, max)) over rebuilt scores whose rows (40 keys) loop in chunks of 16, the first chunk
    of most rows wholly masked to -inf: each statistics pair takes one loop building its scores
    once per chunk, and every kernel equals numpy."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(12)
    q = jnp.asarray(rng.standard_normal((1, 2, 32, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 2, SEQ, 8)), jnp.float32)

    def f(q, k):
        def loss(q, k):
            s = jnp.einsum("bhqd,bhkd->bhqk", q, k)
            i, j = jnp.arange(32)[:, None], jnp.arange(SEQ)[None, :]
            s = jnp.where(j >= i, s, -jnp.inf)  # row i's keys start at i
            return jax.nn.logsumexp(s, axis=-1).sum() + (jax.nn.log_softmax(s * 0.5, axis=-1) * (j < 33)).sum() * 1e-2
        return jax.value_and_grad(loss, argnums=(0, 1))(q, k)
    g = shardc.from_jax(f, q, k)
    exe, got = run_and_check_kernels(partition(g, Mesh(dp=1)), (q, k), 1e-5)
    for a, b in zip(got, g.evaluate(q, k)):
        assert rel_err(a, b) <= 1e-5
    stats = [k for k in exe.kernels if sum(n.op is Op.REDUCE_MAX for n in k.outputs) == 2]
    assert len(stats) == 1, exe.plan_text()
    assert _qk_builds(stats[0]) + 1 == 2, stats[0].source  # two statistics pairs, one pass each


@pytest.mark.slow
def test_flash_and_online_kernels_compile_for_hopper(monkeypatch):
    """The training forward's flash kernel (GPT-2's and Llama's, f32 and bf16) and a looped
    log-sum-exp row kernel (GPT-2 small's loss statistics over 50257 rebuilt logits) compile
    for sm_90 within its shared memory."""
    from shardc import models
    from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
    from shardc.models.shapes import shape_only_args
    kernels = []
    for name, dtype in (("gpt2", "f32"), ("gpt2", "bf16"), ("llama", "bf16")):
        g, _ = models.get(f"{name}:tiny", n_layer=1).capture(True, "jax", 2, lr=0.1, dtype=dtype)
        kernels += [k for k in shardc.compile(partition(g, Mesh(dp=1))).kernels if k.kind == "attention"][:1]
    fn, args = shape_only_args(models.get("gpt2:small", n_layer=1), True, "jax", 1, "sgd", 0.1, "f32")
    exe = shardc.compile(partition(shardc.from_jax(fn, *args), Mesh(dp=1)))
    kernels += [k for k in exe.kernels if "mn = tl.maximum(" in k.source][:1]
    assert len(kernels) == 4, [k.name for k in kernels]
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])


def test_rebuilt_statistics_stay_out_of_a_wide_matmul_prologue():
    """Llama's training step with 160-wide layers (dX = dlogits·W has more than one tile of
    columns) and 512 rows per step (its logits are rebuilt, never stored): the loss's max and
    Σexp over the vocabulary are computed once per row block by their own kernel, not in dX's
    prologue, where every column tile's program would rebuild the logits again (Llama small's
    step did: per column tile, three passes for its statistics and one for dX's own K loop)."""
    from shardc import models
    m = models.get("llama:tiny", n_layer=1, d_model=160, d_ff=64, vocab_size=512)
    g, _ = m.capture(True, "jax", 32, lr=0.1)
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    stats = [k for k in exe.kernels if any(n.op is Op.REDUCE_MAX and n.inputs[0].shape[-1] == 512 for n in k.outputs)]
    assert [k.kind for k in stats] == ["reduction"], exe.plan_text()
    assert _qk_builds(stats[0]) == 0, stats[0].source  # the logits built once (max and Σexp: one pass)
