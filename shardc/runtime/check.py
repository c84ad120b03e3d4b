"""`check`: run a partitioned program on an engine and compare every output with the unsharded
reference (prog.graph.evaluate, the numpy oracle), relative to the reference's scale."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import to_numpy
from ..testing import rel_err, tolerance
from .errors import CheckError


@dataclass(frozen=True)
class OutputError:
    """One output's comparison: max |got - want|, that over max |want|, and the dtype's tolerance."""
    name: str
    shape: tuple
    dtype: str
    max_abs: float
    max_rel: float
    tol: float
    ok: bool

    def row(self) -> str:
        mark = "ok" if self.ok else "MISMATCH"
        return (f"{self.name:<40} {self.dtype:>8} {str(list(self.shape)):>16} {self.max_abs:>11.3g} "
                f"{self.max_rel:>11.3g} {self.tol:>9.2g}  {mark}")


HEADER = f"{'output':<40} {'dtype':>8} {'shape':>16} {'max abs':>11} {'max rel':>11} {'tol':>9}"


def compare(names, got, want, tol: float | None = None) -> list[OutputError]:
    report = []
    for name, g, w in zip(names, got, want):
        g, w = to_numpy(g), np.asarray(w)
        t = tolerance(w.dtype) if tol is None else tol
        if g.shape != w.shape:
            report.append(OutputError(name, w.shape, w.dtype.name, float("inf"), float("inf"), t, False))
            continue
        d = np.abs(g.astype(np.float64) - w.astype(np.float64))
        fin = np.isfinite(d)
        max_abs = float(d[fin].max(initial=0.0)) if fin.all() else float("inf")
        rel = rel_err(g, w)
        report.append(OutputError(name, w.shape, w.dtype.name, max_abs, rel, t, bool(rel <= t)))
    return report


def table(report: list[OutputError]) -> str:
    return "\n".join([HEADER] + [r.row() for r in report])


def check(prog, *args, engine: str = "torch", tol: float | None = None, **kw) -> list[OutputError]:
    """Run `prog` (an SpmdProgram or an Executable) on `engine` ("torch" | "jax") and compare each
    output with prog.graph.evaluate(*args). Returns the per-output report; raises CheckError (a
    shardc.Error) with the table when any output is off by more than its dtype's tolerance."""
    from . import run
    from .common import as_program
    p = prog if getattr(prog, "pipeline", None) is not None else as_program(prog)   # a PipelineProgram
    got = run(prog, *args, engine=engine, **kw)
    want = p.graph.evaluate(*args)
    if len(got) != len(want):
        raise CheckError(f"{engine}: {len(got)} outputs, the reference has {len(want)}")
    report = compare(p.graph.output_names, got, want, tol)
    bad = [r for r in report if not r.ok]
    if bad:
        raise CheckError(f"{engine} run of {p.graph.name!r} over {p.mesh} differs from the reference "
                         f"in {len(bad)} of {len(report)} outputs:\n{table(report)}", report)
    return report
