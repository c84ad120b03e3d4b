"""Hugging Face-style GPT-2 and Llama (SDPA attention, Conv1D, GQA, rotary; shardc/models/hf_style.py)
on dp × tp meshes: SDPA's decomposition merges [b, h, s, hd] into [b·h, s, hd] with b split over
dp and h over tp; the merged dim keeps both splits (a compound layout), so the ledger is exactly
Megatron's closed form and simulate == evaluate."""
import functools
import inspect
import math
from pathlib import Path

import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.partition.mesh import (DimSharding, Sharding, global_indices, local_dim, local_shape, shard_array,
                                   unshard_arrays)
from shardc.partition.plans import is_state
from shardc.testing import assert_close

from shardc.models import hf_style as H

BATCH = 4
MESHES = {"dp2xtp2": dict(dp=2, tp=2), "dp2xtp4": dict(dp=2, tp=4)}


@functools.lru_cache(maxsize=None)
def forward(family: str):
    c = H.Cfg()
    module, ids = H.build(family, c), H.ids(c, BATCH)
    g = shardc.from_torch(module, (ids,))
    return c, g, ids, g.evaluate(ids)


@functools.lru_cache(maxsize=None)
def train_step(family: str):
    c = H.Cfg()
    fn, args = H.sgd_step(family, c, BATCH)
    g = shardc.from_torch(fn, args, capture="make_fx")
    return c, g, args, g.evaluate(*args)


def attention_lines(family: str) -> set[str]:
    cls = H.GPT2Attention if family == "gpt2" else H.LlamaAttention
    lines, first = inspect.getsourcelines(cls.forward)
    return {f"{Path(H.__file__).name}:{first + i}" for i in range(len(lines))}


def tp_params_bytes(g, family: str, tp: int) -> int:
    """Ψ per device under the Megatron specs: the parameter bytes one device holds over tp."""
    prog = shardc.partition(g, Mesh(tp=tp), H.megatron_specs(family))
    return sum(math.prod(local_shape(p.shape, s, prog.mesh)) * p.dtype.itemsize
               for p, s in zip(g.inputs, prog.input_shardings) if is_state(g, p))


def partitioned(family: str, mesh: str, variant: str, train: bool):
    c, g, args, want = train_step(family) if train else forward(family)
    args = args if train else (args,)
    specs = dict(H.megatron_specs(family))
    if variant != "fsdp":  # (FSDP × tp: the plan splits the batch and every parameter over dp)
        batch = [p.name for p in g.inputs if not is_state(g, p) and p.rank]
        # sequence parallel: batch inputs split by sequence over tp too, below the weights' priority
        split = P("dp", "tp", priority=1) if variant.endswith("sp") else P("dp")
        specs.update({n: split for n in batch})
    prog = shardc.partition(g, Mesh(MESHES[mesh]), specs, plan="fsdp" if variant.startswith("fsdp") else None)
    for a, b in zip(prog.simulate(*args), want):
        assert_close(a, b, tol=1e-5)
    inside = attention_lines(family)
    assert not [r for r in prog.collectives if r.kind == "all_gather" and r.source
                and r.source.split("/")[-1] in inside], prog.ledger()
    return c, g, prog


@pytest.mark.parametrize("variant", ["megatron", "sp", "fsdp"])
@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_closed_form_volume(family, mesh, train, variant):
    """Megatron: 2 all-reduces of (b/dp)·s·h per layer forward, as many backward, and the dp
    all-reduce of the Ψ parameter bytes each device holds (+ the loss's sum and count, 8 B).
    Sequence parallel: an all-gather and a reduce-scatter where each all-reduce was (the same
    bytes on the wire, twice the HLO-buffer bytes). FSDP × tp (plan "fsdp" on Megatron specs:
    each parameter stored split over dp too, gathered for use): ZeRO-3 on top of the
    activations' all-reduces: each gathered once (Ψ_dp, the bytes the tp layout holds), the
    gradients reduce-scattered (Ψ_dp again); the few it cannot split over dp (tp-split biases)
    are all-reduced as in DP."""
    c, g, prog = partitioned(family, mesh, variant, train)
    axes = MESHES[mesh]
    act = 2 * c.n_layer * (BATCH // axes["dp"]) * c.seq * c.d * 4 * (2 if train else 1)
    psi = tp_params_bytes(g, family, axes["tp"])
    total = sum(r.bytes for r in prog.collectives)
    if variant == "megatron":
        assert total == act + (psi + 8 if train else 0), prog.ledger()
    elif variant == "sp":
        # (GPT-2's position table gets its gradient from sequence-split rows: scattered into
        # the table, still pending over dp, and reduced once over dp and tp)
        assert total == 2 * act + (psi + 8 if train else 0), prog.ledger()
        assert {r.kind for r in prog.collectives} <= {"all_gather", "reduce_scatter", "all_reduce"}
    else:
        split = [(p, s) for p, s in zip(g.inputs, prog.input_shardings) if is_state(g, p) and "dp" in s.used_axes]
        assert {p for p, _ in split} >= {p for p in g.inputs if is_state(g, p) and p.rank >= 2}
        psi_dp = sum(math.prod(local_shape(p.shape, s, prog.mesh)) * axes["dp"] * p.dtype.itemsize for p, s in split)
        assert total == act + (2 * psi_dp + psi - psi_dp + 8 if train else psi_dp), prog.ledger()
        assert psi - psi_dp <= c.n_layer * 5 * c.d * 4 // axes["tp"]  # only tp-split biases are not split over dp


def fsdp_sp_closed_form(c, g, prog, family: str, axes: dict, train: bool) -> int:
    """FSDP × tp with sequence parallelism, bytes per device: SP's all-gather and reduce-scatter
    of (b/dp)·s·h where Megatron all-reduces (2·act), and ZeRO-3 over the tp layout: each
    parameter split over dp gathered once for use (its tp-layout bytes, Ψ_dp), in training its
    gradient reduce-scattered once (Ψ_dp again), the few not split over dp (tp-split biases)
    all-reduced over dp (Ψ − Ψ_dp), and the loss's sum and count (8 B). State that tp replicates
    (norms, embeddings) gets its gradient summed over tp too (its inputs are split by sequence):
    it is stored over dp and tp, so gathering and reduce-scattering it over both moves the same
    bytes and no all-reduce over tp is left."""
    dp = axes["dp"]
    act = 2 * c.n_layer * (BATCH // dp) * c.seq * c.d * 4 * (2 if train else 1)
    tp_prog = shardc.partition(g, Mesh(tp=axes["tp"]), H.megatron_specs(family))
    use = {p: math.prod(local_shape(p.shape, s, tp_prog.mesh)) * p.dtype.itemsize
           for p, s in zip(g.inputs, tp_prog.input_shardings) if is_state(g, p)}
    stored = dict(zip(g.inputs, prog.input_shardings))
    psi_dp = sum(b for p, b in use.items() if "dp" in stored[p].used_axes)
    rest = sum(use.values()) - psi_dp
    assert rest <= c.n_layer * 5 * c.d * 4 // axes["tp"]  # only tp-split biases are not split over dp
    return 2 * act + (2 * psi_dp + rest + 8 if train else psi_dp)


@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fsdp_with_sequence_parallel(family, mesh, train):
    """FSDP × tp with sequence parallelism (plan "fsdp", Megatron specs, the ids split by
    sequence over tp): simulate == evaluate, no all-gather inside attention, no all-reduce over
    tp (SP moves activations by all-gather and reduce-scatter only), and the closed form of
    fsdp_sp_closed_form, exactly. (GPT-2's position table is read by arange(s): a slice of the
    table, so each device reads the rows of its sequence block, not a vocab-parallel lookup.)"""
    c, g, prog = partitioned(family, mesh, "fsdp+sp", train)
    assert not [r for r in prog.collectives if r.kind == "all_reduce" and "tp" in r.axes and r.bytes > 8], \
        prog.ledger()
    total = sum(r.bytes for r in prog.collectives)
    assert total == fsdp_sp_closed_form(c, g, prog, family, MESHES[mesh], train), prog.ledger()


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


UNEVEN = H.Cfg(d=48, n_head=12, n_kv_head=12, d_ff=192, n_layer=1, seq=8)  # GPT-2 small's 12 heads, narrow


@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_twelve_heads_over_eight_devices_pad_the_head_factor(family, train):
    """12 heads over tp=8: the head factor is padded to 16 (two head slots per device, the
    last four masked) inside the fused QKV / projection dims, so Megatron's two all-reduces per
    layer stay the whole story (a plain split would cut heads apart and gather q, k, v)."""
    c, b = UNEVEN, 2
    if train:
        fn, args = H.sgd_step(family, c, b)
        g = shardc.from_torch(fn, args, capture="make_fx")
    else:
        args = (H.ids(c, b),)
        g = shardc.from_torch(H.build(family, c), args)
    prog = shardc.partition(g, Mesh(tp=8), H.megatron_specs(family))
    per_layer = b * c.seq * c.d * 4
    ars = [r for r in prog.collectives if r.bytes >= per_layer]
    assert [(r.kind, r.bytes) for r in ars] == [("all_reduce", per_layer)] * (2 * c.n_layer * (2 if train else 1))
    assert not [r for r in prog.collectives if r.kind != "all_reduce"], prog.ledger()
    assert sum(r.bytes for r in prog.collectives) - sum(r.bytes for r in ars) <= 8  # the loss's sum and count
    qkv = "model.h.0.attn.c_attn.weight" if family == "gpt2" else "model.layers.0.self_attn.q_proj.weight"
    name = [n for n in g.input_names if n.endswith(qkv) or n.endswith(qkv[len("model."):] + "']")
            or n == qkv[len("model."):]][0]
    assert (c.n_head, ("tp",)) in prog.sharding_of(name).dims[1 if family == "gpt2" else 0].parts
    for x, y in zip(prog.simulate(*args), g.evaluate(*args)):
        assert_close(x, y, tol=1e-5)


def test_a_split_no_factor_can_hold_is_named_in_the_ledger():
    """[8] split 4 ways viewed as [2, 4]: 4 devices cannot split a factor of 2 and the factor of
    4 is minor to it, so the reshape gathers, and the reason says which dim and factors."""
    import torch

    class View(torch.nn.Module):
        def forward(self, x):
            return (x.reshape(2, 4) * 2).sum(1)

    x = torch.arange(8.0)
    g = shardc.from_torch(View(), (x,))
    prog = shardc.partition(g, Mesh(x=4), {"x": P("x")})
    (rec,) = prog.collectives
    assert rec.kind == "all_gather" and "seen as factors [2, 4]: no factor can hold ('x',)" in rec.reason
    np.testing.assert_array_equal(prog.simulate(x)[0], g.evaluate(x)[0])


# GQA: (query heads, KV heads, mesh). d = 32 is below the b·s = 64 tokens of a step, as in any
# real training step: a KV weight's gradient (d × hd per KV head) is then smaller than dK or dV
# (b·s × hd), so the sum repeat_kv leaves in them goes on into the weight gradients
# (12 query heads: d = 48)
GQA = {"2kv_dp2xtp4": (4, 2, dict(dp=2, tp=4)), "2kv_tp8": (8, 2, dict(tp=8)), "8kv_tp8": (16, 8, dict(tp=8)),
       "12q4kv_tp8": (12, 4, dict(tp=8)), "12q4kv_dp2xtp8": (12, 4, dict(dp=2, tp=8))}


@pytest.mark.parametrize("case,train", [("2kv_dp2xtp4", False), ("2kv_dp2xtp4", True), ("2kv_tp8", True),
                                        ("8kv_tp8", True), ("12q4kv_tp8", False), ("12q4kv_tp8", True),
                                        ("12q4kv_dp2xtp8", True)])
def test_fewer_kv_heads_than_devices_replicate_kv_heads(case, train):
    """GQA with 2 KV heads over tp=4: "tp" is seen as tp_0 (2) × tp_1 (2); the KV weights are
    split over tp_0 (one whole KV head per pair of devices, replicated over tp_1, as Megatron
    and vLLM do), every other split over both, so repeat_kv's [kv, rep] heads are kv over tp_0
    and rep over tp_1 and attention needs no collective: the forward is Megatron's 2
    all-reduces per layer (it gathered k and v before: 1.25× here, 1.5× at 8 heads). Training
    adds Megatron's backward and the reduction of each device's gradients over dp, the KV
    weights' over tp_1 too (dK and dV stay pending sums into them). 2 KV heads over tp=8: tp_0
    (2) × tp_1 (4); 8 KV heads over tp=8: one per device, no sub-axes. Uneven: 12 query heads
    over 4 KV heads on tp=8 (tp_0 4 × tp_1 2): each KV head's 3 query heads are padded to 4 over
    tp_1 (two slots per device, one masked on every second device), the same grouping as the
    repeated KV heads, so nothing is gathered (it gathered q, k and v before: 2.2× here)."""
    n_head, n_kv, axes = GQA[case]
    c, b = H.Cfg(n_head=n_head, n_kv_head=n_kv, n_layer=1, d=48 if n_head % 8 else 32, vocab=128), BATCH
    if train:
        fn, args = H.sgd_step("llama", c, b)
        g = shardc.from_torch(fn, args, capture="make_fx")
    else:
        args = (H.ids(c, b),)
        g = shardc.from_torch(H.build("llama", c), args)
    dp = axes.get("dp", 1)
    specs = {**H.megatron_specs("llama"),
             **{p.name: P("dp") for p in g.inputs if p.rank and not is_state(g, p) and dp > 1}}
    prog = shardc.partition(g, Mesh(axes), specs)
    k = [n for n in g.input_names if "k_proj" in n and not n.startswith("out")][0]
    if n_kv < axes["tp"]:
        assert set(prog.mesh.axes) - {"dp"} == {"tp_0", "tp_1"} and prog.mesh.axes["tp_0"] == n_kv, prog.mesh
        assert f"{n_kv} KV heads over {axes['tp']} devices" in prog.notes[0]
        assert prog.sharding_of(k).dims[0].axes == ("tp_0",)
        q = prog.sharding_of(k.replace("k_proj", "q_proj")).dims[0]
        rep = n_head // n_kv
        assert q.layout(c.d) == ((n_kv, ("tp_0",)), (rep, ("tp_1",)), (c.d // n_head, ())) if q.parts else \
            rep % prog.mesh.axes["tp_1"] == 0, q
    else:
        assert prog.mesh.axes == Mesh(axes).axes and prog.sharding_of(k).dims[0].axes == ("tp",)
    for x, y in zip(prog.simulate(*args), g.evaluate(*args)):
        assert_close(x, y, tol=1e-5)
    assert not [r for r in prog.collectives if r.kind == "all_gather"], prog.ledger()
    per_layer = (b // dp) * c.seq * c.d * 4
    total = sum(r.bytes for r in prog.collectives)
    if not train:
        assert [(r.kind, r.bytes) for r in prog.collectives] == [("all_reduce", per_layer)] * 2 * c.n_layer
        return
    held = {p: math.prod(local_shape(p.shape, s, prog.mesh)) * 4 for p, s in zip(g.inputs, prog.input_shardings)
            if is_state(g, p)}
    # gradients reduced: over dp, every parameter a device holds (+ the loss's sum and count);
    # without dp, the KV weights' over the devices sharing a KV head
    kv = sum(v for p, v in held.items() if "k_proj" in p.name or "v_proj" in p.name) if n_kv < axes["tp"] else 0
    grads = sum(held.values()) + 8 if dp > 1 else kv
    assert total == 4 * per_layer * c.n_layer + grads, prog.ledger()


def test_real_size_gqa_training_step_is_the_closed_form():
    """Llama 3 8B's dims (d 4096, 32 heads, 8 KV heads, d_ff 14336, vocab 128256), one layer,
    batch 8 × seq 2048, shape-only: the SGD step on dp2 × tp16 (8 KV heads over 16 devices:
    tp_0 (8) × tp_1 (2)) moves exactly Megatron's 4 all-reduces of (b/dp)·s·h and the dp
    reduction of each device's gradients (the KV weights' over tp_1 too) and the loss's 4 B:
    4,796,235,780 B per device, not only at the tiny sizes above."""
    c, b = H.Cfg(vocab=128256, d=4096, n_head=32, n_kv_head=8, n_layer=1, seq=2048, d_ff=14336), 8
    fn, args = H.sgd_step("llama", c, b, loss="mean", shape_only=True)
    g = shardc.from_torch(fn, args, capture="make_fx")
    assert g.shape_only
    specs = {**H.megatron_specs("llama"), **{p.name: P("dp") for p in g.inputs if p.rank and not is_state(g, p)}}
    prog = shardc.partition(g, Mesh(dp=2, tp=16), specs)
    assert prog.mesh.axes == {"dp": 2, "tp_0": 8, "tp_1": 2}
    held = sum(math.prod(local_shape(p.shape, s, prog.mesh)) * 4 for p, s in zip(g.inputs, prog.input_shardings)
               if is_state(g, p))
    total = sum(r.bytes for r in prog.collectives)
    assert total == 4 * (b // 2) * c.seq * c.d * 4 + held + 4 == 4_796_235_780, prog.ledger()
