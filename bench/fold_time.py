"""Partition time by depth of a user's own model, captured whole, with and without folding its
identical layers (ir/fold.py; issue 14 item 2: a repeated block is partitioned once).

    .venv/bin/python bench/fold_time.py [--family llama] [--depths 8,16,32] [--train] [--json PATH]

The HF-style torch model (shardc/models/hf_style.py, tiny width: d 64, seq 16, batch 4) is
captured with from_torch at each depth (its forward, or with --train its SGD step through
make_fx), then partitioned over dp=2 × tp=2 with Megatron specs (all default passes) as captured
and after `shardc.fold`. Figures are CPU seconds of this process (time.process_time), so load
from other processes does not count; the fold's own time is reported apart. Writes JSON
(default bench/results/fold_time.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import shardc
from shardc import Mesh, P
from shardc.models import hf_style as H
from shardc.partition.plans import is_state

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "fold_time.json"


def cpu(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def row(family: str, depth: int, train: bool) -> dict:
    c = H.Cfg(n_layer=depth)
    if train:
        fn, args = H.sgd_step(family, c, 4)
        g, t_capture = cpu(lambda: shardc.from_torch(fn, args, capture="make_fx"))
    else:
        args = (H.ids(c, 4),)
        g, t_capture = cpu(lambda: shardc.from_torch(H.build(family, c), args))
    specs = H.megatron_specs(family)
    specs.update({p.name: P("dp") for p in g.inputs if not is_state(g, p) and p.rank})
    mesh = Mesh(dp=2, tp=2)
    f, t_fold = cpu(lambda: shardc.fold(g))
    if f.repeat is None:
        raise SystemExit(f.fold_note)
    whole, t_whole = cpu(lambda: shardc.partition(g, mesh, specs))
    block, t_block = cpu(lambda: shardc.partition(f, mesh, specs))
    same = block.bytes_by_kind() == whole.bytes_by_kind()
    return dict(family=family, depth=depth, train=train, nodes=len(g.nodes), folded_nodes=len(f.nodes),
                capture_s=round(t_capture, 2), fold_s=round(t_fold, 3), partition_whole_s=round(t_whole, 2),
                partition_folded_s=round(t_block, 2), speedup=round(t_whole / (t_fold + t_block), 2),
                same_bytes=same)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="llama", choices=("llama", "gpt2"))
    ap.add_argument("--depths", default="8,16,32")
    ap.add_argument("--train", action="store_true", help="the SGD step (else the forward)")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    a = ap.parse_args(argv)
    rows = []
    print(f"{'depth':>5} {'nodes':>6} {'folded':>6} {'fold s':>7} {'whole s':>8} {'folded s':>9} {'speedup':>7}  bytes equal")
    for depth in (int(d) for d in a.depths.split(",")):
        r = row(a.family, depth, a.train)
        rows.append(r)
        print(f"{depth:>5} {r['nodes']:>6} {r['folded_nodes']:>6} {r['fold_s']:>7} {r['partition_whole_s']:>8} "
              f"{r['partition_folded_s']:>9} {r['speedup']:>7}  {r['same_bytes']}", flush=True)
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
