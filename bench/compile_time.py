"""Compile time by depth: shardc's partition + codegen against XLA's lower + compile of the same
JAX function, in one run (issue 14: 12-layer GPT-2 small SGD step over dp2×tp4 at most half of
XLA's time; 48 layers at most 1.3× the 12-layer time).

    .venv/bin/python bench/compile_time.py [--models gpt2,llama] [--depths 12,24,48] [--batch 2]
                                           [--xla-depths 12] [--no-xla] [--no-repeat] [--in-process]
                                           [--json PATH]

For each model ("small": GPT-2 small's width, n_layer set to the depth) and depth, the JAX twin's
SGD training step is captured shape-only (f32 parameters, as the twins are) with its identical
layers as one repeated block (`capture(repeat=True)`: 4 layers traced, layer 1 standing for the
middle ones; `--no-repeat` captures every layer), partitioned over dp=2 × tp=4 (Megatron specs,
plan "dp", the default passes), and compiled to Triton kernels (`shardc.codegen.compile`: fusion
planning, once per repeated block, kernel source, kernel cache files). XLA gets the same function
with the input and output shardings shardc settled on, on 8 JAX CPU devices (its compile
includes CPU code generation). Times are wall-clock and CPU seconds (this process's, XLA's
threads included) on this machine, side by side in one run; the summary compares CPU seconds,
which a loaded machine inflates less (the JSON has both, and the load average when the run
ended). The kernel cache is a fresh temporary directory (no kernel is found on disk from an
earlier run); each row runs in a fresh process (`--in-process`: all in this one), so none
finds imports, caches or kernel files warmed by an earlier row.
Writes bench/results/compile_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
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


def measure(name: str, depth: int, batch: int, xla: bool, repeat: bool) -> dict:
    m = models.get(f"{name}:small", n_layer=depth)
    row = dict(model=name, depth=depth, batch=batch, mesh=MESH, repeat=repeat)
    t0, c0 = time.perf_counter(), time.process_time()
    g, _ = m.capture(True, "jax", batch, lr=0.1, optimizer="sgd", shape_only=True, dtype="f32", repeat=repeat)
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
               capture_cpu_s=c1 - c0, partition_cpu_s=c2 - c1, codegen_cpu_s=c3 - c2, shardc_cpu_s=c3 - c1)
    if xla:
        fn, args = shape_only_args(m, True, "jax", batch, "sgd", 0.1, "f32")
        c4 = time.process_time()
        x = xla_collectives(fn, args, _in_argument_order(prog.unrolled(), fn, args), MESH)
        row.update(xla_lower_s=x["lower_ms"] / 1e3, xla_compile_s=x["compile_ms"] / 1e3,
                   xla_s=x["total_ms"] / 1e3, xla_cpu_s=time.process_time() - c4,
                   shardc_over_xla=row["shardc_s"] / (x["total_ms"] / 1e3))
        row["shardc_over_xla_cpu"] = row["shardc_cpu_s"] / row["xla_cpu_s"]
    return row


def _in_argument_order(whole, fn, args):
    """The whole program's shardings in the order of `fn`'s argument and result leaves (an
    unrolled repeated program orders its layers' inputs and outputs by layer number, JAX's
    pytrees by key text): matched by name."""
    from shardc.frontend.jax import _arg_names
    names = _arg_names(fn, len(args))
    leaves = jax.tree_util.tree_flatten_with_path(args)[0]
    ins = [names[p[0].idx] + jax.tree_util.keystr(p[1:]) for p, _ in leaves]
    outs = ["out" + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(jax.eval_shape(fn, *args))[0]]
    by_in = dict(zip((p.name for p in whole.graph.inputs), whole.input_shardings))
    by_out = dict(zip(whole.graph.output_names, whole.output_shardings))
    return types.SimpleNamespace(mesh=whole.mesh, input_shardings=[by_in[n] for n in ins],
                                 output_shardings=[by_out[n] for n in outs])


def _measure_apart(name: str, depth: int, batch: int, xla: bool, repeat: bool) -> dict:
    """measure(...) in a fresh process with its own empty kernel cache: no row finds imports,
    caches or kernel files warmed by an earlier one."""
    cmd = [sys.executable, __file__, "--row", f"{name}:{depth}", "--batch", str(batch)]
    cmd += ([] if xla else ["--no-xla"]) + ([] if repeat else ["--no-repeat"])
    env = dict(os.environ, SHARDC_CACHE_DIR=tempfile.mkdtemp(prefix="shardc-compile-time-"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name} at {depth} layers failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pair(wall: float, cpu: float) -> str:
    return f"{wall:5.2f}/{cpu:5.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt2,llama")
    ap.add_argument("--depths", default="12,24,48")
    ap.add_argument("--batch", type=int, default=2, help="global batch (dp=2 splits it)")
    ap.add_argument("--no-xla", action="store_true", help="shardc only")
    ap.add_argument("--xla-depths", default="12", help="the depths XLA compiles too (GPT-2 small at 48 layers "
                    "takes XLA minutes and many GB)")
    ap.add_argument("--no-repeat", action="store_true", help="capture every layer (no repeated block)")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    ap.add_argument("--in-process", action="store_true",
                    help="every row in this process (later rows then find caches and imports warm)")
    ap.add_argument("--row", help=argparse.SUPPRESS)   # MODEL:DEPTH: measure one row, print its JSON
    a = ap.parse_args(argv)
    if len(jax.devices()) < N_DEVICES:
        print(f"need {N_DEVICES} JAX CPU devices, have {len(jax.devices())}", file=sys.stderr)
        return 2
    if a.row:
        name, d = a.row.split(":")
        print(json.dumps(measure(name, int(d), a.batch, not a.no_xla, not a.no_repeat), default=str))
        return 0
    depths = [int(d) for d in a.depths.split(",")]
    xla_depths = {int(d) for d in a.xla_depths.split(",")}
    rows = []
    print(f"{'model':6} {'depth':>5} {'nodes':>6} {'kernels':>8} {'distinct':>8} {'capture':>7} "
          f"{'partition':>11} {'codegen':>11} {'shardc':>11} {'XLA l+c':>11} {'shardc/XLA':>11}   (wall / CPU s)")
    for name in a.models.split(","):
        for d in depths:
            xla = not a.no_xla and d in xla_depths
            r = (measure(name, d, a.batch, xla, not a.no_repeat) if a.in_process
                 else _measure_apart(name, d, a.batch, xla, not a.no_repeat))
            rows.append(r)
            xla = (f"{_pair(r['xla_s'], r['xla_cpu_s'])} {_pair(r['shardc_over_xla'], r['shardc_over_xla_cpu'])}"
                   if "xla_s" in r else f"{'-':>11} {'-':>11}")
            print(f"{name:6} {d:5d} {r['nodes']:6d} {r['kernels']:8d} {r['distinct_kernels']:8d} {r['capture_s']:7.2f} "
                  f"{_pair(r['partition_s'], r['partition_cpu_s'])} {_pair(r['codegen_s'], r['codegen_cpu_s'])} "
                  f"{_pair(r['shardc_s'], r['shardc_cpu_s'])} {xla}"
                  + (f"  codegen failed: {r['codegen_error']}" if "codegen_error" in r else ""), flush=True)
    summary = {}
    for name in a.models.split(","):
        by = {r["depth"]: r for r in rows if r["model"] == name}
        lo, hi = min(by), max(by)
        summary[name] = dict(depths=(lo, hi), depth_ratio=by[hi]["shardc_s"] / by[lo]["shardc_s"],
                             depth_ratio_cpu=by[hi]["shardc_cpu_s"] / by[lo]["shardc_cpu_s"])
        line = (f"{name}: partition+codegen at {hi} layers = {summary[name]['depth_ratio']:.2f}x the {lo}-layer time "
                f"({summary[name]['depth_ratio_cpu']:.2f}x in CPU seconds)")
        if "shardc_over_xla" in by[lo]:
            line += (f"; at {lo} layers {by[lo]['shardc_over_xla']:.2f}x XLA's lower+compile "
                     f"({by[lo]['shardc_over_xla_cpu']:.2f}x in CPU seconds)")
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
