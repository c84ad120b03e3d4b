"""Hugging Face-style GPT-2 and Llama (SDPA attention, Conv1D, GQA, rotary; tests/unit/hf_style.py)
on dp × tp meshes: SDPA's decomposition merges [b, h, s, hd] into [b·h, s, hd] with b split over
dp and h over tp; the merged dim keeps both splits (a compound layout), so the ledger is exactly
Megatron's closed form and simulate == evaluate."""
import functools
import sys
from pathlib import Path

import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.partition.mesh import DimSharding, Sharding, global_indices, local_dim, shard_array, unshard_arrays
from shardc.testing import assert_close

sys.path.insert(0, str(Path(__file__).parent))
import hf_style as H  # noqa: E402

BATCH = 4
MESHES = {"dp2xtp2": dict(dp=2, tp=2), "dp2xtp4": dict(dp=2, tp=4)}


@functools.lru_cache(maxsize=None)
def forward(family: str):
    c = H.Cfg()
    module, ids = H.build(family, c), H.ids(c, BATCH)
    g = shardc.from_torch(module, (ids,))
    return c, g, ids, g.evaluate(ids)


@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forward_megatron_dp_tp_is_the_closed_form(family, mesh):
    c, g, ids, want = forward(family)
    axes = MESHES[mesh]
    prog = shardc.partition(g, Mesh(axes), {**H.megatron_specs(family), "ids": P("dp")})
    per_layer = (BATCH // axes["dp"]) * c.seq * c.d * 4
    assert [(r.kind, r.axes, r.bytes) for r in prog.collectives] == \
        [("all_reduce", ("tp",), per_layer)] * (2 * c.n_layer), prog.ledger()
    assert sum(r.bytes for r in prog.collectives) == H.forward_closed_form(c, BATCH, axes["dp"])
    for a, b in zip(prog.simulate(ids), want):
        assert_close(a, b, tol=1e-5)


def test_merged_batch_heads_keep_both_splits():
    """[b, h, s, hd] split ['dp', 'tp'] reshaped to [b·h, s, hd] is [('dp', 'tp'), -, -] as a
    compound layout (b over dp, then h over tp), with no collective; and split back."""
    c, g, ids, want = forward("llama")
    prog = shardc.partition(g, Mesh(dp=2, tp=2), {**H.megatron_specs("llama"), "ids": P("dp")})
    merged = [n for n in g.nodes if n.rank == 3 and n.shape[0] == BATCH * c.n_head]
    assert merged
    for n in merged:
        d = prog.shardings[n].dims[0]
        assert d.parts == ((BATCH, ("dp",)), (c.n_head, ("tp",))), (n.describe(), prog.shardings[n])
        assert local_dim(n.shape[0], d, prog.mesh) == BATCH * c.n_head // 4


def test_compound_layout_indices_round_trip():
    """A compound dim's blocks: device (dp=r, tp=t) holds b in r's half and h in t's half of a
    merged [b·h] dim, padded per factor when a factor does not divide (3 heads over 2)."""
    mesh = Mesh(dp=2, tp=2)
    d = DimSharding.compound([(4, ("dp",)), (4, ("tp",))], mesh)
    assert d.parts and d.axes == ("dp", "tp")
    dev = int(mesh.devices[1, 1])
    assert list(global_indices(16, d, mesh, dev)) == [4 * b + h for b in (2, 3) for h in (2, 3)]
    # one element of the major factor per device: a plain split over (dp, tp)
    assert DimSharding.compound([(2, ("dp",)), (4, ("tp",))], mesh) == DimSharding(("dp", "tp"))
    assert DimSharding.compound([(4, ()), (4, ("tp",))], mesh) == DimSharding(("tp",), 4)
    padded = DimSharding.compound([(4, ("dp",)), (3, ("tp",))], mesh)
    assert local_dim(12, padded, mesh) == 4
    x = np.arange(24.0).reshape(12, 2)
    s = Sharding((padded, DimSharding()))
    blocks = [shard_array(x, s, mesh, i) for i in range(mesh.size)]
    assert all(b.shape == (4, 2) for b in blocks)
    np.testing.assert_array_equal(unshard_arrays(blocks, x.shape, s, mesh), x)
