"""ir/unmerge.py: torch's matmuls on merged views ([b·s, d] for a linear layer, [b·h, s, hd] for
bmm and F.scaled_dot_product_attention, a weight gradient contracting [b·s] rows) get their dims
back on the per-device program, so a PyTorch training step written the Hugging Face way
(models/hf_style.py: Conv1D with a fused QKV, separate q/k/v projections, GQA's repeat_kv, uneven
head counts, F.cross_entropy over flattened logits) fuses as its JAX capture does: attention
scores, dP, dS and the logits are never stored, at batch 1 and 4. Kernels equal numpy of their IR
nodes (Triton interpreter, Pallas interpret mode), the step equals Graph.evaluate."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, partition
from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
from shardc.codegen.fused_recompute import is_recomputed
from shardc.ir import Op
from shardc.ir.unmerge import is_view, merge_runs, unmerge
from shardc.models import hf_style as H
from shardc.testing import rel_err
from test_codegen_pallas import export_all, run_and_check
from test_codegen_zoo import run_and_check_kernels

SEQ, VOCAB = 16, 128   # (no other value of these steps ends in [16, 16] or [.., 128] at batch·seq rows)
CFGS = {  # family, shapes (head dims and sequence powers of two, as the flash rules tile them)
    "gpt2": ("gpt2", H.Cfg(vocab=VOCAB, d=32, n_head=4, n_kv_head=4, n_layer=1, seq=SEQ, d_ff=64)),
    "llama-gqa": ("llama", H.Cfg(vocab=VOCAB, d=32, n_head=4, n_kv_head=2, n_layer=1, seq=SEQ, d_ff=64)),
    "llama-3-heads": ("llama", H.Cfg(vocab=VOCAB, d=24, n_head=3, n_kv_head=1, n_layer=1, seq=SEQ, d_ff=48)),
}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def _step(case: str, batch: int, tp: int = 1, loss: str = "cross_entropy"):
    family, c = CFGS[case]
    fn, args = H.sgd_step(family, c, batch, lr=0.1, seed=batch, loss=loss)
    g = shardc.from_torch(fn, args, capture="make_fx")
    prog = partition(g, Mesh(tp=tp), H.megatron_specs(family) if tp > 1 else {})
    return g, args, prog


def _stored(exe):
    return {x for k in exe.kernels for x in k.inputs + k.outputs}


@pytest.mark.parametrize("case,batch", [("gpt2", 1), ("gpt2", 4), ("llama-gqa", 1), ("llama-gqa", 4),
                                        ("llama-3-heads", 4)])
def test_hf_training_step_stores_no_scores_and_no_logits(case, batch):
    """No kernel reads or writes a [b, h, s, s] value (scores, P, dP, dS), at batch 1 too; at
    batch 4 none moves one of the logits' size (at batch 1 storing the tiny logits is the cheaper
    plan, for the JAX capture too); no dot has a batch dim that merges two (bmm's [b·h]) or
    contracts the merged [b·s] rows of two views (a weight gradient). (HF's F.cross_entropy over
    logits.reshape(-1, V): its log-softmax and target pick follow the unmerged logits.)"""
    g, args, prog = _step(case, batch)

    def merged(x, d):   # the sizes > 1 that view x merges into its dim d
        runs = merge_runs(x.inputs[0].shape, x.shape) if is_view(x) else None
        return [x.inputs[0].shape[i] for i in runs[d] if x.inputs[0].shape[i] > 1] if runs else []
    for n in prog.local.nodes:
        if n.op is Op.DOT_GENERAL:
            (a, b), at = n.inputs, n.attrs
            for x, dims in ((a, at["lhs_batch"]), (b, at["rhs_batch"])):  # (GQA's repeat_kv: a view of a broadcast)
                assert x.inputs and x.inputs[0].op is Op.BROADCAST or all(len(merged(x, d)) <= 1 for d in dims), \
                    n.describe()
            for l, r in zip(at["lhs_contract"], at["rhs_contract"]):
                assert len(merged(a, l)) <= 1 or merged(a, l) != merged(b, r), n.describe()
    for target in ("triton", "pallas"):
        exe = shardc.compile(prog, target=target)
        assert any(is_recomputed(n) for k in exe.kernels for n in k.ops), target
        for x in _stored(exe):
            assert x.rank < 4 or x.shape[-2:] != (SEQ, SEQ), f"{target}: {x.describe()} stored"
            assert batch < 4 or not (x.rank and x.shape[-1] == VOCAB and x.size >= batch * SEQ * VOCAB), \
                f"{target}: {x.describe()} stored"


@pytest.mark.parametrize("target,case,batch,tp", [("triton", "llama-gqa", 1, 2),
                                                  pytest.param("pallas", "gpt2", 1, 1, marks=pytest.mark.slow)])
def test_hf_training_step_kernels_equal_numpy(target, case, batch, tp):
    """Every kernel of the unmerged program equals numpy of its IR nodes, the step equals
    Graph.evaluate of the capture (fresh random ids and weights; HF's F.cross_entropy, its
    target's log-probability taken from the unmerged rows), and the Pallas kernels lower for TPU."""
    g, args, prog = _step(case, batch, tp)
    check = run_and_check_kernels if target == "triton" else run_and_check
    exe, got = check(prog, args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    if target == "pallas":
        export_all(exe.kernels)


def test_unmerge_keeps_values_and_leaves_jax_dots_alone():
    """A merge that is not a dot's (a keepdims squeeze) is left as captured; a graph with no
    merged dot (the JAX capture's) comes back unchanged; unmerged, a torch linear layer's
    [b·s] rows and bmm's [b·h] batch become dot dims and evaluate as captured."""
    import torch

    def f(x, w, q, k):
        y = (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[1])
        s = torch.bmm(q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]).transpose(1, 2))
        return y.sum(-1, keepdim=True).squeeze(-1), s.reshape(*q.shape[:2], *s.shape[1:]).softmax(-1)

    gen = torch.Generator().manual_seed(7)
    args = (torch.randn(2, 3, 4, generator=gen), torch.randn(4, 5, generator=gen),
            torch.randn(2, 3, 6, 4, generator=gen), torch.randn(2, 3, 7, 4, generator=gen))
    g = shardc.from_torch(f, args)
    u, new = unmerge(g)
    dots = [n for n in u.nodes if n.op is Op.DOT_GENERAL]
    assert sorted(n.shape for n in dots) == [(2, 3, 5), (2, 3, 6, 7)]
    for a, b in zip(u.evaluate(*args), g.evaluate(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert unmerge(u)[0] is u
    assert all(o in new for o in g.outputs)


@pytest.mark.slow
def test_hf_rebuilders_compile_for_hopper():
    """The HF Llama step's kernels that rebuild scores or logits compile for sm_90 (AOT)."""
    g, args, prog = _step("llama-gqa", 4)
    kernels = [k for k in shardc.compile(prog).kernels if any(is_recomputed(n) for n in k.ops)]
    assert kernels
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])
