"""Kernel fusion: kernels per step and bytes moved through memory, per zoo model.

    cd /work/main && .venv/bin/python bench/fusion.py [--models gpt2,llama] [--size tiny]
        [--steps forward,train] [--layouts single,tp,dp] [--target triton|pallas] [--batch 4]
        [--optimizer sgd,adam,adamw] [--frontends jax,torch,hf] [--json PATH]
    (real widths: --models gpt2,llama --size small --batch 1, GPT-2 small's 768 wide, 1024 long)
    (PyTorch captures: --frontends torch,hf --steps train --batch 1 and 4)

For each zoo model, step and layout, the per-device program goes through shardc.compile and we
count, per device per step (--frontends: the JAX capture, the default; the zoo's torch twin; or the
Hugging Face-style module of models/hf_style.py, GPT-2 and Llama only: Conv1D with a fused QKV or
separate q/k/v projections, F.scaled_dot_product_attention, GQA's repeat_kv, F.cross_entropy over
flattened logits (HF_LOSS), Megatron specs under tp; torch writes its matmuls on merged [b·s] and [b·h] views,
which ir/unmerge.py gives back to the dots after partitioning):
  - kernels: kernel launches in the plan, against the unfused program (one kernel per IR op);
  - bytes: Σ over kernels of their input and output buffers, against the unfused program's bytes
    (every op reads its operands and writes its result) and the matmul-bound minimum (every
    dot_general's operands read once and its result written once; everything else fused away).
A "gpt2 layer" row isolates one transformer layer: the difference between n_layer=2 and 1.
Flash attention can go below the matmul bound: the bound counts the scores QKᵀ written and read.
The layer's budget (issue: ≤ 1.2× the matmul bound, < 0.4× unfused, ≤ 8 kernels) is checked
for every layout: under Megatron TP the bound shrinks with the shards while the residual stream
stays full size per device, so layer norms are matmul prologues (statistics per row block, the
normalized rows never stored) and each residual sum is computed in the next matmul's operand loads.
Training steps (issue #17's budget: <= 1.3x the matmul bound) are printed against it: their
logits, attention scores, dP, chained dots (an expert's dy·Wᵀ inside its weight gradient's K loop)
and an MLP's hidden x·W1 where every reader rebuilds it cheaper than storing it are rebuilt per tile (codegen/fused_recompute.py), bias gradients and
norm-backward sums computed in the matmuls that read their inputs and, under tp, dγ/dβ in the
norm backward's row kernel (codegen/fused_sums.py), dK beside dVᵀ in one pass over the queries and
summed input gradients (dk·Wk + dv·Wv) in one K loop (codegen/fused_siblings.py), norm and softmax
statistics in the prologue of the matmul that reads them (codegen/fused_stats.py), attention's
forward as one flash kernel storing the softmax statistics (codegen/fused_flash.py: QKᵀ built once,
not three times), and where few tokens meet each weight (batch 1, --size mini/small; an expert's
capacity) a weight's input gradient, gradient and SGD update in one kernel reading it once
(codegen/fused_weights.py: the bound counts W three times, read forward, read for dX, dW written,
and the update fused into the dW matmul read it a fourth time).
The bound counts ragged_dots (grouped matmuls) as dot_generals. The zoo MoE is the capacity form
(scatter dispatch into [experts, capacity, d] buffers, batched dot_generals, gather combine), so its
bound is its expert, router and gradient matmuls, and also its cumsum, which the frontend writes as
a dot with an i32 [k·T, k·T] triangular matrix built from iotas: the bound counts that dot's other
operand and result, not the matrix (operands made of constants alone are built in a kernel's operand
loads, never read; counting them would lower every ratio).
--optimizer picks the training steps' optimizers (one row each; default sgd). An Adam or AdamW
step also reads and writes its state (the moments m and v and the step count): its bound is the
matmul bound plus each optimizer-state tensor read once and written once (`state_bytes`), and its
rows are held to the same 1.3x. The parameter update itself is in no bound (SGD's neither): it
reads each weight once more than the matmul bound's forward and dX reads, and writes it instead
of dW. Standalone updates (biases, norm weights, embeddings, moments) run as one multi-tensor
launch (codegen/fused_multi.py); `multi` counts them.

Dot FLOPs: what the kernels execute per device per step (each dot a kernel computes or rebuilds,
at 2·|result|·K, times the share of its loop's blocks the kernel visits at its GPU launch config)
against the dense count (every block visited). Causal attention skips the blocks its mask zeroes
(codegen/masked_blocks.py), so "/dense" drops below 1 and "attn% dense>run" shows attention's share
of the dot FLOPs before and after skipping.
Writes a table and bench/results/fusion.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# bytes are counted for Pallas plans whether or not each kernel fits a TPU core's VMEM (at real
# widths the LM head's kernels do not yet): bench/pallas_vmem.py measures the footprints
os.environ.setdefault("SHARDC_PALLAS_TPU", "none")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shardc  # noqa: E402
from shardc import Mesh, models, partition  # noqa: E402
from shardc.codegen.stats import summary  # noqa: E402
from shardc.models import hf_style  # noqa: E402
from shardc.models.optim import check_optimizer  # noqa: E402

HF_LOSS = "cross_entropy"   # HF's own: F.cross_entropy over logits.reshape(-1, V) (the twins': "mean")
LAYOUTS = {"single": (dict(dp=1), False, None), "dp": (dict(dp=2), False, "dp"), "tp": (dict(tp=2), True, None)}


def program(name: str, size: str, step: str, layout: str, batch: int, optimizer: str = "sgd",
            frontend: str = "jax", **overrides):
    m = models.get(f"{name}:{size}", **overrides)
    axes, tp, plan = LAYOUTS[layout]
    if frontend == "hf":
        if optimizer != "sgd":
            raise SystemExit(f"--frontends hf: hf_style's training step is SGD (not {optimizer})")
        c = hf_style.Cfg.of(m.config)
        if step == "train":
            fn, args = hf_style.sgd_step(name, c, batch, lr=0.1, loss=HF_LOSS, shape_only=m.shape_only)
            g = shardc.from_torch(fn, args, capture="make_fx")
        else:
            g = shardc.from_torch(hf_style.build(name, c), (hf_style.ids(c, batch),))
        return partition(g, Mesh(axes), hf_style.megatron_specs(name) if tp else {}, plan)
    g, _ = m.capture(step == "train", frontend, batch, lr=0.1, optimizer=optimizer)
    return partition(g, Mesh(axes), m.tp_specs() if tp else {}, plan)


def measure(prog, target: str = "triton") -> dict:
    t = time.perf_counter()
    exe = shardc.compile(prog, target=target)
    row = summary(exe)
    row["compile_s"] = time.perf_counter() - t
    row["attention_kernels"] = sum(k.kind == "attention" for k in exe.kernels)
    row["multi_kernels"] = sum(k.kind == "multi" for k in exe.kernels)
    row["state_bytes"] = state_bytes(prog.local)
    return row


def state_bytes(g) -> int:
    """The optimizer state (the zoo's train steps name it opt_state: Adam's m, v and step count)
    read once and written once, per device: what an Adam step moves on top of the matmul bound."""
    return 2 * sum(p.nbytes for p in g.inputs if (p.name or "").startswith("opt_state"))


def _share(r: dict, part: str, whole: str) -> float:
    return 100.0 * r[part] / r[whole] if r[whole] else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,gpt2,llama,moe")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--steps", default="forward,train")
    ap.add_argument("--layouts", default="single,tp")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--target", default="triton", choices=("triton", "pallas"))
    ap.add_argument("--optimizer", default="sgd", help="training steps' optimizers: sgd,adam,adamw")
    ap.add_argument("--frontends", default="jax", help="jax, torch (the zoo's twins), hf (models/hf_style.py)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "fusion.json"))
    a = ap.parse_args(argv)
    optimizers = a.optimizer.split(",")
    for o in optimizers:
        check_optimizer(o)
    rows = []
    for frontend in a.frontends.split(","):
        for name in a.models.split(","):
            if frontend == "hf" and name not in ("gpt2", "llama"):
                continue  # (hf_style has GPT-2 and Llama)
            for step in a.steps.split(","):
                for opt in (optimizers if step == "train" else ["-"]):
                    for layout in a.layouts.split(","):
                        prog = program(name, a.size, step, layout, a.batch, "sgd" if opt == "-" else opt, frontend)
                        r = measure(prog, a.target)
                        r["bound_bytes"] = r["matmul_bound_bytes"] + r["state_bytes"]
                        rows.append({"model": name if frontend == "jax" else f"{name} {frontend}", "frontend": frontend,
                                     "step": step, "optimizer": opt, "layout": layout, **r})
    if "gpt2" in a.models.split(",") and "jax" in a.frontends.split(","):
        for layout in a.layouts.split(","):
            one, two = (measure(program("gpt2", a.size, "forward", layout, a.batch, n_layer=n), a.target)
                        for n in (1, 2))
            layer = {k: two[k] - one[k] for k in one if k != "compile_s"}
            layer["bound_bytes"] = layer["matmul_bound_bytes"] + layer["state_bytes"]
            rows.append({"model": "gpt2 layer", "frontend": "jax", "step": "forward", "optimizer": "-", "layout": layout, **layer,
                         "compile_s": two["compile_s"]})
    head = (f"{'model':<12}{'step':<9}{'opt':<6}{'layout':<8}{'kernels':>8}{'multi':>6}{'unfused':>9}{'KiB':>9}"
            f"{'unfused':>9}{'bound':>9}{'/unfused':>10}{'/bound':>8}{'attn':>6}{'dot MFLOP':>11}{'/dense':>8}"
            f"{'attn% dense>run':>16}{'compile s':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<12}{r['step']:<9}{r['optimizer']:<6}{r['layout']:<8}{r['kernels']:>8}{r['multi_kernels']:>6}"
              f"{r['unfused_kernels']:>9}{r['bytes'] / 1024:>9.1f}{r['unfused_bytes'] / 1024:>9.1f}"
              f"{r['bound_bytes'] / 1024:>9.1f}{r['bytes'] / r['unfused_bytes']:>10.3f}"
              f"{r['bytes'] / max(r['bound_bytes'], 1):>8.3f}{r['attention_kernels']:>6}"
              f"{r['flops'] / 1e6:>11.1f}{r['flops'] / max(r['dense_flops'], 1):>8.3f}"
              f"{_share(r, 'attention_dense_flops', 'dense_flops'):>9.1f}>{_share(r, 'attention_flops', 'flops'):<6.1f}"
              f"{r['compile_s']:>10.2f}")
    print("bound: the matmul bound (every dot's operands read once, its result written once), plus, for Adam"
          " and AdamW, each optimizer-state tensor read once and written once")
    for r in rows:
        if r["model"] == "gpt2 layer":
            ok = (r["bytes"] <= 1.2 * r["matmul_bound_bytes"] and r["bytes"] < 0.4 * r["unfused_bytes"]
                  and r["kernels"] <= 8)
            r["within_budget"] = ok
            print(f"gpt2 layer {r['layout']}: {r['bytes'] / r['matmul_bound_bytes']:.3f}x matmul bound, "
                  f"{r['bytes'] / r['unfused_bytes']:.3f}x unfused, {r['kernels']} kernels: "
                  f"{'within' if ok else 'OVER'} budget (<=1.2x, <0.4x, <=8)")
    for r in rows:  # training steps: logits, scores and norm statistics fused (issue #17: <= 1.3x)
        if r["step"] == "train" and not r["model"].startswith("mlp"):
            ratio = r["bytes"] / r["bound_bytes"]
            r["within_train_budget"] = ratio <= 1.3
            print(f"{r['model']} train {r['optimizer']} {r['layout']}: {ratio:.3f}x the bound: "
                  f"{'within' if ratio <= 1.3 else 'OVER'} the training budget (<=1.3x)")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"size": a.size, "batch": a.batch, "target": a.target,
                                        "optimizers": optimizers, "frontends": a.frontends, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
