"""Recomputed dots (codegen/fused_recompute.py): scores and logits rebuilt per tile inside the
kernels that read them, never stored. Each such kernel equals numpy of its IR nodes on the Triton
interpreter and in Pallas interpret mode, compiles for sm_90 and lowers for TPU; whole programs
equal Graph.evaluate; the language-model heads of GPT-2 and Llama training steps never write
their logits."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, models, partition
from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
from shardc.codegen.fused_recompute import is_recomputed
from shardc.testing import rel_err
from test_codegen_pallas import export_all, run_and_check
from test_codegen_zoo import LAYOUTS, run_and_check_kernels


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def _lse_graph(bf16=False):
    """Σ logsumexp(q kᵀ) over batch·head rows and its gradients: statistics over scores with
    batch dims (a row kernel with pid_b), dq = P·k (scores rebuilt in a matmul's A tile) and
    dk = Pᵀ·q (rebuilt transposed)."""
    import jax
    import jax.numpy as jnp
    dt = jnp.bfloat16 if bf16 else jnp.float32
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((2, 2, 32, 16)), dt)
    k = jnp.asarray(rng.standard_normal((2, 2, 48, 16)), dt)

    def f(q, k):
        return jax.value_and_grad(lambda q, k: jax.nn.logsumexp(
            jnp.einsum("bhqd,bhkd->bhqk", q, k), axis=-1).sum(), argnums=(0, 1))(q, k)
    return shardc.from_jax(f, q, k), (q, k)


def _rebuilders(exe):
    return [k for k in exe.kernels if any(is_recomputed(n) for n in k.ops)]


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_scores_rebuilt_per_tile_equal_numpy_and_never_stored(target):
    g, args = _lse_graph()
    prog = partition(g, Mesh(dp=1))
    check = run_and_check_kernels if target == "triton" else run_and_check
    exe, got = check(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    assert len(_rebuilders(exe)) >= 3, exe.plan_text()  # statistics, dq, dk
    for k in exe.kernels:  # no [.., 32, 48] scores buffer in or out of any kernel
        for x in k.inputs + k.outputs:
            assert x.shape[-2:] != (32, 48), f"{k.name} moves {x.describe()}"
    if target == "pallas":
        export_all(exe.kernels)


@pytest.mark.slow
def test_scores_rebuilt_kernels_compile_for_hopper():
    """The rebuilding kernels of these graphs (the attention backward's dK/dV siblings, the
    experts' chained weight gradient too)."""
    graphs = (_lse_graph, _attention_graph, _experts_graph, lambda bf16: _attention_graph(bf16, batch=1))
    for graph, bf16 in [(gr, b) for gr in graphs for b in (False, True)]:
        g, args = graph(bf16)
        kernels = _rebuilders(shardc.compile(partition(g, Mesh(dp=1))))
        assert kernels
        for k, r in zip(kernels, compile_for_gpu(kernels)):
            assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
            assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])


def _attention_graph(bf16=False, batch=2):
    """Σ w·causal_attention(q, k, v) and its gradients: the backward's dP = dO·Vᵀ rebuilt per tile
    beside the scores, dK = dSᵀ·Q and dVᵀ = dOᵀ·P one sibling kernel (fused_siblings.py). At
    batch 1 jnp.matmul squeezes the batch dim around each dot (kept in the dot by the capture:
    frontend/jax_unit_dims.py), and the same kernels follow."""
    import jax
    import jax.numpy as jnp
    from shardc.models.jax_models import causal_attention
    dt = jnp.bfloat16 if bf16 else jnp.float32
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, 2, 32, 16)), dt) for _ in range(3))
    w = jnp.asarray(rng.standard_normal((batch, 2, 32, 16)), dt)

    def f(q, k, v, w):
        return jax.value_and_grad(lambda q, k, v: (causal_attention(q, k, v) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    return shardc.from_jax(f, q, k, v, w), (q, k, v, w)


@pytest.mark.parametrize("target,batch", [("triton", 2), ("pallas", 2), ("triton", 1), ("pallas", 1)])
def test_attention_backward_rebuilds_dp_and_pairs_dk_dv(target, batch):
    g, args = _attention_graph(batch=batch)
    prog = partition(g, Mesh(dp=1))
    check = run_and_check_kernels if target == "triton" else run_and_check
    exe, got = check(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):  # the loss sums ±O(1) terms to ~0.1: an f32 atol too
        assert rel_err(a, b) <= 1e-5 or np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5
    # four stored dots (P·V, dQ, dK, dVᵀ): dK beside dVᵀ, one pass over the queries rebuilding
    # the scores once (Triton also pairs dQ with P·V: here dO = w does not depend on it)
    pairs = [k for k in exe.kernels if k.group.pattern.get("siblings")]
    assert pairs and sum(k.kind == "matmul" for k in exe.kernels) <= 3, exe.plan_text()
    for k in exe.kernels:  # neither the scores nor dP is a buffer of any kernel
        for x in k.inputs + k.outputs:
            assert x.shape[-2:] != (32, 32), f"{k.name} moves {x.describe()}"
    if target == "pallas":
        export_all(exe.kernels)


def _experts_graph(bf16=False):
    """SGD gradients of batched experts y = gelu(x·W1)·W2 (an MoE's expert MLP, x not trained):
    dW1 = xᵀ·(gelu'(h)∘(dy·W2ᵀ)) rebuilds dh = dy·W2ᵀ per tile in its K loop (a chained dot,
    fused_recompute.chained), and h = x·W1 and y are rebuilt by every dot that reads them
    (fused_recompute.rebuilt_by_readers), so neither h, dh nor y reaches memory."""
    import jax
    import jax.numpy as jnp
    dt = jnp.bfloat16 if bf16 else jnp.float32
    rng = np.random.default_rng(7)
    x, t = (jnp.asarray(rng.standard_normal((2, 48, 32)), dt) for _ in range(2))
    w1 = jnp.asarray(rng.standard_normal((2, 32, 64)) * 0.2, dt)
    w2 = jnp.asarray(rng.standard_normal((2, 64, 32)) * 0.2, dt)

    def loss(w1, w2, x, t):
        h = jax.nn.gelu(jnp.einsum("ecd,edf->ecf", x, w1), approximate=False)
        return ((jnp.einsum("ecf,efd->ecd", h, w2) - t) ** 2).sum()
    return shardc.from_jax(jax.grad(loss, argnums=(0, 1)), w1, w2, x, t), (w1, w2, x, t)


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_chained_dot_is_rebuilt_in_the_weight_gradient(target):
    g, args = _experts_graph()
    prog = partition(g, Mesh(dp=1))
    check = run_and_check_kernels if target == "triton" else run_and_check
    exe, got = check(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    rebuilt = {n.shape for k in exe.kernels for n in k.ops if is_recomputed(n)}
    assert rebuilt == {(2, 48, 64), (2, 48, 32)}, exe.plan_text()  # h and dh; y
    # no [2, 48, 64] (h, dh) or [2, 48, 32] (y, dy) buffer: only x and t are read
    moved = [x for k in exe.kernels for x in k.inputs + k.outputs if x.shape[1:] == (48, 64) or x.shape[1:] == (48, 32)]
    assert all(x in prog.local.inputs for x in moved), exe.plan_text()
    if target == "pallas":
        export_all(exe.kernels)


def test_hidden_activation_rebuilt_only_when_cheaper():
    """rebuilt_by_readers: the expert MLP's h = x·W1 is rebuilt by the forward output and both
    weight gradients; with a contraction or a reader's other free extent over one tile, stored."""
    from shardc.codegen.fused_recompute import MAX_CHAIN_TILE, rebuilt_by_readers
    g, _ = _experts_graph()
    users, outputs = g.users(), set(g.outputs)
    w1, _, x, _ = g.inputs
    h = [n for n in g.nodes if n.op.name == "DOT_GENERAL" and set(n.inputs) == {x, w1}]
    assert len(h) == 1 and rebuilt_by_readers(h[0], users, outputs)
    import shardc.codegen.fused_recompute as fr
    old = fr.MAX_CHAIN_TILE
    try:
        fr.MAX_CHAIN_TILE = 31  # d = 32: the contraction, and the output dot's other free extent
        assert not rebuilt_by_readers(h[0], users, outputs)
    finally:
        fr.MAX_CHAIN_TILE = old
    assert MAX_CHAIN_TILE == old


def _lm_head(g):
    """The training step's LM-head dot: the [batch, seq, vocab] dot_general whose rows a
    log-softmax normalizes (the one recomputed dot without batch dims)."""
    from shardc.codegen.fused_recompute import recomputable
    users, outputs = g.users(), set(g.outputs)
    return [n for n in g.nodes if is_recomputed(n) and not n.attrs["lhs_batch"] and recomputable(n, users, outputs)]


@pytest.mark.parametrize("layout", ["single", pytest.param("tp", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_training_steps_never_store_logits(name, layout):
    m = models.get(f"{name}:tiny")
    g, _ = m.capture(True, "jax", 4, lr=0.1)  # bench/fusion.py's batch (at 2, tiny logits are cheaper stored)
    axes, tp, plan = LAYOUTS[layout]
    prog = partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan)
    for target in ("triton", "pallas"):
        exe = shardc.compile(prog, target=target)
        heads = _lm_head(prog.local)
        assert len(heads) == 1, target
        head = heads[0]
        after, stack = set(), [head]  # every value computed from the logits at their full size
        users = prog.local.users()
        while stack:
            n = stack.pop()
            if n in after:
                continue
            after.add(n)
            stack += [u for u in users.get(n, ()) if u.size >= head.size]
        for k in exe.kernels:
            for x in k.inputs + k.outputs:
                assert x not in after, f"{target}: {k.name} moves {x.describe()} computed from the logits"


@pytest.mark.slow
def test_training_step_rebuilders_compile_for_hopper():
    m = models.get("gpt2:tiny")
    g, _ = m.capture(True, "jax", 4, lr=0.1, dtype="bf16")
    kernels = _rebuilders(shardc.compile(partition(g, Mesh(dp=1))))
    assert kernels
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name


def test_operand_and_epilogue_sums_equal_numpy_and_compile_for_hopper(monkeypatch):
    """GPT-2's training step: bias gradients summed in the weight-gradient matmul's K loop
    (`ksum`), layer-norm backward row and column sums added from the matmul tiles that compute
    their input (`rsum`, atomics into a zeroed output), norm and softmax statistics computed and
    stored by the matmul whose prologue reads them (`rowstats`), dK beside dVᵀ (`siblings`);
    each such kernel equals numpy of its nodes on the interpreter (with the whole step ==
    evaluate) and compiles for sm_90."""
    from shardc.codegen import fused_weights
    # (with few tokens, the weight kernels take the bias sums and the weight gradients:
    # test_codegen_weights.py; this test is about the matmuls' own sums)
    monkeypatch.setattr(fused_weights, "MAX_TOKENS", 0)
    m = models.get("gpt2:tiny", n_layer=1)
    g, args = m.capture(True, "jax", 4, lr=0.1)
    prog = partition(g, Mesh(dp=1))
    exe, got = run_and_check_kernels(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    fused = {p: [k for k in exe.kernels if k.group.pattern.get(p)] for p in ("ksum", "rsum", "rowstats", "siblings")}
    assert all(fused.values()), exe.plan_text()
    kernels = list({ks[0].name: ks[0] for ks in fused.values()}.values())  # one of each kind
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])


def test_gpt2_small_step_plan_is_in_dependency_order():
    """At GPT-2 small's sizes a matmul takes a norm backward's sums into its epilogue and stores
    them before later readers' program position; the planner's merging once followed program
    position and made a cycle ("the launch plan has a cycle"). Every step must read only what
    an earlier step, or the program's inputs, wrote."""
    from shardc.models.shapes import shape_only_args
    fn, args = shape_only_args(models.get("gpt2:small", n_layer=1), True, "jax", 2, "sgd", 0.1, "f32")
    prog = partition(shardc.from_jax(fn, *args), Mesh({"dp": 1}), specs={}, plan="dp")
    exe = shardc.codegen.compile(prog, "triton")
    written = set(prog.local.inputs)
    for step in exe.plan:
        missing = [r for r in step.reads if r not in written and r.inputs]
        assert not missing, (step, missing)
        written.update(step.writes)


def _tp_fusions(exe) -> dict:
    """The kernels of each training fusion under tp (one list per kind)."""
    from shardc.codegen.fused_sums import column_sum

    def summed(k):  # a sibling dot only added in the epilogue: never stored
        return any(s not in k.outputs for s, _ in k.group.pattern.get("siblings", ()))
    return {
        "column sums in a row kernel": [k for k in exe.kernels if k.kind == "reduction"  # dγ beside dx
                                        and any(column_sum(n) for n in k.ops)
                                        and any(r.rank == 3 for r in k.outputs)],
        "summed siblings": [k for k in exe.kernels if summed(k)],
        "norm statistics beside siblings": [k for k in exe.kernels if k.group.pattern.get("siblings")
                                            and k.group.pattern.get("rowstats")],
    }


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_tp_norm_backward_sums_and_summed_projections_equal_numpy(target):
    """Llama's training step under Megatron tp: the RMSNorm backward's dγ (Σ over rows of dy·x̂,
    dy an all-reduce's result) added atomically by the row kernel that writes dx; the input
    gradients of projections reading one x (dk·Wk + dv·Wv, dgate·Wg + dup·Wu) accumulated in one
    K loop, the summand never stored; the post-attention norm's statistics computed by the
    gate/up sibling matmul. Every kernel equals numpy of its nodes (Triton interpreter, Pallas
    interpret mode), the step equals evaluate, Triton compiles one of each for sm_90 and Pallas
    lowers for TPU."""
    m = models.get("llama:tiny", n_layer=1)
    g, args = m.capture(True, "jax", 2, lr=0.1)
    axes, tp, plan = LAYOUTS["tp"]
    prog = partition(g, Mesh(axes), m.tp_specs(), plan)
    check = run_and_check_kernels if target == "triton" else run_and_check
    exe, got = check(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    fused = _tp_fusions(exe)
    assert all(fused.values()), (fused, exe.plan_text())
    if target == "pallas":
        export_all(exe.kernels)
        return
    kernels = list({ks[0].name: ks[0] for ks in fused.values()}.values())
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])
