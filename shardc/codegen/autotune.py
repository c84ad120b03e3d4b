"""The autotuner: benchmark the candidates of a kernel's tuning space (its kernels/ template's
`TUNING`, each laid over the kernel's default launch config) and keep the fastest in a tuning
database that `compile()` reads.

    from shardc.codegen import autotune
    best = autotune.tune(exe.kernels[0])           # benchmarks, stores, returns the best config
    autotune.tune_all(exe)                          # every distinct kernel of an executable
    shardc.compile(prog).kernels[0].config(...)     # now the stored best, on that device

Timing: with a GPU driver, the kernel compiled for the GPU under `triton.testing.do_bench`; without
one (CI), the kernel on the Triton interpreter under a CPU timer. Interpreter timings say nothing
about a GPU: they are kept under the device name "interpreter", a smoke test of the machinery,
and only a few candidates are tried there (interpreter cost grows with grid size × loop trips).

The database is one JSON file (`tuning.json` under SHARDC_CACHE_DIR, default ~/.cache/shardc):
entries keyed by kernel hash (of its generated source) + argument shapes + device name, written
atomically (tmp + rename). A corrupt file is ignored with a warning and rewritten on the next put.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
import warnings
from pathlib import Path

from .cache import cache_root, write_atomic

DB_VERSION = 1
INTERPRETER = "interpreter"
CPU_CANDIDATES = 3  # the default config and the first few of the space: a smoke test, not a search


def db_path() -> Path:
    return cache_root() / "tuning.json"


def kernel_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def shapes_text(inputs, outputs) -> str:
    one = lambda n: f"{n.dtype}{list(n.shape)}".replace(" ", "")
    return ",".join(one(x) for x in inputs) + "->" + ",".join(one(o) for o in outputs)


def entry_key(khash: str, shapes: str, device: str) -> str:
    return f"{khash}|{shapes}|{device}"


@functools.lru_cache(maxsize=None)
def gpu_name() -> str | None:
    """The GPU kernels would run on here, or None (no driver: the interpreter)."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # a broken driver install is "no GPU" to the tuner
        return None
    return None


def device_for(interpret: bool) -> str | None:
    return INTERPRETER if interpret else gpu_name()


class TuningDB:
    """The tuning database file. Reads are cached while the file is unchanged (compile looks up
    every kernel it emits); every put re-reads, updates one entry and replaces the file."""

    _memo: dict = {}  # path -> (mtime_ns, size, entries)

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else db_path()

    def entries(self) -> dict:
        try:
            st = self.path.stat()
        except OSError:
            return {}
        memo = self._memo.get(str(self.path))
        if memo and memo[:2] == (st.st_mtime_ns, st.st_size):
            return memo[2]
        entries = self._read()
        self._memo[str(self.path)] = (st.st_mtime_ns, st.st_size, entries)
        return entries

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            if not (isinstance(data, dict) and data.get("version") == DB_VERSION
                    and isinstance(data.get("entries"), dict)):
                raise ValueError("not a shardc tuning database of version %d" % DB_VERSION)
            entries = data["entries"]
            for k, e in entries.items():
                if not (isinstance(e, dict) and isinstance(e.get("config"), dict)):
                    raise ValueError(f"entry {k!r} has no config")
            return entries
        except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            warnings.warn(f"shardc: ignoring the corrupt tuning database {self.path} ({e}); "
                          "it is rewritten at the next tuning", RuntimeWarning, stacklevel=3)
            return {}

    def get(self, key: str) -> dict | None:
        return self.entries().get(key)

    def put(self, key: str, entry: dict) -> None:
        entries = dict(self._read()) if self.path.exists() else {}
        entries[key] = entry
        write_atomic(self.path, json.dumps({"version": DB_VERSION, "entries": entries}, indent=1, sort_keys=True))
        self._memo.pop(str(self.path), None)


def lookup(khash: str, shapes: str, device: str | None, db: TuningDB | None = None) -> dict | None:
    """The stored best launch config of a kernel on `device`, or None."""
    if device is None:
        return None
    e = (db or TuningDB()).get(entry_key(khash, shapes, device))
    return dict(e["config"]) if e else None


def tuned_choose(choose, source: str, inputs, outputs):
    """A kernel's `choose(interpret)` that prefers the database's best config for this device
    (looked up when compile() emits the kernel); `choose(interpret, tuned=False)` is the default."""
    khash, shapes = kernel_hash(source), shapes_text(inputs, outputs)
    db = TuningDB()
    found = {}
    for interpret in (True, False):
        dev = device_for(interpret) if interpret or db.entries() else None
        cfg = lookup(khash, shapes, dev, db)
        if cfg is not None:
            found[interpret] = cfg

    def pick(interpret: bool, tuned: bool = True) -> dict:
        base = choose(interpret)
        return {**base, **found[interpret]} if tuned and interpret in found else base
    pick.tuned = found
    return pick


def default_config(kernel, interpret: bool) -> dict:
    """The kernel's launch config before tuning."""
    try:
        return kernel._choose(interpret, tuned=False)
    except TypeError:
        return kernel.config(interpret)


# ------------------------------------------------------------------------------ benchmarking
def candidates(kernel, interpret: bool, limit: int | None = None) -> list[dict]:
    """The kernel's default config, then each point of its template's space laid over it."""
    base = default_config(kernel, interpret)
    out = [dict(base)]
    for point in kernel.tuning:
        c = {**base, **point}
        if c not in out:
            out.append(c)
    return out[:limit] if limit else out


def random_args(kernel, device: str = "cpu", seed: int = 0) -> list:
    """Inputs of the kernel's shapes and dtypes (ints small: indices stay in range), empty
    outputs, mesh coordinates 0."""
    import torch

    from .executable import torch_dtype
    gen = torch.Generator().manual_seed(seed)
    args = []
    for x in kernel.inputs:
        dt = torch_dtype(x.dtype)
        if dt.is_floating_point:
            t = torch.randn(x.shape, generator=gen).to(dt)
        elif dt is torch.bool:
            t = torch.rand(x.shape, generator=gen) < 0.5
        else:
            t = torch.randint(0, 4, x.shape, generator=gen).to(dt)
        args.append(t.to(device))
    args += [torch.empty(o.shape, dtype=torch_dtype(o.dtype), device=device) for o in kernel.outputs]
    args += [0 for _ in kernel.axes]
    return args


def _time_cpu(fn, reps: int) -> float:
    fn()  # warm-up: the interpreter's first launch also builds the kernel
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def benchmark(kernel, configs: list[dict], interpret: bool, args=None, reps: int = 2) -> list[tuple[dict, float | None, str]]:
    """(config, milliseconds or None, error) per config; outputs are checked against the first
    config's (a config that computes something else is rejected, not timed)."""
    import torch
    if interpret:
        args = args if args is not None else random_args(kernel)
        run = lambda cfg: kernel.launch(args, cfg)
    else:
        import triton.testing
        args = args if args is not None else random_args(kernel, "cuda")
        mod = kernel.module(False)
        run = lambda cfg: mod.launch(args, cfg)
    nout = len(kernel.outputs)
    outs = [a for a in args if isinstance(a, torch.Tensor)][len(kernel.inputs):len(kernel.inputs) + nout]
    results, ref = [], None
    for cfg in configs:
        try:
            run(cfg)
            got = [o.detach().float().cpu().clone() for o in outs]
            if ref is None:
                ref = got
            elif not all(torch.allclose(a, b, rtol=1e-2, atol=1e-2, equal_nan=True) for a, b in zip(got, ref)):
                results.append((cfg, None, "outputs differ from the default config's"))
                continue
            ms = _time_cpu(lambda: run(cfg), reps) if interpret else triton.testing.do_bench(lambda: run(cfg))
            results.append((cfg, float(ms), ""))
        except Exception as e:  # an infeasible point (shared memory, registers): skip it
            results.append((cfg, None, f"{type(e).__name__}: {e}"[:300]))
    return results


def tune(kernel, interpret: bool | None = None, configs: list[dict] | None = None, db: TuningDB | None = None,
         args=None, reps: int = 2) -> dict:
    """Benchmark `kernel`'s candidates on this machine's device (a GPU if a driver is present,
    else the interpreter with at most CPU_CANDIDATES candidates), store the fastest, return it."""
    if interpret is None:
        interpret = gpu_name() is None
    device = device_for(interpret)
    if device is None:
        raise RuntimeError("autotune: no GPU here; tune with interpret=True (the interpreter) instead")
    if configs is None:
        configs = candidates(kernel, interpret, CPU_CANDIDATES if interpret else None)
    results = benchmark(kernel, configs, interpret, args, reps)
    timed = [(cfg, ms) for cfg, ms, _ in results if ms is not None]
    if not timed:
        raise RuntimeError(f"autotune: no config of {kernel.name} ran: " + "; ".join(err for _, _, err in results))
    best, best_ms = min(timed, key=lambda t: t[1])
    khash = kernel_hash(kernel.source)
    shapes = shapes_text(kernel.inputs, kernel.outputs)
    (db or TuningDB()).put(entry_key(khash, shapes, device), {
        "config": best, "ms": best_ms, "kernel": kernel.name, "device": device, "shapes": shapes,
        "timer": "cpu (interpreter)" if interpret else "triton.testing.do_bench",
        "candidates": [{"config": c, "ms": ms, "error": err} for c, ms, err in results],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return best


def tune_all(exe, interpret: bool | None = None, db: TuningDB | None = None, **kw) -> dict[str, dict]:
    """Tune every distinct kernel of an executable: {kernel name: best config}."""
    out = {}
    for k in exe.kernels:
        if k.name not in out:
            out[k.name] = tune(k, interpret, db=db, **kw)
    return out

