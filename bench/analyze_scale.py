"""Production-scale analysis: time and memory of capture + partition + analyze for Llama 3 70B and
405B training steps at full depth (their identical layers are one repeated block, partitioned
once: ir/blocks.py), GPT-3 175B's FLOPs against Narayanan et al.'s closed forms, and (with
--extrapolate) Llama 3 70B's depth extrapolation from 2 and 4 layers against its full depth.

    .venv/bin/python bench/analyze_scale.py [--extrapolate] [--json PATH]

Each case runs in a fresh process (so its peak RSS is its own); times are wall-clock on this
machine (noisy when shared), memory is the process's peak resident set.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (model, mesh, batch, seq, depths to extrapolate from, or None for full depth)
    "llama3-70b (fsdp=32 x tp=8, 80 layers, full depth)": ("llama3:70b", {"fsdp": 32, "tp": 8}, 256, 4096, None),
    "llama3-405b (fsdp=256 x tp=8, 126 layers, full depth)": ("llama3:405b", {"fsdp": 256, "tp": 8}, 2048, 4096, None),
    "gpt3-175b (tp=8, 96 layers, full depth)": ("gpt3:175b", {"tp": 8}, 1, 2048, None),
}
EXTRAPOLATED = {"llama3-70b (fsdp=32 x tp=8, 2,4 -> 80 layers)": ("llama3:70b", {"fsdp": 32, "tp": 8}, 256, 4096, (2, 4))}

CHILD = r'''
import json, resource, sys, time
import shardc
from shardc import Mesh, models
name, mesh, batch, seq, depths = json.loads(sys.argv[1])
t0 = time.perf_counter()
def at(layers):
    m = models.get(name, seq_len=seq, **({"n_layer": layers} if layers else {}))
    g, _ = m.capture(train=True, batch=batch, optimizer="adam")
    specs = m.tp_specs("tp") if "tp" in mesh else {}
    plan = "fsdp" if "fsdp" in mesh else ("dp" if len(mesh) > 1 or "tp" not in mesh else None)
    return shardc.analyze(shardc.partition(g, Mesh(mesh), specs, plan), "h200")
depth = models.get(name).config.n_layer
a = shardc.analysis.extrapolate(at(depths[0]), at(depths[1]), depths[0], depths[1], depth) if depths else at(None)
out = a.to_json()
out["seconds"] = time.perf_counter() - t0
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
out["depth"] = depth
print(json.dumps(out))
'''


def run_case(model, mesh, batch, seq, depths) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([model, mesh, batch, seq, depths])],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def narayanan(B, s, l, h, V, recompute=False) -> float:
    if recompute:
        return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    return 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extrapolate", action="store_true",
                    help="also extrapolate Llama 3 70B from 2 and 4 layers and compare with its full depth")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "analyze_scale.json"))
    args = ap.parse_args()
    cases = {**CASES, **(EXTRAPOLATED if args.extrapolate else {})}
    rows = {}
    for label, spec in cases.items():
        t = time.perf_counter()
        rows[label] = r = run_case(*spec)
        m = r["memory"]
        print(f"{label}: {r['seconds']:.1f} s in-process ({time.perf_counter() - t:.1f} s with start-up), "
              f"peak RSS {r['peak_rss_gb']:.2f} GB; per device params {m['params'] / 1e9:.2f} GB, grads "
              f"{m['grads'] / 1e9:.2f}, optimizer {m['optimizer'] / 1e9:.2f}, activations {m['activations'] / 1e9:.1f}, "
              f"peak {m['peak'] / 1e9:.1f} GB ({'fits' if r['fits'] else 'does not fit'} in 141 GB); "
              f"step {r['step_s']:.2f} s, MFU {r['mfu'] * 100:.1f}%", flush=True)
    g = rows["gpt3-175b (tp=8, 96 layers, full depth)"]
    closed = narayanan(1, 2048, 96, 12288, 50257)
    print(f"GPT-3 175B model FLOPs per step (B=1, s=2048): {g['model_flops']:.4e} vs Narayanan "
          f"72·B·s·l·h²(...) {closed:.4e}: ratio {g['model_flops'] / closed:.5f}")
    rows["gpt3_flops_vs_closed_form"] = g["model_flops"] / closed
    if args.extrapolate:
        full = rows["llama3-70b (fsdp=32 x tp=8, 80 layers, full depth)"]
        ext = rows["llama3-70b (fsdp=32 x tp=8, 2,4 -> 80 layers)"]
        worst = max(abs(ext[k] - full[k]) / abs(full[k]) for k in ("flops", "step_s", "compute_s", "comm_s"))
        worst = max(worst, max(abs(ext["memory"][k] - full["memory"][k]) / full["memory"][k]
                               for k in full["memory"] if full["memory"][k]))
        print(f"Llama 3 70B: extrapolated vs full depth, largest relative difference {worst:.2e}")
        rows["llama3_70b_extrapolation_error"] = worst
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
