"""`shardc analyze MODEL --mesh fsdp=32,tp=8 --hardware h200 --train --batch 256 --seq 4096`:
capture (shape-only above "small"), partition and analyze one step, print the Analysis and say
whether it fits in the device's memory. Registered on the `shardc` group by cli.py."""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

import click

from .cli import SPEC_HELP, build_specs, load_model, main, parse_mesh


def _capture(model, frontend, train, batch, optimizer, seq, dtype, layers):
    """(Graph, ModelDef-like): a zoo model with --seq/--dtype/--layers applied, or a file model."""
    from . import models
    from .errors import Error
    if ".py:" in model:
        if seq or dtype or layers:
            raise Error("--seq, --dtype and --layers apply to zoo models; a file model's factory sets its shapes")
        g, _, m = load_model(model, frontend, train, batch, optimizer)
        return g, m
    overrides = {}
    if seq:
        overrides["seq_len"] = seq
    probe = models.get(model)
    if layers:
        overrides["n_layers" if hasattr(probe.config, "n_layers") else "n_layer"] = layers
    m = models.get(model, **overrides)
    g, _ = m.capture(train, frontend or "jax", 4 if batch is None else batch, optimizer=optimizer, dtype=dtype)
    return g, m


def default_layout(m, mesh, plan, spec_texts):
    """With neither --plan nor --spec: Megatron over an axis named "tp" (when the model has specs
    for it) and the batch (fsdp: and the state) over the others; else the plan named. As plans do,
    fsdp splits only the state the specs leave: Megatron's weights stay split over tp alone
    (splitting them over fsdp as well, P(("tp", "fsdp"), None), makes today's partitioner move
    activations instead of gathering weights; pass --spec to try other layouts)."""
    if plan or spec_texts or not hasattr(m, "tp_specs"):
        return None
    specs = {}
    if "tp" in mesh.axes:
        try:
            specs = m.tp_specs("tp")
        except KeyError:
            specs = {}
    return specs, ("fsdp" if "fsdp" in mesh.axes else "dp")


@main.command("analyze")
@click.argument("model")
@click.option("--mesh", "mesh_text", default="dp=8", show_default=True, help="named axes NAME=SIZE, last innermost")
@click.option("--hardware", default="h200", show_default=True,
              help="h100 h200 b200 a100 tpu-v5e tpu-v5p tpu-v6e")
@click.option("--plan", type=click.Choice(["dp", "fsdp", "megatron", "megatron-sp"]), default=None,
              help="[default: Megatron over a 'tp' axis, batch (and with an 'fsdp' axis the state) over the rest]")
@click.option("--spec", "spec_texts", multiple=True, help=SPEC_HELP)
@click.option("--frontend", type=click.Choice(["jax", "torch"]), default=None, help="[default: jax]")
@click.option("--train", is_flag=True, help="one training step (forward, backward, optimizer update)")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default=None,
              help="the training step's optimizer [default: sgd]; its state is f32")
@click.option("--batch", type=int, default=None, help="global batch size [default: 4]")
@click.option("--seq", type=int, default=None, help="sequence length [default: the model's]")
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default=None,
              help="parameter dtype [default: bf16 for shape-only presets, else f32]")
@click.option("--layers", type=int, default=None, help="override the number of layers (a quicker, shallower model)")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default="none", show_default=True,
              help="price activation recomputation: none, selective (attention's s x s values), full (per layer)")
@click.option("--extrapolate", is_flag=True,
              help="analyze the model at 2 and 4 layers and read the full depth off that line (without it, "
                   "shape-only zoo models hold their identical layers as one block, partitioned once)")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
              help="write analysis.txt, analysis.json, memory.svg and timeline.svg into this directory")
def analyze_cmd(model, mesh_text, hardware, plan, spec_texts, frontend, train, optimizer, batch, seq, dtype,
                layers, recompute, extrapolate, report_dir):
    """Model MODEL's step on a mesh of HARDWARE devices: FLOPs, memory per device, communication
    per mesh axis, modeled time and MFU, and whether it fits in device memory."""
    import shardc
    from .errors import Error
    if optimizer is not None and not train:
        raise Error("--optimizer needs --train")
    hw = shardc.hardware.get(hardware)
    mesh = parse_mesh(mesh_text)
    what = f"train step ({optimizer or 'sgd'})" if train else "forward"
    if extrapolate:
        from .analysis import extrapolate as line
        depth = layers or _depth(model)
        t0 = time.perf_counter()
        noted: set = set()
        a1, _ = _analyze_one(model, frontend, train, batch, optimizer, seq, dtype, 2, mesh, plan, spec_texts, hw,
                             noted=noted, recompute=recompute)
        a2, _ = _analyze_one(model, frontend, train, batch, optimizer, seq, dtype, 4, mesh, plan, spec_texts, hw,
                             noted=noted, recompute=recompute)
        a = line(a1, a2, 2, 4, depth)
        click.echo(f"{model} {what} at {depth} layers from 2 and 4 layers; {time.perf_counter() - t0:.1f} s")
    else:
        a, g, times = _analyze_one(model, frontend, train, batch, optimizer, seq, dtype, layers, mesh, plan,
                                   spec_texts, hw, timed=True, recompute=recompute)
        click.echo(f"{model} {what}, {len(g.nodes)} nodes{' (shape-only)' if g.shape_only else ''}; "
                   + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    click.echo(a.table(verdict=False))
    click.echo(a.verdict())
    if report_dir:
        path = write_report(a, report_dir, f"{model} {what} on {mesh} of {hw.name}")
        click.echo(f"report: {path}", err=True)


def _depth(model: str) -> int:
    from . import models
    from .errors import Error
    if ".py:" in model:
        raise Error("--extrapolate needs a zoo model (its depth is a config field)")
    c = models.get(model).config
    return c.n_layers if hasattr(c, "n_layers") else c.n_layer


def _analyze_one(model, frontend, train, batch, optimizer, seq, dtype, layers, mesh, plan, spec_texts, hw,
                 timed=False, noted=None, recompute="none"):
    import shardc
    t0 = time.perf_counter()
    g, m = _capture(model, frontend, train, batch, optimizer or "sgd", seq, dtype, layers)
    t1 = time.perf_counter()
    layout = default_layout(m, mesh, plan, spec_texts)
    if layout is not None:
        specs, plan = layout
        note = f"note: layout {'Megatron over tp, ' if specs else ''}plan {plan!r} over the other axes (--plan/--spec to choose)"
    else:
        specs, plan = build_specs(m, g, mesh, plan, spec_texts)
        note = None
    prog = shardc.partition(g, mesh, specs, plan)
    t2 = time.perf_counter()
    a = shardc.analyze(prog, hw, recompute=recompute)
    t3 = time.perf_counter()
    for line in ([note] if note else []) + [f"note: {n}" for n in prog.notes]:
        if noted is None or line not in noted:
            click.echo(line, err=True)
            if noted is not None:
                noted.add(line)
    if timed:
        return a, g, {"capture": t1 - t0, "partition": t2 - t1, "analyze": t3 - t2}
    return a, g


def write_report(a, out_dir, title: str) -> Path:
    """analysis.txt (the table), analysis.json, memory.svg (the per-device memory breakdown) and
    timeline.svg (one device's modeled timeline: compute, and collectives per mesh level)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.txt").write_text(f"{title}\n\n{a.table()}\n")
    (out / "analysis.json").write_text(json.dumps({"title": title, **a.to_json()}, indent=1))
    (out / "memory.svg").write_text(memory_svg(a, title))
    (out / "timeline.svg").write_text(timeline_svg(a, title))
    return out


def memory_svg(a, title: str) -> str:
    """One stacked bar per device: params, grads, optimizer state, activations, the rest of the
    peak (transients), against the device's HBM line."""
    m, cap = a.memory, a.hardware.hbm_bytes
    parts = [("params", m["params"], "#4e79a7"), ("grads", m["grads"], "#f28e2b"),
             ("optimizer", m["optimizer"], "#e15759"), ("activations", m["activations"], "#76b7b2")]
    rest = max(0, m["peak"] - sum(p[1] for p in parts))
    parts.append(("other at peak", rest, "#bab0ac"))
    top = max(cap, m["peak"]) * 1.1
    h, y0, bars = 300, 340, []
    y = y0
    for i, (name, b, color) in enumerate(parts):
        dh = b / top * h
        y -= dh
        bars.append(f'<rect x="60" y="{y:.1f}" width="80" height="{dh:.1f}" fill="{color}"/>'
                    f'<rect x="170" y="{40 + 18 * i}" width="12" height="12" fill="{color}"/>'
                    f'<text x="188" y="{51 + 18 * i}" font-size="12">{name}: {b / 1e9:.2f} GB</text>')
    cy = y0 - cap / top * h
    bars.append(f'<line x1="40" x2="160" y1="{cy:.1f}" y2="{cy:.1f}" stroke="black" stroke-dasharray="4"/>'
                f'<text x="170" y="{cy + 4:.1f}" font-size="12">{a.hardware.name} HBM {cap / 1e9:.0f} GB</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="460" height="370">'
            f'<text x="10" y="20" font-size="13">{html.escape(title)}: memory per device</text>{"".join(bars)}</svg>\n')


def timeline_svg(a, title: str, width: int = 900) -> str:
    """One row for compute and one per interconnect level that collectives use; each row shows
    when that stream is busy over the modeled step (busy spans merged to the pixel)."""
    events = a.events
    end = max((e.start + e.duration for e in events), default=0.0)
    rows: dict[str, list] = {"compute": []}
    spans = a.hardware.axis_levels(a.mesh)
    for e in events:
        if e.kind == "compute":
            rows["compute"].append(e)
        else:
            levels = [lv.name for ax in e.node.attrs["axes"] for lv, _ in spans[ax]]
            rows.setdefault(f"{','.join(e.node.attrs['axes'])} ({levels[-1] if levels else '-'})", []).append(e)
    parts, y = [], 40
    for name, evs in rows.items():
        busy = bytearray(width)
        for e in evs:
            if end <= 0:
                break
            x0, x1 = int(e.start / end * (width - 1)), int((e.start + e.duration) / end * (width - 1))
            busy[x0:x1 + 1] = b"\x01" * (x1 + 1 - x0)
        x = 0
        while x < width:
            if busy[x]:
                x1 = x
                while x1 < width and busy[x1]:
                    x1 += 1
                color = "#4e79a7" if name == "compute" else "#e15759"
                parts.append(f'<rect x="{220 + x}" y="{y}" width="{x1 - x}" height="16" fill="{color}"/>')
                x = x1
            else:
                x += 1
        total = sum(e.duration for e in evs)
        parts.append(f'<text x="5" y="{y + 12}" font-size="12">{html.escape(name)}: {total * 1e3:.1f} ms</text>')
        y += 24
    note = (f"the {a.extrapolated[1]}-layer program's timeline" if a.extrapolated else "the step's timeline")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 230}" height="{y + 20}">'
            f'<text x="5" y="20" font-size="13">{html.escape(title)}: {note}, {end * 1e3:.1f} ms</text>'
            f'{"".join(parts)}</svg>\n')
