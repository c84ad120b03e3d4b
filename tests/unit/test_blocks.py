"""Repeated blocks (ir/blocks.py, issue 14 item 2): a model of N identical layers held as 4 of
them; the unrolled program is the N-layer capture, value for value."""

import numpy as np
import pytest

from shardc import models
from shardc.errors import IRError
from shardc.analysis.analyze import LiveProgram
from shardc.ir.blocks import Repeat, labels, unroll


@pytest.fixture(scope="module")
def llama6():
    m = models.get("llama:tiny", n_layer=6)
    g, args = m.capture(True, "jax", 2, optimizer="adam", repeat=True)
    full, full_args = m.capture(True, "jax", 2, optimizer="adam")
    return g, args, full, full_args


def test_unrolled_is_the_whole_capture(llama6):
    g, args, full, full_args = llama6
    assert g.repeat.depth == 6 and g.repeat.copies == 3
    lab = labels(g)
    assert sum(v == 1 for v in lab.values()) == sum(v == 2 for v in lab.values()) > 100
    u = g.unrolled()
    assert [p.name for p in u.inputs] == [p.name for p in full.inputs]
    assert u.output_names == full.output_names
    assert [(n.op, n.shape, n.dtype) for n in u.nodes] == [(n.op, n.shape, n.dtype) for n in full.nodes]
    for a, b in zip(g.evaluate(*args), full.evaluate(*full_args)):   # the whole model's arguments
        np.testing.assert_array_equal(a, b)


def test_gpt2_training_step_unrolls_to_its_capture():
    """GPT-2's SGD step: the tied embedding's gradient collects from both ends of the layer stack
    (the lookup before layer 0, the LM head after the last layer); no layer's."""
    m = models.get("gpt2:tiny", n_layer=5)
    g, args = m.capture(True, "jax", 2, optimizer="sgd", repeat=True)
    full, full_args = m.capture(True, "jax", 2, optimizer="sgd")
    u = g.unrolled()
    assert [p.name for p in u.inputs] == [p.name for p in full.inputs] and u.output_names == full.output_names
    assert [(n.op, n.shape, n.dtype) for n in u.nodes] == [(n.op, n.shape, n.dtype) for n in full.nodes]
    for a, b in zip(g.evaluate(*args), full.evaluate(*full_args)):
        np.testing.assert_array_equal(a, b)


def test_fsdp_tp_sequence_parallel_unrolls():
    """FSDP × tp with sequence parallelism: the partitioner leaves a dead value in layer 2 that
    layer 1 has not; values no output needs are neither compared nor unrolled, so the block
    stands for the middle layers and the repeated program simulates the 5-layer model."""
    import shardc
    from shardc import Mesh
    from shardc.partition.plans import sequence_parallel_specs
    m = models.get("gpt2:tiny", n_layer=5)
    g, _ = m.capture(True, "jax", 4, optimizer="sgd", repeat=True)
    full, full_args = m.capture(True, "jax", 4, optimizer="sgd")
    prog = shardc.partition(g, Mesh({"dp": 2, "tp": 2}), {**m.tp_specs(), **sequence_parallel_specs(g)}, "fsdp")
    for x, y in zip(prog.simulate(*full_args), full.evaluate(*full_args)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_forward_and_refusals():
    with pytest.raises(IRError, match="stands for at least 4"):
        Repeat(3)
    m = models.get("llama:tiny", n_layer=5)
    g, args = m.capture(False, "jax", 2, repeat=True)
    full, full_args = m.capture(False, "jax", 2)
    assert len(g.unrolled().nodes) == len(full.nodes)
    np.testing.assert_array_equal(g.evaluate(*args)[0], full.evaluate(*full_args)[0])
    # a graph whose layers 1 and 2 differ cannot stand for deeper models
    m4 = models.get("llama:tiny", n_layer=4)
    g4, _ = m4.capture(False, "jax", 2)
    q = next(p for p in g4.inputs if "layers.2." in p.name and p.rank == 2)
    g4.inputs[g4.inputs.index(q)] = type(q)(q.op, (), {}, q.shape, q.dtype, q.source, q.name.replace("layers.2.", "layers.7."))
    with pytest.raises(IRError, match="not the same computation|no counterpart"):
        unroll(g4, Repeat(6))


FIGURES = ("flops", "model_flops", "memory", "comm_bytes", "compute_s", "comm_s", "step_s")


@pytest.mark.slow
def test_partitioned_once_multiplied_out_exactly(llama6):
    """The repeated program is partitioned with 4 layers; its ledger and analysis multiplied
    out equal the 6-layer program's exactly, and its unrolled program simulates the model."""
    import shardc
    from shardc import Mesh
    g, args, full, full_args = llama6
    m = models.get("llama:tiny", n_layer=6)
    mesh = Mesh({"dp": 2, "tp": 2})
    from shardc.partition.passes import DEFAULT
    passes = tuple(p for p in DEFAULT if p != "schedule")   # (schedules the unrolled program, its own figures)
    block = shardc.partition(g, mesh, m.tp_specs("tp"), "fsdp", passes=passes)
    whole = shardc.partition(full, mesh, m.tp_specs("tp"), "fsdp", passes=passes)
    assert len(block.local.nodes) < 0.75 * len(whole.local.nodes)
    assert block.bytes_by_kind() == whole.bytes_by_kind()
    assert sum(c.copies for c in block.collectives) == len(whole.collectives)
    a, b = shardc.analyze(block, "h200"), shardc.analyze(whole, "h200")
    for k in FIGURES:
        assert getattr(a, k) == getattr(b, k), k
    u = block.unrolled()
    assert len(u.collectives) == len(whole.collectives)
    assert len(u.local.nodes) == len(LiveProgram(whole.local).nodes)
    ref = full.evaluate(*full_args)
    for x, y, z in zip(block.simulate(*full_args), whole.simulate(*full_args), ref):
        np.testing.assert_array_equal(x, y)    # the same per-device program, op for op
        np.testing.assert_allclose(x, z, rtol=1e-3, atol=1e-4)   # f32 Adam step, sums split over devices


@pytest.mark.slow
def test_real_size_layers_multiplied_out_exactly():
    """Llama 3 70B's own dims, 5 layers, Adam, fsdp=32 x tp=8: the repeated program's analysis
    and ledger equal the 5-layer program's exactly."""
    import shardc
    from shardc import Mesh
    from shardc.partition.passes import DEFAULT
    passes = tuple(p for p in DEFAULT if p != "schedule")
    m = models.get("llama3:70b", n_layer=5, seq_len=64)
    g, _ = m.capture(train=True, batch=32, optimizer="adam")
    full, _ = m.capture(train=True, batch=32, optimizer="adam", repeat=False)
    assert g.repeat.depth == 5 and full.repeat is None
    mesh = Mesh(fsdp=32, tp=8)
    block = shardc.partition(g, mesh, m.tp_specs("tp"), plan="fsdp", passes=passes)
    whole = shardc.partition(full, mesh, m.tp_specs("tp"), plan="fsdp", passes=passes)
    a, b = shardc.analyze(block, "h200"), shardc.analyze(whole, "h200")
    for k in FIGURES + ("exposed_comm_s",):
        assert getattr(a, k) == getattr(b, k), k
    assert block.bytes_by_kind() == whole.bytes_by_kind()


@pytest.mark.parametrize("name,kw", [("gpt2:tiny", {}),
                                     pytest.param("mixtral:8x7b", dict(d_model=32, n_head=4, n_kv_head=2, d_ff=48,
                                                                       vocab_size=96, seq_len=8),
                                                  marks=pytest.mark.slow)])
def test_zoo_simulates_with_repeated_blocks(name, kw):
    """GPT-2 (layers "h.{i}.") and Mixtral (routed experts) at 5 layers, Adam, dp2 x tp2 with the
    default passes: the repeated program simulates the 5-layer model (gradient buckets stay
    within a layer, so the block stays one block)."""
    import shardc
    from shardc import Mesh
    m = models.get(name, n_layer=5, **kw)
    g, args = m.capture(True, "jax", 4, optimizer="adam", repeat=True, shape_only=False)
    prog = shardc.partition(g, Mesh({"dp": 2, "tp": 2}), m.tp_specs("tp"), "dp")
    assert prog.repeat.copies == 2 and any(c.copies == 2 for c in prog.collectives)
    assert prog.passes[-1].name == "schedule" and "5 layers unrolled" in prog.passes[-1].summary
    assert prog.unrolled().local.scheduled     # the scheduled order is the whole program's
    # the program as partitioned (before the passes), unrolled on first use: every layer, priced as the block's op
    whole, raw = prog.unrolled(), unroll(prog.before_passes, prog.repeat).graph
    assert len(raw.nodes) > len(prog.before_passes.nodes)
    assert [(n.op, n.name, n.shape) for n in whole.before_passes.nodes] == [(n.op, n.name, n.shape) for n in raw.nodes]
    block = set(prog.before_passes.nodes)
    assert all(whole.templates[n] in block for n in whole.before_passes.nodes)
    assert shardc.analyze(prog, "h200").step_s_before_passes > 0
    full, full_args = m.capture(True, "jax", 4, optimizer="adam", repeat=False, shape_only=False)
    for x, y in zip(prog.simulate(*full_args), full.evaluate(*full_args)):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)
