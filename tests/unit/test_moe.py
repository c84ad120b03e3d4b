"""Mixture-of-experts as real models write it: the grouped matmul (ragged_dot) and the ragged
all-to-all in the IR, their factor rules, and grouped matmuls partitioned over experts, rows and
the contraction: simulate == evaluate exactly, and expert weights are never gathered."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.ir import DType, GraphBuilder, Op

R = np.random.default_rng(7)


def _grouped_graph():
    """y = ragged_dot(x, w, sizes) and its weight gradient ragged_dot(xᵀ, dy, sizes) (contract)."""
    E, m, k, n = 4, 12, 8, 6
    b = GraphBuilder("grouped", {})
    x = b.parameter("x", (m, k), DType.f32)
    w = b.parameter("w", (E, k, n), DType.f32)
    s = b.parameter("sizes", (E,), DType.i32)
    dy = b.parameter("dy", (m, n), DType.f32)
    y = b.add(Op.RAGGED_DOT, [x, w, s])
    dw = b.add(Op.RAGGED_DOT, [b.add(Op.TRANSPOSE, [x], perm=(1, 0)), dy, s], mode="contract")
    g = b.build([y, dw])
    vals = [R.standard_normal((m, k)).astype(np.float32), R.standard_normal((E, k, n)).astype(np.float32),
            np.array([3, 0, 5, 2], np.int32), R.standard_normal((m, n)).astype(np.float32)]
    return g, vals


def test_ragged_dot_evaluates_group_by_group():
    g, (x, w, s, dy) = _grouped_graph()
    y, dw = g.evaluate(x, w, s, dy)
    ends = np.cumsum(s)
    want = np.zeros_like(y)
    for e in range(4):
        lo, hi = ends[e] - s[e], ends[e]
        want[lo:hi] = x[lo:hi] @ w[e]
        np.testing.assert_allclose(dw[e], x[lo:hi].T @ dy[lo:hi], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y[ends[-1]:], 0)  # rows past the groups
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axes,specs", [
    ({"ep": 4}, {"w": P("ep", None, None)}),
    ({"ep": 4}, {"x": P("ep", None), "dy": P("ep", None)}),
    ({"dp": 2, "ep": 2}, {"x": P("dp", None), "dy": P("dp", None), "w": P("ep", None, None)}),
    ({"ep": 2, "tp": 2}, {"w": P("ep", None, "tp"), "x": P(None, "tp")}),
    ({"ep": 4}, {"w": P("ep", None, None), "out[1]": P("ep", None, None)}),
    ({"ep": 3}, {"w": P("ep", None, None), "x": P("ep", None)}),  # uneven: 4 experts, 12 rows over 3
], ids=["experts", "rows", "rows-dp-experts-ep", "experts-tp", "grad-experts", "uneven"])
def test_grouped_matmul_partitions_exactly(axes, specs):
    g, vals = _grouped_graph()
    prog = shardc.partition(g, Mesh(axes), specs)
    for got, want in zip(prog.simulate(*vals), g.evaluate(*vals)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not any(c.kind == "all_gather" and c.tensor == "w" for c in prog.collectives), prog.ledger()


# ---------------------------------------------------------------------------------- frontends
torch = pytest.importorskip("torch")
from moe_models import DeepseekV3MoE, MixtralSparseMoeBlock, MoeConfig, sgd_step  # noqa: E402


# ------------------------------------------------------------------------- expert parallelism
import functools  # noqa: E402

EP = {"gate_up_proj": P("ep", None, None), "down_proj": P("ep", None, None)}
MESHES = {"ep4": ({"ep": 4}, P("ep", None, None), EP),
          "dp2xep2": ({"dp": 2, "ep": 2}, P(("dp", "ep"), None, None), EP),
          "ep2xtp2": ({"ep": 2, "tp": 2}, P("ep", None, None), {"gate_up_proj": P("ep", "tp", None),
                                                                 "down_proj": P("ep", None, "tp")}),
          "fsdp2xep2": ({"dp": 2, "ep": 2}, P(("dp", "ep"), None, None), {"gate_up_proj": P("ep", "dp", None),
                                                                          "down_proj": P("ep", "dp", None)})}


def _expert_specs(g, by_weight: dict) -> dict:
    """The routed experts' weights (and their updates), not the shared expert's."""
    return {name: spec for name in g.input_names + g.output_names for w, spec in by_weight.items()
            if name.replace("'", "").replace("[", ".").endswith(f".experts.{w}]") or name == f"experts.{w}"}
B, S, D, K = 8, 2, 16, 2  # batch, sequence, hidden, experts per token


@functools.lru_cache(maxsize=None)
def _captured(cls, train: bool, impl: str = "grouped_mm"):
    """(graph, args, token input name, token output/target name, module): captured once per module."""
    torch.manual_seed(5)
    m = cls(MoeConfig(experts_implementation=impl))
    x, t = torch.randn(B, S, D), torch.randn(B, S, D)
    if not train:
        return shardc.from_torch(m, (x,)), (x,), "hidden_states", "out", m
    params = {k: v.detach() for k, v in m.named_parameters()}
    step = shardc.from_torch(sgd_step(m), (params, x, t), capture="make_fx")  # (as export, 5x faster)
    return step, (params, x, t), "x", "target", m


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
@pytest.mark.parametrize("cls", [MixtralSparseMoeBlock, DeepseekV3MoE], ids=["mixtral", "deepseek"])
def test_hf_style_moe_layers_capture_exactly(cls, impl):
    g, (x,), _, _, m = _captured(cls, False, impl)
    assert (sum(n.op is Op.RAGGED_DOT for n in g.nodes) == 2) == (impl == "grouped_mm")
    np.testing.assert_allclose(g.evaluate(x)[0], m(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_hf_eager_experts_loop_is_refused_in_one_line():
    m = MixtralSparseMoeBlock(MoeConfig(experts_implementation="eager"))
    with pytest.raises(shardc.Error) as err:
        shardc.from_torch(m, (torch.randn(2, 3, 16),))
    msg = str(err.value)
    assert "\n" not in msg and "grouped_mm" in msg and "batched_mm" in msg and "moe_models.py:" in msg, msg


def test_grouped_mm_forms_histc_and_bincount():
    class Forms(torch.nn.Module):
        def forward(self, a2, b3, a3, b2, dy, ids, offs):
            return (torch._grouped_mm(a2, b3, offs=offs),        # rows in groups (the forward)
                    torch._grouped_mm(a2.t(), dy, offs=offs),    # contraction in groups (a weight gradient)
                    torch._grouped_mm(a3, b2, offs=offs),        # columns in groups
                    torch.histc(ids.float(), bins=3, min=0, max=2))
    offs = torch.tensor([4, 4, 12], dtype=torch.int32)           # an empty group; the last ends at 12
    args = (torch.randn(12, 8), torch.randn(3, 8, 4), torch.randn(3, 8, 8), torch.randn(8, 12),
            torch.randn(12, 4), torch.tensor([2, 0, 2, 2, 1]), offs)
    g = shardc.from_torch(Forms(), args)
    for got, want in zip(g.evaluate(*args), Forms()(*args)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)

    class Count(torch.nn.Module):
        def forward(self, ids):
            return torch.bincount(ids, minlength=3)
    with pytest.raises(shardc.Error, match="bincount.*histc"):
        shardc.from_torch(Count(), (torch.tensor([0, 2, 2]),))


def test_jax_ragged_dot_sort_and_bincount():
    jax = pytest.importorskip("jax")
    from jax import lax
    import jax.numpy as jnp

    def moe(x, ids, w):
        order = jnp.argsort(ids)
        y = lax.ragged_dot(x[order], w, jnp.bincount(ids, length=3))
        return y[jnp.argsort(order)]
    x, w = R.standard_normal((10, 8)).astype(np.float32), R.standard_normal((3, 8, 5)).astype(np.float32)
    ids = np.array([2, 0, 1, 1, 0, 2, 2, 0, 1, 1], np.int32)
    step = jax.grad(lambda x, ids, w: (moe(x, ids, w) ** 2).sum(), argnums=(0, 2))  # both gradient forms
    for fn in (moe, step):
        g = shardc.from_jax(fn, x, ids, w)
        for got, want in zip(g.evaluate(x, ids, w), jax.tree.leaves(jax.jit(fn)(x, ids, w))):
            np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


CASES = [(impl, layout) for impl in ("grouped_mm", "batched_mm") for layout in MESHES
         if layout != "fsdp2xep2" or impl == "grouped_mm"]


@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["forward", "sgd"])
@pytest.mark.parametrize("cls", [MixtralSparseMoeBlock, DeepseekV3MoE], ids=["mixtral", "deepseek"])
@pytest.mark.parametrize("impl,layout", CASES, ids=[f"{i}-{l}" for i, l in CASES])
def test_expert_parallel_tokens_travel_dropless_and_exact(impl, layout, cls, train):
    """Both experts forms (grouped_mm; batched_mm, restated as grouped matmuls by
    partition/batched_experts.py, its backward too), forward and SGD step: the routed rows travel
    to the experts' devices and back in padded ragged all-to-alls, the expert weights never move
    over the experts axis, and routing needs no more than a per-peer count exchange."""
    g, args, x_name, other, _ = _captured(cls, train, impl)
    axes, tokens, experts = MESHES[layout]
    prog = shardc.partition(g, Mesh(axes), {x_name: tokens, other: tokens, **_expert_specs(g, experts)})
    tp = "tp" in axes
    for got, want in zip(prog.simulate(*args), g.evaluate(*args)):
        if tp or train or impl == "batched_mm":  # partial sums (tp, token axes), bmm vs grouped matmul
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
    # nothing is gathered over the experts axis (no weights, no expert ids); replicated
    # parameters' gradients are summed there, as in dp
    assert not any("ep" in c.axes and c.kind in ("all_gather", "reduce_scatter") for c in prog.collectives), prog.ledger()
    assert not any("experts." in c.tensor and c.kind == "all_gather" and "dp" not in c.axes for c in prog.collectives)
    moved = [c for c in prog.collectives if c.kind == "ragged_all_to_all"]
    dp = axes.get("dp", 1)
    buffer = K * (B // dp) * S * D * 4    # k·(b/dp)·s·d f32 elements, padded for any routing
    assert [c.bytes for c in moved] == [buffer] * (3 if train else 2), prog.ledger()
    cfg = MoeConfig()
    counts = [c.bytes for c in prog.collectives if c.kind == "all_to_all"]   # the only routing metadata
    assert counts == [cfg.num_local_experts * 4], prog.ledger()
    if not train:  # forward: the two all-to-alls and the counts, plus tp's all-reduce of the layer
        # output or fsdp's gathers of this device's experts: nothing else
        local_experts = 3 * cfg.hidden_size * cfg.intermediate_size * cfg.num_local_experts // axes["ep"] * 4
        extra = B * S * D * 4 // axes["ep"] if tp else local_experts if "fsdp" in layout else 0
        assert sum(c.bytes for c in prog.collectives) == 2 * buffer + counts[0] + extra, prog.ledger()
    elif tp:  # the step: tp adds the output's all-reduce and the input gradient's, nothing gathered
        assert not any(c.kind == "all_gather" for c in prog.collectives), prog.ledger()


def test_analysis_models_routed_tokens_worst_and_uniform():
    g, args, x_name, other, _ = _captured(MixtralSparseMoeBlock, False)
    axes, tokens, experts = MESHES["ep4"]
    prog = shardc.partition(g, Mesh(axes), {x_name: tokens, other: tokens, **_expert_specs(g, experts)})
    a = shardc.analyze(prog, hardware="h100")
    buffer = K * B * S * D * 4
    assert a.routed["worst_bytes"] == 2 * buffer and a.routed["expected_bytes"] == 2 * buffer / 4
    assert 0 < a.routed["expected_s"] < a.routed["worst_s"]
    assert "routed tokens" in a.table()


def test_routing_from_unproven_ids_keeps_the_factor_rules():
    """Each device routes its slots by their own ids only when the graph proves that equals the
    global sort's grouping (ids never negative, sizes their counts); ids from an input may be
    negative (sorted first, shifting every group), so that layer keeps the factor rules: exact."""
    jax = pytest.importorskip("jax")
    from jax import lax
    import jax.numpy as jnp

    def moe(x, ids, w):
        order = jnp.argsort(ids)
        y = lax.ragged_dot(x[order], w, jnp.bincount(ids, length=4))
        return y[jnp.argsort(order)]
    x, w = R.standard_normal((16, 8)).astype(np.float32), R.standard_normal((4, 8, 4)).astype(np.float32)
    ids = np.array([2, -1, 1, 3, 0, 2, 5, 0, 1, 1, 3, 3, 0, -2, 2, 1], np.int32)
    g = shardc.from_jax(moe, x, ids, w)
    prog = shardc.partition(g, Mesh(ep=4), {"x": P("ep", None), "ids": P("ep"), "w": P("ep", None, None)})
    np.testing.assert_allclose(prog.simulate(x, ids, w)[0], g.evaluate(x, ids, w)[0], rtol=1e-5, atol=1e-6)
    assert not any(c.kind == "ragged_all_to_all" for c in prog.collectives), prog.ledger()
