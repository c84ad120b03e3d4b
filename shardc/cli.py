"""The `shardc` command: compile a model over a mesh, run it, check it, explain its shardings."""
from __future__ import annotations

import os
import sys
import time

import click
import numpy as np


def parse_mesh(text: str):
    from .errors import ShardingError
    from .partition import Mesh
    axes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, size = part.partition("=")
        if not eq or not size.strip().isdigit() or not name.strip().isidentifier():
            raise ShardingError(f"--mesh {text!r}: expected NAME=SIZE[,NAME=SIZE...], e.g. dp=2,tp=4")
        if name.strip() in axes:
            raise ShardingError(f"--mesh {text!r}: axis {name.strip()!r} is given twice")
        axes[name.strip()] = int(size)
    return Mesh(axes)


def parse_spec(text: str):
    """NAME=ENTRIES with entries comma-separated: '-' or 'None' (whole), an axis, or axes joined by '+'."""
    from .errors import ShardingError
    from .partition import P
    name, eq, body = text.rpartition("=")
    if not eq or not name:
        raise ShardingError(f"--spec {text!r}: expected NAME=SPEC, e.g. 'x=dp,-' or '*.fc1.weight=tp,-'")
    entries = []
    for e in (body.split(",") if body.strip() else []):
        e = e.strip()
        entries.append(None if e in ("-", "None", "none", "") else tuple(e.split("+")) if "+" in e else e)
    return name, P(*entries)


def load_model(model: str, frontend: str | None, train: bool, batch: int | None, optimizer: str):
    """A zoo name ("gpt2:tiny") or path/to/file.py:factory → (Graph, args, model)."""
    from . import models
    from .errors import Error
    if ".py:" in model:
        from .file_model import FileModel
        m = FileModel(model, batch)
        if frontend is not None and frontend != ("torch" if m.is_torch else "jax"):
            raise Error(f"--frontend {frontend}: {model} is a {'torch' if m.is_torch else 'JAX'} model")
        g, args = m.capture(train, optimizer)
        return g, args, m
    m = models.get(model)
    g, args = m.capture(train, frontend or "jax", 4 if batch is None else batch, optimizer=optimizer)
    return g, args, m


def build_specs(m, g, mesh, plan: str | None, spec_texts) -> tuple[dict, str | None]:
    specs = {}
    if plan in ("megatron", "megatron-sp"):
        specs.update(m.tp_specs())
        if plan == "megatron-sp":
            from .partition.plans import sequence_parallel_specs
            specs.update(sequence_parallel_specs(g, batch_axes=tuple(a for a in mesh.axis_names if a != "tp")))
        plan = "dp"  # the batch goes over the axes tensor parallelism leaves (dp of dp×tp)
    specs.update(getattr(m, "specs", {}))  # a file model's own specs; --spec overrides
    for text in spec_texts:
        name, p = parse_spec(text)
        specs[name] = p
    return specs, plan


def _version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        from . import __version__
        click.echo(f"shardc {__version__}")
        ctx.exit()


@click.group()
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="print shardc's version and exit")
def main():
    """shardc: partition PyTorch and JAX models over a device mesh and check them."""
    _AUTO_OPTIONS.clear()   # --memory-budget / --hardware of this invocation only
    # JAX on a CPU machine shows 8 devices (only read when jax first starts)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()


SPEC_HELP = ("NAME=SPEC, one entry per dim: an axis, '-' for whole, or several axes joined by '+' (major to "
             "minor), e.g. 'x=dp,-', '*.c_fc.weight=tp,-', 'ids=dp+tp,-'; NAME may be an fnmatch glob")


def _common(f):
    f = click.option("--mesh", "mesh_text", default="dp=2", show_default=True,
                     help="named axes NAME=SIZE, e.g. dp=2,tp=4 (devices row-major)")(f)
    f = click.option("--plan", type=click.Choice(["dp", "fsdp", "megatron", "megatron-sp", "auto"]), default=None,
                     help="fill in specs: data parallel, ZeRO-3, or the zoo's Megatron layout (+ sequence parallel); "
                          "the batch goes over every axis the other specs leave; auto: chosen by modeled step time")(f)
    f = click.option("--memory-budget", default=None, expose_value=False, callback=_set_auto_option,
                     help="with --plan auto: bytes per device, e.g. 80GB, 512MiB, 8e9 [default: the hardware's HBM less 10%]")(f)
    f = click.option("--hardware", default=None, expose_value=False, callback=_set_auto_option,
                     help="with --plan auto: the hardware preset it models (h100 h200 b200 a100 tpu-v5e ...) [default: h200]")(f)
    f = click.option("--spec", "spec_texts", multiple=True, help=SPEC_HELP)(f)
    f = click.option("--frontend", type=click.Choice(["jax", "torch"]), default=None,
                     help="which twin of a zoo model to capture [default: jax]; a file model is what it is")(f)
    f = click.option("--train", is_flag=True, help="one training step (forward, backward, optimizer update) "
                                                   "instead of the forward pass; a file model needs a loss")(f)
    f = click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default=None,
                     help="the training step's optimizer (with --train) [default: sgd]")(f)
    f = click.option("--batch", type=int, default=None,
                     help="batch size [default: 4 for zoo models; a file model's factory(batch=...)]")(f)
    f = click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
                     help="write a sharding map, a timeline and an HTML report into this directory")(f)
    f = click.option("--dump-dir", default=None, type=click.Path(file_okay=False), expose_value=False,
                     callback=_set_dump_dir, help="write each stage's text here (as SHARDC_DUMP_DIR)")(f)
    return click.argument("model")(f)


_AUTO_OPTIONS: dict = {}
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2 ** 10, "MIB": 2 ** 20,
          "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_bytes(text: str) -> float:
    import re
    from .errors import Error
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise Error(f"--memory-budget {text!r}: write bytes as a number with an optional unit (80GB, 512MiB, 8e9)")
    return float(m.group(1)) * _UNITS[m.group(2).upper()]


def _set_auto_option(ctx, param, value):
    if value is not None:
        _AUTO_OPTIONS[param.name] = parse_bytes(value) if param.name == "memory_budget" else value
    return value


def _set_dump_dir(ctx, param, value):
    if value:
        os.environ["SHARDC_DUMP_DIR"] = value
    return value


def _prepare(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir=None):
    import shardc
    from .errors import Error
    if optimizer is not None and not train:
        raise Error("--optimizer needs --train")
    mesh = parse_mesh(mesh_text)
    t0 = time.perf_counter()
    g, args, m = load_model(model, frontend, train, batch, optimizer or "sgd")
    t1 = time.perf_counter()
    specs, plan = build_specs(m, g, mesh, plan, spec_texts)
    if plan == "auto":
        prog = shardc.partition(g, mesh, specs, plan, memory_budget=_AUTO_OPTIONS.get("memory_budget"),
                                hardware=_AUTO_OPTIONS.get("hardware") or "h200")
    elif _AUTO_OPTIONS:
        raise Error(f"--{next(iter(_AUTO_OPTIONS)).replace('_', '-')} is for --plan auto")
    else:
        prog = shardc.partition(g, mesh, specs, plan)
    t2 = time.perf_counter()
    for note in prog.notes:
        click.echo(f"note: {note}", err=True)
    if report_dir:
        from .report import write_report
        path = write_report(prog, report_dir, title=f"{model} {_what(train, optimizer)} on {mesh}")
        click.echo(f"report: {path or report_dir}", err=True)
    return g, args, prog, {"capture": t1 - t0, "partition": t2 - t1}


def _what(train: bool, optimizer: str | None) -> str:
    return f"train step ({optimizer or 'sgd'})" if train else "forward"


ENGINE_TARGETS = {"interpreter": ("triton", "pallas", "sim"), "torch": ("triton",), "jax": ("pallas",)}


def _check_engine(target: str, engine: str) -> None:
    """Each engine runs one kind of kernels: refuse a pair that would run something else."""
    from .errors import Error
    if target not in ENGINE_TARGETS[engine]:
        if target == "sim":
            raise Error(f"--target sim runs the IR simulator in this process; --engine {engine} needs kernels "
                        f"(--target {ENGINE_TARGETS[engine][0]})")
        raise Error(f"--engine {engine} runs {ENGINE_TARGETS[engine][0].capitalize()} kernels, not {target}: use "
                    f"--target {ENGINE_TARGETS[engine][0]}, or --engine "
                    f"{'jax' if target == 'pallas' else 'torch'} for {target} kernels")


@main.command()
@_common
@click.option("--target", type=click.Choice(["triton", "pallas", "sim"]), default="triton", show_default=True,
              help="generated Triton or Pallas kernels (interpreters on CPU), or the IR simulator")
@click.option("--engine", type=click.Choice(["interpreter", "torch", "jax"]), default="interpreter", show_default=True,
              help="run the kernels on the interpreters in one process, or on torch.distributed ranks / JAX devices")
@click.option("--check/--no-check", default=True, show_default=True, help="compare with the unsharded model")
def run(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir, target, engine, check):
    """Capture MODEL, partition it over the mesh, compile its kernels, run every device, check."""
    import shardc
    from rich.console import Console
    from rich.table import Table
    from .runtime.check import compare
    _check_engine(target, engine)
    console = Console(stderr=True)
    with console.status(f"capturing {model} and partitioning it over {mesh_text}"):
        g, args, prog, times = _prepare(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir)
    console = Console()
    kernels = ""
    if target == "sim":
        t = time.perf_counter()
        got = prog.simulate(*args)
        times["run (SPMD simulator)"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        with Console(stderr=True).status(f"generating {target} kernels"):
            exe = shardc.compile(prog, target=target)
        times["codegen"] = time.perf_counter() - t
        t = time.perf_counter()
        with Console(stderr=True).status(f"running {prog.mesh.size} devices on the {engine}"):
            outs = exe.run_interpreted(*args) if engine == "interpreter" else exe.run(*args, engine=engine)
        got = [np.asarray(shardc.ir.to_numpy(a)) for a in outs]
        where = {"interpreter": f"the {target} interpreter, every device in this process",
                 "torch": f"{prog.mesh.size} torch.distributed ranks", "jax": f"{prog.mesh.size} JAX devices"}[engine]
        times[f"run ({where})"] = time.perf_counter() - t
        kernels = f", {len(exe.kernels)} {target} kernels run on {where}"
    console.print(f"[bold]{model}[/] {_what(train, optimizer)} on {prog.mesh}: "
                  f"{len(g.nodes)} IR nodes, {len(prog.local.nodes)} per device{kernels}, "
                  f"{len(prog.collectives)} collectives, {sum(c.bytes for c in prog.collectives)} B per device")
    kinds = Table("collective", "count", "bytes per device", "wire bytes", title="communication")
    for kind in sorted({c.kind for c in prog.collectives}):
        cs = [c for c in prog.collectives if c.kind == kind]
        kinds.add_row(kind, str(len(cs)), str(sum(c.bytes for c in cs)), str(sum(c.wire_bytes for c in cs)))
    console.print(kinds)
    ok = True
    if check:
        t = time.perf_counter()
        want = g.evaluate(*args)
        times["reference"] = time.perf_counter() - t
        errs = Table("output", "dtype", "rel. error", "tolerance", "ok", title="check against the unsharded model")
        report = compare(g.output_names, got, want)  # the comparison shardc.check makes
        ok = all(r.ok for r in report)
        report.sort(key=lambda r: -r.max_rel / max(r.tol, 1e-30))  # worst first; a training step has one output per parameter
        for r in report[:8]:
            errs.add_row(r.name, r.dtype, f"{r.max_rel:.2e}", f"{r.tol:.0e}", "[green]yes[/]" if r.ok else "[red]NO[/]")
        if len(report) > 8:
            errs.add_row(f"... {len(report) - 8} more, {'all' if ok else 'not all'} within tolerance", "", "", "", "")
        console.print(errs)
    console.print("times: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))
    if not ok:
        raise SystemExit(1)


@main.command("compile")
@_common
@click.option("--target", type=click.Choice(["triton", "pallas"]), default="triton", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="directory for the device program, kernel sources, shardings and ledger")
def compile_cmd(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir, target, out_dir):
    """Partition MODEL and generate its kernels; write every stage's text into --out."""
    from pathlib import Path

    import shardc
    out = Path(out_dir)
    g, args, prog, times = _prepare(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir)
    exe = shardc.compile(prog, target=target)
    files = {"global.ir": str(g), "device.ir": str(prog.local), "ledger.txt": prog.ledger() + "\n",
             "shardings.txt": prog.shardings_text(),
             "launch_plan.txt": exe.plan_text() + "\n"}
    files.update({f"kernels/{k.name}.py": k.source for k in exe.kernels})
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: never a half-written file
    click.echo(f"wrote {len(files)} files to {out} ({len(exe.kernels)} {target} kernels, "
               f"{len(prog.collectives)} collectives)")


@main.command()
@_common
def tune(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir):
    """Autotune every Triton kernel of MODEL on this machine and store the best configs."""
    import shardc
    from rich.progress import track
    from .codegen import autotune
    g, args, prog, _ = _prepare(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir)
    exe = shardc.compile(prog, target="triton")
    kernels = list({k.name: k for k in exe.kernels}.values())
    if autotune.gpu_name() is None:
        click.echo("note: no GPU here: configs are timed on the Triton interpreter, which says nothing about GPU "
                   f"speed; they are stored under the device {autotune.INTERPRETER!r}, not a GPU's", err=True)
    for k in track(kernels, description=f"tuning {len(kernels)} kernels"):
        best = autotune.tune(k)
        click.echo(f"{k.name}: {best}")
    click.echo(f"tuning database: {autotune.db_path()}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("which", type=click.Choice(["comm", "fusion"]))
@click.argument("bench_args", nargs=-1, type=click.UNPROCESSED)
def bench(which, bench_args):
    """Run a benchmark from the source checkout's bench/: comm (vs XLA) or fusion (kernels, bytes)."""
    import runpy
    import sys
    from pathlib import Path
    from .errors import Error
    script = Path(__file__).resolve().parent.parent / "bench" / {"comm": "comm_vs_xla.py", "fusion": "fusion.py"}[which]
    if not script.is_file():
        raise Error(f"benchmarks live in the source checkout's bench/ ({script} not found)")
    sys.argv = [str(script), *bench_args]
    runpy.run_path(str(script), run_name="__main__")


@main.command("models")
def models_cmd():
    """List the model zoo: every name:size with its parameter count and shape."""
    from rich.console import Console
    from rich.table import Table
    from .models import PRESETS, PRODUCTION, get
    t = Table("MODEL", "parameters", "config", title="the model zoo (shardc run MODEL ...; production presets "
                                                     "are shape-only: shardc analyze MODEL ...)")
    for name, sizes in {**PRESETS, **PRODUCTION}.items():
        for size in sizes:
            m = get(f"{name}:{size}")
            fields = {k: v for k, v in vars(m.config).items() if k not in ("init_std", "family")}
            t.add_row(f"{name}:{size}", f"{m.num_params():,}", ", ".join(f"{k}={v}" for k, v in fields.items()))
    Console().print(t)


@main.command()
@_common
def explain(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir):
    """Print every input's sharding and where it came from, and every collective with its reason."""
    from rich.console import Console
    from rich.table import Table
    console = Console()
    g, args, prog, _ = _prepare(model, mesh_text, plan, spec_texts, frontend, train, optimizer, batch, report_dir)
    t = Table("input", "shape", "sharding", "origin", title="inputs")
    for p, s in zip(g.inputs, prog.input_shardings):
        t.add_row(p.name, str(list(p.shape)), str(s), prog.origins.get(p, ""))
    console.print(t)
    c = Table("kind", "axes", "bytes", "tensor", "source", "reason", title="collectives")
    for r in prog.collectives:
        c.add_row(r.kind, ",".join(r.axes), str(r.bytes), r.tensor, r.source or "", r.reason)
    console.print(c)
    if getattr(prog, "auto", None) is not None:   # --plan auto: what it chose, and what it rejected
        click.echo(prog.auto.text())


from . import cli_analyze  # noqa: E402,F401  (registers `shardc analyze` on main)


def entry():
    """Console entry: one clear line for user errors; tracebacks only with SHARDC_DEBUG set."""
    from .errors import Error
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as e:  # one line, as for shardc's own errors (--help shows usage)
        click.echo(f"shardc: error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Error as e:
        if os.environ.get("SHARDC_DEBUG"):
            raise
        click.echo(f"shardc: error: {e}", err=True)
        sys.exit(2)
    except SystemExit:
        raise


if __name__ == "__main__":
    entry()
