"""Repeated blocks (ir/blocks.py, issue 14 item 2): a model of N identical layers held as 4 of
them; the unrolled program is the N-layer capture, value for value."""
import numpy as np
import pytest

from shardc import models
from shardc.errors import IRError
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
    passes = tuple(p for p in DEFAULT if p != "schedule")   # (not run on a repeated block)
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
    assert len(u.local.nodes) == len([n for n in whole.local.nodes if n in _live(whole.local)])
    ref = full.evaluate(*full_args)
    for x, y, z in zip(block.simulate(*full_args), whole.simulate(*full_args), ref):
        np.testing.assert_array_equal(x, y)    # the same per-device program, op for op
        np.testing.assert_allclose(x, z, rtol=1e-3, atol=1e-4)   # f32 Adam step, sums split over devices


def _live(local):
    live, stack = set(), list(local.outputs)
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(n.inputs)
    return live | set(local.inputs)
