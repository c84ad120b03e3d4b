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


class FileModel:
    """MODEL given as path/to/file.py:factory — factory() returns (model_or_fn, example_args) and
    optionally a dict of specs."""

    def __init__(self, text: str):
        import importlib.util
        from pathlib import Path

        from .errors import Error
        path, _, factory = text.rpartition(":")
        if not path.endswith(".py") or not factory.isidentifier():
            raise Error(f"MODEL {text!r}: expected a zoo name (gpt2:tiny) or path/to/file.py:factory")
        file = Path(path)
        if not file.is_file():
            raise Error(f"MODEL {text!r}: no such file {str(file)!r}")
        spec = importlib.util.spec_from_file_location(f"shardc_user_model_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            made = getattr(module, factory)()
        except AttributeError as e:
            if not hasattr(module, factory):
                raise Error(f"MODEL {text!r}: {str(file)!r} has no function {factory!r}") from None
            raise Error(f"MODEL {text!r}: {factory}() raised {type(e).__name__}: {e}") from e
        except Exception as e:  # the user's code failed: say where, in one line
            raise Error(f"MODEL {text!r}: {type(e).__name__}: {e}") from e
        if not isinstance(made, tuple) or len(made) not in (2, 3):
            raise Error(f"MODEL {text!r}: {factory}() must return (model_or_fn, example_args[, specs])")
        self.fn, args = made[0], made[1]
        self.args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        self.specs = dict(made[2]) if len(made) == 3 else {}

    def tp_specs(self):
        from .errors import Error
        raise Error("--plan megatron needs a zoo model; give a file model's specs with --spec or its factory")


def load_model(model: str, frontend: str, train: bool, batch: int):
    """A zoo name ("gpt2:tiny") or path/to/file.py:factory → (Graph, args, model)."""
    import shardc
    from . import models
    if ".py:" in model:
        m = FileModel(model)
        is_torch = any(type(a).__module__.startswith("torch") for a in m.args) or \
            type(m.fn).__module__.startswith("torch")
        g = shardc.from_torch(m.fn, m.args) if is_torch else shardc.from_jax(m.fn, *m.args)
        return g, m.args, m
    m = models.get(model)
    g, args = m.capture(train, frontend, batch)
    return g, args, m


def build_specs(m, g, plan: str | None, spec_texts) -> tuple[dict, str | None]:
    specs = {}
    if plan in ("megatron", "megatron-sp"):
        specs.update(m.tp_specs())
        if plan == "megatron-sp":
            from .partition.plans import sequence_parallel_specs
            specs.update(sequence_parallel_specs(g))
        plan = None
    specs.update(getattr(m, "specs", {}))  # a file model's own specs; --spec overrides
    for text in spec_texts:
        name, p = parse_spec(text)
        specs[name] = p
    return specs, plan


@click.group()
def main():
    """shardc: partition PyTorch and JAX models over a device mesh and check them."""
    # kernels run on Triton's interpreter here; it binds at import, so say so before anything imports it
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # and JAX on a CPU machine shows 8 devices (only read when jax first starts)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()


def _common(f):
    f = click.option("--mesh", "mesh_text", default="dp=2", show_default=True, help="axes, e.g. dp=2,tp=4")(f)
    f = click.option("--plan", type=click.Choice(["dp", "fsdp", "megatron", "megatron-sp"]), default=None,
                     help="fill in specs: data parallel, ZeRO-3, or the zoo's Megatron layout (+ sequence parallel)")(f)
    f = click.option("--spec", "spec_texts", multiple=True, help="NAME=SPEC, e.g. 'x=dp,-' or '*.c_fc.weight=tp,-'")(f)
    f = click.option("--frontend", type=click.Choice(["jax", "torch"]), default="jax", show_default=True)(f)
    f = click.option("--train", is_flag=True, help="the SGD training step instead of the forward pass")(f)
    f = click.option("--batch", default=4, show_default=True)(f)
    f = click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
                     help="write a sharding map, a timeline and an HTML report into this directory")(f)
    f = click.option("--dump-dir", default=None, type=click.Path(file_okay=False), expose_value=False,
                     callback=_set_dump_dir, help="write each stage's text here (as SHARDC_DUMP_DIR)")(f)
    return click.argument("model")(f)


def _set_dump_dir(ctx, param, value):
    if value:
        os.environ["SHARDC_DUMP_DIR"] = value
    return value


def _prepare(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir=None):
    import shardc
    mesh = parse_mesh(mesh_text)
    t0 = time.perf_counter()
    g, args, m = load_model(model, frontend, train, batch)
    t1 = time.perf_counter()
    specs, plan = build_specs(m, g, plan, spec_texts)
    prog = shardc.partition(g, mesh, specs, plan)
    t2 = time.perf_counter()
    if report_dir:
        from .report import write_report
        write_report(prog, report_dir, title=f"{model} {'train step' if train else 'forward'} on {mesh}")
    return g, args, prog, {"capture": t1 - t0, "partition": t2 - t1}


@main.command()
@_common
@click.option("--target", type=click.Choice(["triton", "pallas", "sim"]), default="triton", show_default=True,
              help="generated Triton or Pallas kernels (interpreters on CPU), or the IR simulator")
@click.option("--engine", type=click.Choice(["interpreter", "torch", "jax"]), default="interpreter", show_default=True,
              help="run the kernels on the interpreters in one process, or on torch.distributed ranks / JAX devices")
@click.option("--check/--no-check", default=True, show_default=True, help="compare with the unsharded model")
def run(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir, target, engine, check):
    """Capture MODEL, partition it over the mesh, compile its kernels, run every device, check."""
    import shardc
    from rich.console import Console
    from rich.table import Table
    from .testing import rel_err, tolerance
    console = Console(stderr=True)
    with console.status(f"capturing {model} and partitioning it over {mesh_text}"):
        g, args, prog, times = _prepare(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir)
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
        times[f"run ({target} interpreter)" if engine == "interpreter" else f"run ({engine})"] = time.perf_counter() - t
        kernels = f", {len(exe.kernels)} {target} kernels"
    console.print(f"[bold]{model}[/] {'train step' if train else 'forward'} on {prog.mesh}: "
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
        rows = []
        for name, a, b in zip(g.output_names, got, want):
            e, tol = rel_err(a, b), max(tolerance(b.dtype), 1e-5)
            ok &= e <= tol
            rows.append((e / tol, name, str(b.dtype), f"{e:.2e}", f"{tol:.0e}", "[green]yes[/]" if e <= tol else "[red]NO[/]"))
        rows.sort(key=lambda r: -r[0])  # worst first; a training step has one output per parameter
        for r in rows[:8]:
            errs.add_row(*r[1:])
        if len(rows) > 8:
            errs.add_row(f"... {len(rows) - 8} more, {'all' if ok else 'not all'} within tolerance", "", "", "", "")
        console.print(errs)
    console.print("times: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))
    if not ok:
        raise SystemExit(1)


@main.command("compile")
@_common
@click.option("--target", type=click.Choice(["triton", "pallas"]), default="triton", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="directory for the device program, kernel sources, shardings and ledger")
def compile_cmd(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir, target, out_dir):
    """Partition MODEL and generate its kernels; write every stage's text into --out."""
    from pathlib import Path

    import shardc
    out = Path(out_dir)
    g, args, prog, times = _prepare(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir)
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
def tune(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir):
    """Autotune every Triton kernel of MODEL on this machine and store the best configs."""
    import shardc
    from rich.progress import track
    from .codegen import autotune
    g, args, prog, _ = _prepare(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir)
    exe = shardc.compile(prog, target="triton")
    kernels = list({k.name: k for k in exe.kernels}.values())
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


@main.command()
@_common
def explain(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir):
    """Print every input's sharding and where it came from, and every collective with its reason."""
    from rich.console import Console
    from rich.table import Table
    console = Console()
    g, args, prog, _ = _prepare(model, mesh_text, plan, spec_texts, frontend, train, batch, report_dir)
    t = Table("input", "shape", "sharding", "origin", title="inputs")
    for p, s in zip(g.inputs, prog.input_shardings):
        t.add_row(p.name, str(list(p.shape)), str(s), prog.origins.get(p, ""))
    console.print(t)
    c = Table("kind", "axes", "bytes", "tensor", "source", "reason", title="collectives")
    for r in prog.collectives:
        c.add_row(r.kind, ",".join(r.axes), str(r.bytes), r.tensor, r.source or "", r.reason)
    console.print(c)


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
