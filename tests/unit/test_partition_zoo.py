"""Every zoo model, forward and SGD training step, under DP, FSDP, Megatron TP, TP + sequence
parallel and 2-D meshes (uneven dims too): simulate == evaluate; and the ledgers the closed forms
predict (Megatron: 2 all-reduces of b·s·h per layer; DP: gradient all-reduces add up to Ψ;
FSDP: at most 3Ψ)."""
import pytest

import zoo_cases
from shardc import Mesh, models, partition
from shardc.testing import assert_close
from zoo_cases import BATCH, ZOO, partitioned, specs_for

LAYOUTS = zoo_cases.layouts(**{"dp": "dp2", "dp-uneven": "dp3", "fsdp": "fsdp4", "tp": "tp2", "tp+sp": "tp4+sp",
                               "2d": "2x2", "2d-fsdp": "2x2-fsdp"})


def captured(name: str, train: bool, frontend: str = "jax"):
    return (*zoo_cases.captured(name, train, frontend), zoo_cases.reference(name, train, frontend))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("name", ZOO)
def test_simulate_equals_evaluate(name, train, layout):
    m, g, args, want = captured(name, train)
    prog = partitioned(m, g, LAYOUTS[layout])
    got = prog.simulate(*args)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, tol=1e-5, what=f"{g.output_names[i]} ({name} {layout})")


@pytest.mark.parametrize("layout", ["fsdp", "tp+sp", "2d"])
@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("name", ZOO)
def test_torch_twins_too(name, train, layout):
    m, g, args, want = captured(name, train, "torch")
    prog = partitioned(m, g, LAYOUTS[layout])
    for i, (a, b) in enumerate(zip(prog.simulate(*args), want)):
        assert_close(a, b, tol=1e-5, what=f"{g.output_names[i]} ({name} {layout}, torch)")


def test_megatron_gpt2_torch_forward_is_two_all_reduces_per_layer():
    m, g, _, _ = captured("gpt2", False, "torch")
    prog = partition(g, Mesh(tp=4), m.tp_specs())
    assert [(c.kind, c.bytes) for c in prog.collectives] == [("all_reduce", _layer_bytes(m))] * (2 * m.config.n_layer)


def _layer_bytes(m):
    c = m.config
    return BATCH * c.seq_len * c.d_model * 4


def test_megatron_gpt2_forward_is_two_all_reduces_per_layer():
    m, g, _, _ = captured("gpt2", False)
    prog = partition(g, Mesh(tp=4), m.tp_specs())
    kinds = [(c.kind, c.bytes) for c in prog.collectives]
    assert kinds == [("all_reduce", _layer_bytes(m))] * (2 * m.config.n_layer)


def test_tp_sp_gpt2_forward_is_all_gather_and_reduce_scatter_of_the_same_volume():
    m, g, _, _ = captured("gpt2", False)
    prog = partition(g, Mesh(tp=4), specs_for(m, g, LAYOUTS["tp+sp"]))
    kinds = [(c.kind, c.bytes) for c in prog.collectives]
    assert kinds == [("all_gather", _layer_bytes(m)), ("reduce_scatter", _layer_bytes(m))] * (2 * m.config.n_layer)


@pytest.mark.parametrize("name", ZOO[:3])
def test_dp_gradient_all_reduces_add_up_to_the_parameter_bytes(name):
    m, g, _, _ = captured(name, True)
    psi = sum(p.nbytes for p in g.inputs if p.name.startswith("params["))
    prog = partition(g, Mesh(dp=4), plan="dp", passes=())
    grads = [c for c in prog.collectives if c.kind == "all_reduce" and c.bytes > 4]  # not the loss scalar
    assert sum(c.bytes for c in grads) == psi
    assert {c.kind for c in prog.collectives} == {"all_reduce"}
    combined = partition(g, Mesh(dp=4), plan="dp")  # the combiner: one bucket, loss scalar included
    assert [(c.kind, c.bytes) for c in combined.collectives] == [("all_reduce", psi + 4)]
    report = next(r for r in combined.passes if r.name == "combine")
    assert report.before == len(prog.collectives) and report.after == 1


@pytest.mark.parametrize("name", ZOO)
def test_fsdp_moves_at_most_three_psi(name):
    m, g, _, _ = captured(name, True)
    psi = sum(p.nbytes for p in g.inputs if p.name.startswith("params["))
    prog = partition(g, Mesh(dp=4), plan="fsdp")
    total = sum(c.bytes for c in prog.collectives)
    assert total <= 3 * psi, prog.ledger()
    # parameters and their updates stay split: each device holds a quarter
    for p, s in zip(g.inputs, prog.input_shardings):
        if p.name.startswith("params[") and p.rank:
            assert not s.is_replicated, p.name


@pytest.mark.parametrize("batch", [4, 64])
def test_fsdp_moves_whichever_is_smaller_activations_or_weights(batch):
    """ZeRO-3 gathers every weight (Ψ) when activations are the larger; with a small batch the
    layers run split by output feature and only activations move (less than Ψ), as XLA does."""
    m = models.get("mlp:tiny")
    g, args = m.capture(False, "jax", batch, lr=0.1)
    psi = sum(p.nbytes for p in g.inputs if p.name.startswith("params["))
    prog = partition(g, Mesh(dp=4), plan="fsdp")
    total = sum(c.bytes for c in prog.collectives)
    act = batch * max(m.config.dims()) * 4
    if batch == 64:  # every activation is larger than the largest weight: gather the weights
        assert total == psi and {c.kind for c in prog.collectives} == {"all_gather"}, prog.ledger()
    else:
        assert total < psi and all(c.bytes <= act for c in prog.collectives), prog.ledger()
    for a, b in zip(prog.simulate(*args), g.evaluate(*args)):
        assert_close(a, b, tol=1e-5)


def test_moe_tp_sp_gathers_the_tokens_once_where_they_are_made():
    """Sequence-split tokens into expert-parallel experts: gather the tokens once, right after
    they are made, so the router, the dispatch and the capacity count all run on the whole batch
    (no gathers of expert choices, no reduce-scatter of a partial dispatch buffer); the expert
    outputs are gathered for the combine. As XLA partitions it."""
    m, g, args, want = captured("moe", False)
    prog = partition(g, Mesh(tp=4), specs_for(m, g, LAYOUTS["tp+sp"]))
    c = m.config
    tokens = BATCH * c.seq_len * c.d_model * 4
    slots = c.n_experts * c.capacity(BATCH * c.seq_len) * c.d_model * 4
    assert [(r.kind, r.bytes) for r in prog.collectives] == [("all_gather", tokens), ("all_gather", slots)], prog.ledger()
    assert "where it is made" in prog.collectives[0].reason
    for a, b in zip(prog.simulate(*args), want):
        assert_close(a, b, tol=1e-5)
