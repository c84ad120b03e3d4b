"""Pictures and a self-contained HTML report of a partitioned program: a sharding map (which
device holds which block of each tensor), a per-device timeline of ops and collectives modeled
with analysis/cost.py, and beside it the timeline a run measured (the torch engine's per-rank
trace: each op or kernel, and each collective from its start to the end of its wait)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .analysis.cost import timeline
from .partition.mesh import global_indices


def _owners(shape, sharding, mesh, samples: int = 48) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """For a grid sampling the tensor's first two dims: which set of devices holds each point."""
    rows_n = shape[0] if len(shape) >= 1 else 1
    cols_n = shape[1] if len(shape) >= 2 else 1
    rows = np.unique(np.linspace(0, rows_n - 1, min(rows_n, samples)).astype(int))
    cols = np.unique(np.linspace(0, cols_n - 1, min(cols_n, samples)).astype(int))
    holders = [[set() for _ in cols] for _ in rows]
    dims = list(sharding.dims) + [None, None]
    for dev in range(mesh.size):
        held = []
        for d, n in ((dims[0], rows_n), (dims[1], cols_n)):
            if d is None or not d.axes:
                held.append(None)
            else:
                held.append(set(int(g) for g in global_indices(n, d, mesh, dev) if g < n))
        for i, r in enumerate(rows):
            if held[0] is not None and r not in held[0]:
                continue
            for j, c in enumerate(cols):
                if held[1] is None or c in held[1]:
                    holders[i][j].add(dev)
    keys = sorted({tuple(sorted(h)) for row in holders for h in row})
    grid = np.array([[keys.index(tuple(sorted(h))) for h in row] for row in holders])
    return grid, keys


def sharding_map(prog, path: Path, limit: int = 12) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = prog.graph
    items = [(p.name, p.shape, s) for p, s in zip(g.inputs, prog.input_shardings) if p.rank]
    items.sort(key=lambda t: t[2].is_replicated)  # split tensors first
    items = items[:limit - 1] + [(n, o.shape, s) for n, o, s in zip(g.output_names, g.outputs, prog.output_shardings) if o.rank][:1]
    cols = 3
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, shape, s) in zip(axes.flat, items):
        grid, keys = _owners(shape, s, prog.mesh)
        ax.imshow(grid, cmap="tab20", aspect="auto", interpolation="nearest", vmin=0, vmax=max(19, len(keys)))
        for k, devs in enumerate(keys):
            ys, xs = np.nonzero(grid == k)
            if len(ys):
                label = "all" if len(devs) == prog.mesh.size else ",".join(f"d{d}" for d in devs[:4]) + ("…" if len(devs) > 4 else "")
                ax.text(xs.mean(), ys.mean(), label, ha="center", va="center", fontsize=7)
        ax.set_title(f"{name}\n{list(shape)} {s}", fontsize=8)
    fig.suptitle(f"sharding map over {prog.mesh}: which devices hold each block (first two dims)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def timeline_picture(prog, path: Path, events=None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = events if events is not None else timeline(prog.local)
    n = prog.mesh.size
    fig, ax = plt.subplots(figsize=(12, 0.5 * n + 1.5))
    for dev in range(n):  # one program for every device: the modeled schedule is the same on each
        for ev in events:
            color = "tab:orange" if ev.kind == "collective" else "tab:blue"
            ax.broken_barh([(ev.start * 1e6, max(ev.duration * 1e6, 1e-3))], (dev - 0.4, 0.8), color=color,
                           edgecolor="white", linewidth=0.2)
    ax.set_yticks(range(n), [f"device {d}" for d in range(n)])
    ax.set_xlabel("modeled time (µs): blue compute, orange collectives")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def collective_overlap(events) -> dict:
    """From one rank's measured trace (TraceEvents): each collective's time in flight (its start
    step's beginning to its wait's end), the part of it the rank spent blocked (issuing it and
    waiting on it), and the fraction hidden behind the rank's own work. (What a trace can see: a
    collective that finished early counts as in flight until its wait.)"""
    start, blocked, flight = {}, 0.0, 0.0
    for e in events:
        if e.kind == "start":
            start[e.index] = e
        elif e.kind == "wait" and e.index in start:
            s = start.pop(e.index)
            flight += e.t1 - s.t0
            blocked += (s.t1 - s.t0) + (e.t1 - e.t0)
    return {"in_flight_s": flight, "blocked_s": blocked,
            "hidden_fraction": (flight - blocked) / flight if flight > 0 else 0.0}


def measured_picture(trace, path: Path) -> Path:
    """One row per rank from a measured trace (trace[rank] = TraceEvents): ops and kernels on one
    lane, collectives on their own lane below (in flight light, blocked waiting dark)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min((e.t0 for events in trace for e in events), default=0.0)
    fig, ax = plt.subplots(figsize=(12, 0.9 * len(trace) + 1.5))
    for rank, events in enumerate(trace):
        start = {}
        for e in events:
            a, w = (e.t0 - t0) * 1e6, max((e.t1 - e.t0) * 1e6, 1e-3)
            if e.kind in ("op", "kernel", "view"):
                ax.broken_barh([(a, w)], (rank - 0.45, 0.4), color="tab:blue", edgecolor="white", linewidth=0.2)
            elif e.kind == "start":
                start[e.index] = e
            elif e.kind == "wait" and e.index in start:
                s = start.pop(e.index)
                ax.broken_barh([((s.t0 - t0) * 1e6, (e.t1 - s.t0) * 1e6)], (rank + 0.05, 0.4), color="navajowhite")
                ax.broken_barh([(a, w)], (rank + 0.05, 0.4), color="tab:orange")
    ax.set_yticks(range(len(trace)), [f"rank {r}" for r in range(len(trace))])
    ax.set_xlabel("measured time (µs): blue ops/kernels; below, collectives in flight (light) and waited on (dark)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_report(prog, out_dir, title: str = "shardc report", trace=None) -> Path:
    """Write sharding_map.png, timeline.png and a self-contained index.html into out_dir; with a
    measured `trace` (run_torch's trace=, one event list per rank) also measured.png beside the
    modeled timeline, and the fraction of collective time each rank hid (run_jax's trace=: one
    list per device)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = timeline(prog.local)
    smap = sharding_map(prog, out / "sharding_map.png")
    tl = timeline_picture(prog, out / "timeline.png", events)
    measured = ""
    if trace:
        mp = measured_picture(trace, out / "measured.png")
        hid = ", ".join(f"rank {r}: {collective_overlap(ev)['hidden_fraction'] * 100:.0f}%" for r, ev in enumerate(trace))
        measured = f"<h2>Timeline (measured)</h2><p>collective time hidden behind work: {hid}</p>{_img(mp)}"
    total = sum(c.bytes for c in prog.collectives)
    step = max((e.start + e.duration for e in events), default=0.0)
    ledger = "".join(f"<tr><td>{html.escape(c.kind)}</td><td>{','.join(c.axes)}</td><td>{c.bytes}</td>"
                     f"<td>{html.escape(c.tensor)}</td><td>{html.escape(c.source or '')}</td>"
                     f"<td>{html.escape(c.reason)}</td></tr>" for c in prog.collectives)
    shard = "".join(f"<tr><td>{html.escape(p.name)}</td><td>{list(p.shape)}</td><td>{html.escape(str(s))}</td>"
                    f"<td>{html.escape(prog.origins.get(p, ''))}</td></tr>"
                    for p, s in zip(prog.graph.inputs, prog.input_shardings))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(str(prog.mesh))}: {len(prog.graph.nodes)} IR nodes, {len(prog.local.nodes)} per device,
{len(prog.collectives)} collectives moving {total} bytes per device; modeled step {step * 1e6:.1f} µs.</p>
<h2>Sharding map</h2>{_img(smap)}
<h2>Timeline (modeled)</h2>{_img(tl)}
{measured}
<h2>Collectives</h2><table><tr><th>kind</th><th>axes</th><th>bytes</th><th>tensor</th><th>source</th><th>reason</th></tr>{ledger}</table>
<h2>Input shardings</h2><table><tr><th>input</th><th>shape</th><th>sharding</th><th>origin</th></tr>{shard}</table>
</body></html>"""
    index = out / "index.html"
    tmp = index.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(index)
    return index
