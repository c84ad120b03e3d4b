"""plan="auto" (issue 16): ILP solve time by depth, and the chosen plan's modeled step time against
the hand plans (dp, fsdp, Megatron + dp), all priced by shardc.analyze on the same hardware.

    .venv/bin/python bench/auto.py [--model gpt2:small] [--depths 1,2,4,8,12] [--mesh dp=2,tp=4]
                                   [--batch 8] [--forward] [--hardware h200] [--memory-budget BYTES]
                                   [--no-plans] [--json PATH]

Shape-only captures (bf16 parameters, f32 optimizer state): nothing is evaluated. Solve time is
`shardc.partition.auto.solve` (strategies, grouping, the ILP and HiGHS), not the propagation and
lowering after it. Writes a table and bench/results/auto.json."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_mesh(text: str) -> dict:
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt2:small")
    ap.add_argument("--depths", default="1,2,4,8,12")
    ap.add_argument("--mesh", default="dp=2,tp=4")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--forward", action="store_true", help="the forward pass instead of an SGD training step")
    ap.add_argument("--hardware", default="h200")
    ap.add_argument("--memory-budget", type=float, default=None, help="bytes per device (default: the HBM less 10%%)")
    ap.add_argument("--no-plans", action="store_true", help="solve times only (no partition of the hand plans)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "auto.json"))
    a = ap.parse_args(argv)

    from shardc import Mesh, analyze, models, partition
    from shardc.partition.auto import solve

    mesh = Mesh(parse_mesh(a.mesh))
    train = not a.forward
    depths = [int(d) for d in a.depths.split(",")]
    rows = []
    print(f"{a.model} {'train' if train else 'forward'} batch {a.batch} on {mesh}, {a.hardware}")
    print(f"{'layers':>6} {'nodes':>6} {'groups':>6} {'classes':>7} {'vars':>7} {'build s':>8} {'solve s':>8} {'total s':>8} {'gap':>6}")
    g_full = m_full = None
    for depth in depths:
        m = models.get(a.model, n_layer=depth)
        g, _ = m.capture(train, "jax", a.batch, shape_only=True)
        t = time.perf_counter()
        res = solve(g, mesh, {}, a.hardware, a.memory_budget)
        total = time.perf_counter() - t
        row = {"layers": depth, "nodes": len(g.nodes), "groups": res.n_groups, "classes": res.n_classes,
               "variables": res.n_vars, "build_s": res.build_s, "solve_s": res.solve_s, "total_s": total,
               "gap": res.gap, "status": res.status, "objective_s": res.cost_s, "memory_bytes": res.memory}
        rows.append(row)
        print(f"{depth:>6} {len(g.nodes):>6} {res.n_groups:>6} {res.n_classes:>7} {res.n_vars:>7} "
              f"{res.build_s:>8.2f} {res.solve_s:>8.2f} {total:>8.2f} {res.gap:>6.1%}", flush=True)
        g_full, m_full = g, m
    plans = {}
    if not a.no_plans:
        g, m = g_full, m_full
        print(f"\nplans at {depths[-1]} layers (modeled by shardc.analyze on {a.hardware}):")
        cands = {"auto": (None, "auto"), "dp": ({}, "dp"), "fsdp": ({}, "fsdp")}
        if "tp" in mesh.axes:
            cands["megatron+dp"] = (m.tp_specs(), "dp")
        for label, (specs, plan) in cands.items():
            t = time.perf_counter()
            kw = {"hardware": a.hardware, "memory_budget": a.memory_budget} if plan == "auto" else {}
            prog = partition(g, mesh, specs, plan, **kw)
            dt = time.perf_counter() - t
            an = analyze(prog, a.hardware)
            mem = an.memory
            plans[label] = {"step_s": an.step_s, "compute_s": an.compute_s, "exposed_comm_s": an.exposed_comm_s,
                            "comm_bytes": sum(an.comm_bytes.values()), "peak_bytes": mem["peak"],
                            "state_bytes": mem["params"] + mem["grads"] + mem["optimizer"],
                            "partition_s": dt}
            if plan == "auto":
                plans[label]["chosen"] = prog.auto.chosen
                plans[label]["report"] = prog.auto.text()
                weights = sorted((p for p in g.inputs if p.rank == 2), key=lambda p: -p.nbytes)[:6]
                plans[label]["shardings"] = {p.name: str(prog.shardings[p]) for p in weights}
            print(f"  {label:<12} step {an.step_s * 1e3:9.3f} ms  exposed comm {an.exposed_comm_s * 1e3:8.3f} ms  "
                  f"comm {sum(an.comm_bytes.values()) / 1e9:7.3f} GB  peak {mem['peak'] / 1e9:7.2f} GB  "
                  f"(partition {dt:.1f} s)", flush=True)
        print("\n" + plans["auto"]["report"])
    out = {"model": a.model, "train": train, "memory_budget": a.memory_budget, "batch": a.batch, "mesh": dict(mesh.axes), "hardware": a.hardware,
           "solve_by_depth": rows, "plans": plans}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
