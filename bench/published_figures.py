"""Modeled pipeline-parallel training throughput beside published figures.

    .venv/bin/python bench/published_figures.py [--json PATH]

Each row is a published training configuration. shardc captures the model shape-only with three
layers over three pipeline stages (the real tensor- and data-parallel mesh, the real microbatch),
partitions it with pipeline=, analyzes it on the preset, and reads the full model off it
(partition/pipeline_analysis.at_depth): every stage's times are affine in its layers (a middle
stage is one layer), then the schedule's slot lists run again for the real stage and microbatch
counts.
Throughput per GPU is counted as the source counts it (the paper's FLOP formula), over the
modeled step time.

Sources:
  - Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
    Megatron-LM" (SC'21), §5.1: GPT-3 175B (96 layers, h=12,288, 96 heads; vocabulary 51,200,
    sequence 2,048 as all their models) on 1,024 A100s at batch 1,536: 140 teraFLOP/s per GPU,
    FLOPs counted as 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) (full activation recomputation
    included). Tensor and pipeline sizes as the issue states them: t=8, p=16 (so d=8), microbatch
    1, PipeDream-Flush (1F1B).
  - "The Llama 3 Herd of Models" (Meta, 2024), Table 4: Llama 3 405B on 8,192 H100s, TP=8, CP=1,
    PP=16, DP=64, sequence 8,192, batch 32 sequences per data-parallel group (16M tokens): 430
    TFLOP/s per GPU (BF16 MFU 43%), model FLOPs 6·N·tokens plus attention. Their §3.3.2: an
    interleaved schedule with V stages per pipeline rank, no V given for this run; V=2 is the one
    their Figure 6 draws. Microbatch 1 assumed; no activation recomputation; the 126 layers are
    modeled as 32 stages of 4 (Meta gave the first and last stage one fewer, for the embedding
    and the head).
"""
from __future__ import annotations

import argparse
import json
import time

ROWS = {
    "gpt3-175b-a100": dict(model="gpt3:175b", overrides={"vocab_size": 51200}, hardware="a100", t=8, p=16, d=8,
                           batch=1536, seq=2048, layers=96, published_tflops=140.0, recompute="full",
                           schedule="1f1b", chunks=1,
                           source="Narayanan et al. SC'21, Sec. 5.1 (GPT-3 175B, 1,024 A100, batch 1,536)"),
    "llama3-405b-h100": dict(model="llama3:405b", overrides={"seq_len": 8192}, hardware="h100", t=8, p=16, d=64,
                             batch=2048, seq=8192, layers=128, published_tflops=430.0, recompute="none",
                             schedule="interleaved-1f1b", chunks=2,
                             source="Llama 3 Herd of Models, Table 4 (405B, 8,192 H100, TP8 PP16 DP64)"),
}


def narayanan_flops(batch, seq, layers, h, vocab) -> float:
    """FLOPs per iteration with full recomputation (Narayanan et al. 2021, eq. in Sec. 5.1)."""
    return 96 * batch * seq * layers * h * h * (1 + seq / (6 * h) + vocab / (16 * layers * h))


def model_flops(m, batch, seq) -> float:
    """6·N·tokens plus attention's 12·l·h·s per token (forward and backward, no recomputation)."""
    c = m.config
    return 6 * c.num_params() * batch * seq + 12 * c.n_layer * c.d_model * seq * batch * seq


def modeled(name: str, row: dict):
    """(PipelineAnalysis at full depth, model, seconds spent) for one published row."""
    import shardc
    from shardc import Mesh, P, models
    from shardc.partition.pipeline_analysis import at_depth
    t0 = time.time()
    m = models.get(row["model"], n_layer=3, **row["overrides"])             # 3 stages of one layer
    g, _ = m.capture(train=True, batch=3 * row["d"], optimizer="adam")      # microbatch 1
    specs = {n: P("dp") for n in g.input_names if n.startswith("args")}
    specs.update(m.tp_specs())
    vocab = "wte.weight" if "gpt" in row["model"] else "embed_tokens.weight"
    specs.update({n: P("tp", None) for n in g.input_names if vocab in n or "lm_head.weight" in n})
    mesh = Mesh({"pp": 3, "dp": row["d"], "tp": row["t"]})
    prog = shardc.partition(g, mesh, specs, pipeline=shardc.Pipeline("pp", 3, "1f1b"))
    small = shardc.analyze(prog, hardware=row["hardware"], recompute=row["recompute"])
    full = models.get(row["model"], **row["overrides"])
    per_stage = row["layers"] // (row["p"] * row["chunks"])
    a = at_depth(small, per_stage, row["p"], row["batch"] // row["d"], row["schedule"], row["chunks"])
    return a, full, time.time() - t0


def figures(names=None) -> dict:
    out = {}
    for name, row in ROWS.items():
        if names and name not in names:
            continue
        a, m, secs = modeled(name, row)
        gpus = row["t"] * row["p"] * row["d"]
        c = m.config
        if name.startswith("gpt3"):
            flops = narayanan_flops(row["batch"], row["seq"], c.n_layer, c.d_model, c.vocab_size)
        else:
            flops = model_flops(m, row["batch"], row["seq"])
        tflops = flops / (a.step_s * gpus) / 1e12
        out[name] = {"published_tflops_per_gpu": row["published_tflops"], "modeled_tflops_per_gpu": tflops,
                     "ratio": tflops / row["published_tflops"], "modeled_step_s": a.step_s,
                     "bubble_fraction": a.bubble_fraction, "stage_forward_s": a.stage_forward_s[1],
                     "stage_backward_s": a.stage_backward_s[1], "gpus": gpus, "source": row["source"],
                     "seconds": secs}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated row names")
    args = ap.parse_args()
    res = figures(args.only.split(",") if args.only else None)
    print(f"{'row':<18} {'GPUs':>6} {'published':>10} {'modeled':>9} {'ratio':>6} {'step s':>8} {'bubble':>7}")
    for name, r in res.items():
        print(f"{name:<18} {r['gpus']:>6} {r['published_tflops_per_gpu']:>10.0f} {r['modeled_tflops_per_gpu']:>9.1f} "
              f"{r['ratio']:>6.2f} {r['modeled_step_s']:>8.2f} {r['bubble_fraction']:>7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
