"""VMEM footprint of the generated Pallas kernels of zoo training steps at real widths.

    cd /work/main && .venv/bin/python bench/pallas_vmem.py [--configs gpt2-small-b1,...] [--tpu tpu-v5p]
        [--dtype bf16|f32] [--top N] [--json PATH]

Each config's SGD training step (JAX capture, one device, few layers: the largest kernel does not
depend on depth) goes through shardc.compile(target="pallas") written for `--tpu` (the planner
splits groups that fit no core: `compiles` yes) or, where that compile is refused, for the
interpreter alone (SHARDC_PALLAS_TPU=none, `compiles` no), so that plans holding kernels no TPU
could compile are still measured.
Per config: kernels, the largest footprint (codegen/vmem.py: BlockSpec blocks double-buffered,
plus scratch, padded to Mosaic's (8, 128) tiles) and its kernel, and against the TPU generation
`--tpu` (shardc.hardware preset): how many kernels fit its default scoped limit, how many need
vmem_limit_bytes, and how many fit nowhere (those are what a compile for that TPU refuses).
Writes a table and bench/results/pallas_vmem.json. Codegen only: no kernel runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shardc  # noqa: E402
from shardc import Mesh, models, partition  # noqa: E402
from shardc.analysis import hardware  # noqa: E402
from shardc.codegen import vmem  # noqa: E402

# name -> (model preset, batch per device, config overrides)
CONFIGS = {
    "gpt2-small-b1": ("gpt2:small", 1, dict(n_layer=1)),
    "gpt2-small-b8": ("gpt2:small", 8, dict(n_layer=1)),
    "llama-small-b1": ("llama:small", 1, dict(n_layer=1)),
    "llama3-8b-width-s8192-b1": ("llama3:8b", 1, dict(n_layer=1)),
}


def measure(spec: str, batch: int, overrides: dict, hw, dtype: str) -> dict:
    t = time.perf_counter()
    m = models.get(spec, **overrides)
    g, _ = m.capture(True, "jax", batch, lr=0.1, shape_only=True, dtype=dtype)
    prog = partition(g, Mesh(dict(dp=1)), {}, None)
    old = os.environ.get("SHARDC_PALLAS_TPU")
    try:
        try:  # the plan written for this TPU (the planner splits what fits no core) ...
            os.environ["SHARDC_PALLAS_TPU"] = hw.name
            exe, compiles = shardc.compile(prog, target="pallas"), True
        except shardc.Error:  # ... or, where that is refused, for the interpreter alone (unchecked)
            os.environ["SHARDC_PALLAS_TPU"] = "none"
            exe, compiles = shardc.compile(prog, target="pallas"), False
    finally:
        if old is None:
            os.environ.pop("SHARDC_PALLAS_TPU")
        else:
            os.environ["SHARDC_PALLAS_TPU"] = old
    sizes = {k.name: (k.vmem.nbytes, k) for k in exe.kernels}
    top_bytes, top = max(sizes.values(), key=lambda t: t[0])
    over = sorted((n for n, _ in sizes.values() if n > vmem.max_bytes(hw)), reverse=True)
    biggest = sorted(sizes.values(), key=lambda t: -t[0])
    return {"kernels": len(exe.kernels), "distinct": len(sizes), "compiles": compiles,
            "top": [{"mib": n / vmem.MiB, "kind": k.kind, "grid": list(k.module(True).GRID) if k.kind != "grouped_matmul"
                     else None, "reason": k.reason[:160]} for n, k in biggest[:8]],
            "default_fits": sum(vmem.default_fits(n, hw) for n, _ in sizes.values()),
            "needs_limit": sum(not vmem.default_fits(n, hw) and n <= vmem.max_bytes(hw) for n, _ in sizes.values()),
            "fits_nowhere": len(over), "largest_mib": top_bytes / vmem.MiB,
            "largest_kernel": f"{top.kind}: {top.reason[:90]}", "compile_s": time.perf_counter() - t}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--tpu", default=vmem.TARGET)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f32"), help="the parameters' dtype")
    ap.add_argument("--top", type=int, default=0, help="also list each config's N largest kernels")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "pallas_vmem.json"))
    a = ap.parse_args(argv)
    hw = hardware.get(a.tpu)
    print(f"{hw.name}: {hw.vmem_bytes // vmem.MiB} MiB VMEM per core, default scoped limit "
          f"{hw.scoped_vmem_bytes // vmem.MiB} MiB; a kernel fits the default at <= "
          f"{vmem.FIT * hw.scoped_vmem_bytes / vmem.MiB:.0f} MiB counted, anywhere at <= {vmem.max_bytes(hw) / vmem.MiB:.0f} MiB")
    print(f"{'config':26s} {'compiles':>8s} {'kernels':>7s} {'distinct':>8s} {'default':>7s} {'limit':>5s} {'nowhere':>7s} "
          f"{'largest MiB':>11s}  largest kernel")
    rows = []
    for name in a.configs.split(","):
        spec, batch, ov = CONFIGS[name]
        r = {"config": name, "model": spec, "batch": batch, **ov, "dtype": a.dtype, **measure(spec, batch, ov, hw, a.dtype)}
        rows.append(r)
        print(f"{name:26s} {'yes' if r['compiles'] else 'no':>8s} {r['kernels']:7d} {r['distinct']:8d} {r['default_fits']:7d} {r['needs_limit']:5d} "
              f"{r['fits_nowhere']:7d} {r['largest_mib']:11.1f}  {r['largest_kernel']}", flush=True)
        for t in r["top"][:a.top]:
            print(f"    {t['mib']:8.1f} MiB  {t['kind']:10s} grid {t['grid']}  {t['reason'][:100]}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"tpu": hw.name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
