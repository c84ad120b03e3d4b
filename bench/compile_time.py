"""Compile time by depth: shardc's partition + codegen against XLA's lower + compile of the same
JAX function, in one run (issue 14: 12-layer GPT-2 small SGD step over dp2×tp4 at most half of
XLA's time; 48 layers at most 1.3× the 12-layer time).

    .venv/bin/python bench/compile_time.py [--models gpt2,llama] [--depths 12,24,48] [--batch 2]
                                           [--no-xla] [--json PATH]

For each model ("small": GPT-2 small's width, n_layer set to the depth) and depth, the JAX twin's
SGD training step is captured shape-only (f32 parameters, as the twins are), partitioned over
dp=2 × tp=4 (Megatron specs, plan "dp"), and compiled to Triton kernels (`shardc.codegen.compile`:
fusion planning, kernel source, kernel cache files). XLA gets the same function with the input
and output shardings shardc settled on, on 8 JAX CPU devices (its compile includes CPU code
generation). Times are wall-clock seconds on this machine, side by side in one run (the JSON also
has shardc's CPU seconds per stage, and the load average when the run ended). The kernel
cache is a fresh temporary directory (no kernel is found on disk from an earlier run).
Writes bench/results/compile_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("SHARDC_CACHE_DIR", tempfile.mkdtemp(prefix="shardc-compile-time-"))
from comm_vs_xla import N_DEVICES, jax, xla_collectives  # noqa: E402  (8 JAX CPU devices)

import shardc  # noqa: E402
import shardc.codegen  # noqa: E402  (plain data: what codegen wrote, without the runtime's engines)
from shardc import Mesh, models  # noqa: E402
from shardc.models.shapes import shape_only_args  # noqa: E402

MESH = {"dp": 2, "tp": 4}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "compile_time.json"


def measure(name: str, depth: int, batch: int, xla: bool) -> dict:
    m = models.get(f"{name}:small", n_layer=depth)
    row = dict(model=name, depth=depth, batch=batch, mesh=MESH)
    t0 = time.perf_counter()
    fn, args = shape_only_args(m, True, "jax", batch, "sgd", 0.1, "f32")
    g = shardc.from_jax(fn, *args)
    t1, c1 = time.perf_counter(), time.process_time()
    prog = shardc.partition(g, Mesh(MESH), specs=m.tp_specs(), plan="dp")
    t2, c2 = time.perf_counter(), time.process_time()
    try:
        exe = shardc.codegen.compile(prog, "triton")
    except shardc.Error as e:  # reported in the row; partition and XLA are still measured
        exe, row["codegen_error"] = None, str(e)
    t3, c3 = time.perf_counter(), time.process_time()
    row.update(nodes=len(g.nodes), local_nodes=len(prog.local.nodes),
               kernels=len(exe.kernels) if exe else 0, distinct_kernels=len({k.key for k in exe.kernels}) if exe else 0,
               capture_s=t1 - t0, partition_s=t2 - t1, codegen_s=t3 - t2, shardc_s=t3 - t1,
               partition_cpu_s=c2 - c1, codegen_cpu_s=c3 - c2)  # (CPU seconds: what a loaded machine inflates less)
    if xla:
        x = xla_collectives(fn, args, prog, MESH)
        row.update(xla_lower_s=x["lower_ms"] / 1e3, xla_compile_s=x["compile_ms"] / 1e3,
                   xla_s=x["total_ms"] / 1e3, shardc_over_xla=row["shardc_s"] / (x["total_ms"] / 1e3))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt2,llama")
    ap.add_argument("--depths", default="12,24,48")
    ap.add_argument("--batch", type=int, default=2, help="global batch (dp=2 splits it)")
    ap.add_argument("--no-xla", action="store_true", help="shardc only")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    a = ap.parse_args(argv)
    if len(jax.devices()) < N_DEVICES:
        print(f"need {N_DEVICES} JAX CPU devices, have {len(jax.devices())}", file=sys.stderr)
        return 2
    depths = [int(d) for d in a.depths.split(",")]
    rows = []
    print(f"{'model':6} {'depth':>5} {'nodes':>6} {'kernels':>8} {'distinct':>8} {'capture':>8} {'partition':>9} "
          f"{'codegen':>8} {'shardc':>7} {'XLA lower':>9} {'XLA compile':>11} {'shardc/XLA':>10}")
    for name in a.models.split(","):
        for d in depths:
            r = measure(name, d, a.batch, not a.no_xla)
            rows.append(r)
            xla = (f"{r['xla_lower_s']:9.2f} {r['xla_compile_s']:11.2f} {r['shardc_over_xla']:10.2f}"
                   if "xla_s" in r else f"{'-':>9} {'-':>11} {'-':>10}")
            print(f"{name:6} {d:5d} {r['nodes']:6d} {r['kernels']:8d} {r['distinct_kernels']:8d} {r['capture_s']:8.2f} "
                  f"{r['partition_s']:9.2f} {r['codegen_s']:8.2f} {r['shardc_s']:7.2f} {xla}"
                  + (f"  codegen failed: {r['codegen_error']}" if "codegen_error" in r else ""), flush=True)
    summary = {}
    for name in a.models.split(","):
        by = {r["depth"]: r for r in rows if r["model"] == name}
        lo, hi = min(by), max(by)
        summary[name] = dict(depth_ratio=by[hi]["shardc_s"] / by[lo]["shardc_s"], depths=(lo, hi))
        line = f"{name}: partition+codegen at {hi} layers = {summary[name]['depth_ratio']:.2f}x the {lo}-layer time"
        if "shardc_over_xla" in by[lo]:
            line += f"; at {lo} layers {by[lo]['shardc_over_xla']:.2f}x XLA's lower+compile"
        print(line)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(bench="compile_time", jax=jax.__version__, shardc=shardc.__version__, python=platform.python_version(),
                machine=platform.machine(), cpus=os.cpu_count(), load=os.getloadavg())
    out.write_text(json.dumps(dict(meta=meta, rows=rows, summary=summary), indent=1, default=str))
    print(f"wrote {out}")
    return 1 if any("codegen_error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
