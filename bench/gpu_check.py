"""One call on a machine with a GPU: compile, check and time shardc's kernels and a zoo model's
partitioned training step, in under 8 minutes, and print the issue's bars last.

    .venv/bin/python bench/gpu_check.py [--budget-s 400] [--tune-s 3] [--no-torch-compile] [--json PATH]
    .venv/bin/python bench/gpu_check.py --rehearse     # every step on the CPU at small sizes (~2 min)

Without a GPU it says so and exits 0. With one (GPU 0 is used):
1. the machine: GPU name, toolchain, measured copy bandwidth, bf16 peak of its hardware preset;
2. bench/kernels.py's cases at GPU sizes (bf16): each kernel autotuned on the GPU first
   (roofline-pruned candidates under do_bench, --tune-s seconds per kernel; a warm tuning
   database times nothing), the result checked against torch eager, timed against torch eager,
   torch.compile and torch.matmul; one of them is a GPT-2 layer (the zoo's GPT2Block, GPT-2 small);
3. the zoo's GPT-2 (GPT-2 small widths, 2 layers, f32) SGD training step, captured from torch,
   partitioned over dp=2 x tp=2, every device's kernels run on the one GPU in turn with exact
   collectives in between (runtime/serial.py): checked against the numpy reference, timed, and
   put beside torch eager running the unpartitioned step on the same GPU.
Steps run while the --budget-s deadline allows (a skipped step is listed). Then the bars:
memory-bound kernels at least 80% of the measured copy bandwidth, matmuls at least 85% of
torch.matmul's speed, the GPT-2 layer at least 1.1x torch.compile's. Exit code: 0 when every
result is right and every bar is met, 1 when a result is wrong or a step failed, 2 when only a
bar is missed. Writes bench/results/gpu_check.json. --rehearse runs the same steps on a CPU
machine (interpreter, small sizes, no tuning) to check the script itself before a GPU is lent
(exit 0 when every result is right: interpreter times cannot meet a GPU's bars).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

NO_GPU = "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check; exiting 0"
# the bars: (what, threshold)
BARS = {"memory": ("GB/s over measured copy GB/s", 0.80), "matmul": ("speed over torch.matmul's", 0.85),
        "layer": ("speed over torch.compile's", 1.10)}
ORDER = ["matmul", "matmul_bias_gelu", "layer_norm", "rms_norm", "softmax", "cross_entropy", "adamw_update",
         "gpt2_layer", "train_step", "attention_fwd", "attention_bwd"]


def _bench_kernels():
    spec = importlib.util.spec_from_file_location("bench_kernels", HERE / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def train_step(kb, m, log) -> dict:
    """The zoo GPT-2's SGD step on dp=2 x tp=2, every device on the one GPU: error and times
    (rehearsed on the CPU: gpt2:tiny, kernels interpreted)."""
    import torch

    import shardc
    from shardc import Mesh, models, partition
    from shardc.runtime.serial import DevicePlan
    from shardc.testing import rel_err
    t0 = time.perf_counter()
    model = models.get("gpt2:small", n_layer=2) if m.device == "cuda" else models.get("gpt2:tiny")
    g, args = model.capture(train=True, frontend="torch", batch=2)
    prog = partition(g, Mesh(dp=2, tp=2), model.tp_specs(), "dp")
    exe = shardc.compile(prog)
    log(f"  train step: captured, partitioned, {len(exe.kernels)} kernels compiled in {time.perf_counter() - t0:.1f} s")
    plan = DevicePlan(exe, m.device)
    got = plan.run(*args)
    want = g.evaluate(*args)
    err = max(rel_err(a, b) for a, b in zip(got, want))
    blocks = plan.load(*args)
    with torch.no_grad():
        shardc_ms = kb.time_ms(lambda: plan.step(blocks), m.device)
    fn, _ = model.torch_train_step("sgd")
    to = lambda a: {k: v.to(m.device) for k, v in a.items()} if isinstance(a, dict) else a.to(m.device)
    dev_args = tuple(to(a) for a in args)
    eager_ms = kb.time_ms(lambda: fn(*dev_args), m.device)
    return {"case": "train_step", "kind": "step", "what": f"{model.name}:{model.size} SGD step, dp=2 x tp=2 on one device",
            "kernels": len(exe.kernels), "collectives": len(prog.collectives), "max_rel_err": err,
            "ok": bool(err <= 2e-4), "shardc_ms": shardc_ms, "eager_ms": eager_ms, "seconds": time.perf_counter() - t0}


def bars(rows: list[dict], m) -> list[dict]:
    """Each measured row against its bar."""
    out = []
    for r in rows:
        if "error" in r or r.get("skipped"):
            continue
        value = {"memory": r.get("copy_fraction"), "matmul": r.get("vs_matmul"), "layer": r.get("vs_compile")}.get(r["kind"])
        if r["kind"] == "matmul" and value is None:
            continue  # attention: no torch.matmul twin
        if r["kind"] in BARS:
            what, need = BARS[r["kind"]]
            out.append({"case": r["case"], "what": what, "value": value, "bar": need,
                        "pass": value is not None and value >= need})
    return out


def summary(rows: list[dict], checks: list[dict], m) -> str:
    peak = f"{m.peak_flops / 1e12:.0f} TFLOP/s" if m.peak_flops else "-"
    lines = [f"gpu_check on {m.label}; copy {m.copy_bw / 1e9:.1f} GB/s, bf16 peak {peak}",
             f"{'case':<18}{'result':<8}{'err':>9}{'shardc ms':>11}{'torch ms':>10}  bar"]
    bar_of = {c["case"]: c for c in checks}
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['case']:<18}{'skipped':<8}  (time budget)")
            continue
        if "error" in r:
            lines.append(f"{r['case']:<18}{'FAILED':<8}  {r['error'][:90]}")
            continue
        torch_ms = r.get("compile_ms") if r["kind"] == "layer" else r.get("matmul_ms") or r.get("eager_ms")
        c = bar_of.get(r["case"])
        bar = (f"{c['what']} {c['value']:.2f} (>= {c['bar']:.2f}) {'PASS' if c['pass'] else 'FAIL'}"
               if c and c["value"] is not None else "-")
        lines.append(f"{r['case']:<18}{'ok' if r['ok'] else 'WRONG':<8}{r['max_rel_err']:>9.1e}{r['shardc_ms']:>11.3f}"
                     f"{(torch_ms or 0):>10.3f}  {bar}")
    lines.append("torch ms: torch.compile (gpt2_layer), torch.matmul (matmuls), else torch eager")
    tuned = [r["tuning"] for r in rows if r.get("tuning")]
    if tuned:
        total = {k: sum(t[k] for t in tuned) for k in tuned[0]}
        lines.append(f"autotune: {total['kernels']} kernels ({total['warm']} from the database), {total['timed']} "
                     f"configs timed, {total['pruned']} pruned by the roofline, {total['changed']} better than the default")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=400.0, help="start no new step after this long")
    ap.add_argument("--tune-s", type=float, default=3.0, help="autotuning seconds per kernel (0: no tuning)")
    ap.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                    help="time torch.compile too (default: yes on a GPU, no in a rehearsal)")
    ap.add_argument("--rehearse", action="store_true", help="run every step on the CPU at small sizes")
    ap.add_argument("--json", default=None, help="default bench/results/gpu_check.json (rehearsal: gpu_check-cpu.json)")
    a = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available() and not a.rehearse:
        print(NO_GPU)
        return 0
    start = time.perf_counter()
    log = lambda msg: print(msg, flush=True)
    kb = _bench_kernels()
    m = kb.machine(cpu=a.rehearse)
    from shardc.codegen.autotune import toolchain
    log(f"gpu_check: {m.label}; {toolchain()}; copy {m.copy_bw / 1e9:.0f} GB/s")
    cases = {c.name: c for c in kb.CASES}
    rows = []
    for name in ORDER:
        if time.perf_counter() - start > a.budget_s:
            rows.append({"case": name, "kind": getattr(cases.get(name), "kind", "step"), "skipped": True})
            continue
        t = time.perf_counter()
        try:
            if name == "train_step":
                rows.append(train_step(kb, m, log))
            else:
                torch_compile = not a.rehearse if a.torch_compile is None else a.torch_compile
                rows.append(kb.measure(cases[name], m, torch_compile, a.tune_s if a.tune_s > 0 else None))
        except Exception as e:  # one broken step must not hide the others' figures
            traceback.print_exc()
            rows.append({"case": name, "kind": getattr(cases.get(name), "kind", "step"), "error": f"{type(e).__name__}: {e}"})
        log(f"  {name}: {time.perf_counter() - t:.1f} s")
    measured = [r for r in rows if "error" not in r and not r.get("skipped")]
    checks = bars(rows, m)
    if any(r["case"] != "train_step" for r in measured):
        log(kb.table([r for r in measured if r["case"] != "train_step"], m))
    out = Path(a.json) if a.json else HERE / "results" / ("gpu_check-cpu.json" if a.rehearse else "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": vars(m), "rows": rows, "bars": checks,
                               "seconds": time.perf_counter() - start}, indent=1, default=str))
    log(f"json: {out}; {time.perf_counter() - start:.0f} s in all")
    print(summary(rows, checks, m))
    if any("error" in r or not r.get("ok", True) for r in rows):
        return 1
    if a.rehearse:  # interpreter times: the bars say nothing about a GPU
        print("rehearsal: every step ran and every result is right; the bars above are interpreter figures")
        return 0
    return 0 if all(c["pass"] for c in checks) else 2


if __name__ == "__main__":
    sys.exit(main())
