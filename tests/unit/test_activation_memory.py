"""A GPT layer's saved activations against Korthikanti et al., "Reducing Activation Recomputation
in Large Transformer Models" (2022), section 4: per layer, in bytes with 16-bit activations,
s·b·h·(34 + 5·a·s/h) unsplit, s·b·h·(10 + 24/t + 5·a·s/(h·t)) with tensor parallelism over t,
s·b·h·(34/t + 5·a·s/(h·t)) with sequence parallelism too. Without dropout (the zoo has none) the
masks (s·b·h per dropout after attention and after the MLP, a·s²·b for attention's) and the
dropped-out softmax copy (2·a·s²·b) go: 8 + 24/t + 2·a·s/(h·t), and 32/t + 2·a·s/(h·t) with SP.

The captured program's backward reads more (autodiff of decomposed ops saves layer norm's x−μ
twice and (x−μ)·rstd, GELU's tanh terms, softmax's exp): 1.89× the formula with TP and 2.08×
with SP here. `kept_values` counts what a fusing implementation keeps (memory.py); the figure
`analyze` reports is that one."""
import functools

import pytest

import shardc
from shardc import Mesh, models
from shardc.analysis.memory import kept_values, saved_values
from shardc.partition.plans import sequence_parallel_specs

H, HEADS, S, B, T = 256, 8, 128, 2, 2


@functools.lru_cache(maxsize=None)
def captured(n_layer: int):
    m = models.get("gpt2:small", n_layer=n_layer, d_model=H, n_head=HEADS, seq_len=S, vocab_size=512)
    return m, m.capture(train=True, batch=B, shape_only=True, dtype="bf16")[0]


def per_layer(sp: bool) -> tuple[int, int]:
    """(captured saved bytes, kept bytes) of one layer: 2 layers less 1 layer, per device."""
    out = []
    for n_layer in (1, 2):
        m, g = captured(n_layer)
        specs = dict(m.tp_specs())
        if sp:
            specs.update(sequence_parallel_specs(g))
        prog = shardc.partition(g, Mesh({"tp": T}), specs=specs, passes=())
        forward, batch, saved = saved_values(g, prog.local)
        kept = kept_values(prog.local, forward, batch, saved)
        out.append((sum(n.nbytes for n in saved), sum(n.nbytes for n in kept)))
    return out[1][0] - out[0][0], out[1][1] - out[0][1]


@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp+sp"])
def test_gpt_layer_activations_match_korthikanti(sp):
    sbh = S * B * H
    formula = sbh * ((32 / T if sp else 8 + 24 / T) + 2 * HEADS * S / (H * T))
    captured, kept = per_layer(sp)
    assert kept == pytest.approx(formula, rel=0.02)
    assert captured > 1.5 * formula      # what autodiff's backward reads, before the model's rules


def test_analyze_reports_kept_activations():
    m, g = captured(1)
    prog = shardc.partition(g, Mesh({"tp": T}), specs=m.tp_specs(), passes=())
    a = shardc.analyze(prog, "h100")
    kept = kept_values(prog.local, *saved_values(g, prog.local))
    assert a.memory["activations"] == sum(n.nbytes for n in kept)
    assert a.memory["peak"] >= a.memory["params"] + a.memory["activations"]
