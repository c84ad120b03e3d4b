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
