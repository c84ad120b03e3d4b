"""The autotuner: time the candidates of a kernel's tuning space and keep the fastest in a tuning
database that `compile()` reads.

    from shardc.codegen import autotune
    best = autotune.tune(exe.kernels[0])           # prunes, times, stores, returns the best config
    autotune.tune_all(exe)                          # every distinct kernel of an executable
    autotune.pin(kernel, config)                    # this config, always (SHARDC_TUNE=pinned: only pins)
    shardc.compile(prog).kernels[0].config(...)     # now the stored best, on that device

Candidates (codegen/autotune_space.py): the kernel's default config, then its template's space
laid over it; on a GPU, pruned before anything runs by the roofline model and by an
ahead-of-time compile of each (shared memory over the limit, spilled registers), then timed
best-modelled first until the per-kernel time budget is spent.

Timing: with a GPU driver, the kernel compiled for the GPU under `triton.testing.do_bench`; without
one (CI), the kernel on the Triton interpreter under a CPU timer. Interpreter timings say nothing
about a GPU: they are kept under the device name "interpreter", a smoke test of the machinery,
and only a few candidates are tried there (interpreter cost grows with grid size × loop trips).

The database is one JSON file (`tuning.json` under SHARDC_CACHE_DIR, default ~/.cache/shardc):
entries keyed by kernel hash (of its generated source) + argument shapes + device name + toolchain
(shardc, Triton, torch and CUDA versions), written atomically (tmp + rename). A stored entry is a
warm start: `tune` returns it without timing anything (retune=True times again, except a pin). A
corrupt file is ignored with a warning, kept as `tuning.json.corrupt`, and replaced by a fresh
database at the next write; a database that cannot be written is a warning, never a crash.

SHARDC_TUNE picks what compile() and tune() use: "auto" (default: stored configs; tune times),
"pinned" (only pinned configs, others default; tune never times, so a run reproduces exactly), or
"off" (default configs; the database is not read).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

from ..errors import Error
from . import autotune_space
from .cache import cache_root, write_atomic

DB_VERSION = 1
INTERPRETER = "interpreter"
CPU_CANDIDATES = 3  # the default config and the first few of the space: a smoke test, not a search
BUDGET_S = 30.0     # per kernel: pruning compiles plus timing; the best so far wins when it runs out
MODES = ("auto", "pinned", "off")


def db_path() -> Path:
    return cache_root() / "tuning.json"


def mode() -> str:
    """SHARDC_TUNE: auto (default), pinned or off."""
    m = os.environ.get("SHARDC_TUNE", "") or "auto"
    if m not in MODES:
        raise Error(f"SHARDC_TUNE={m!r}: expected one of {', '.join(MODES)}")
    return m


def kernel_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def shapes_text(inputs, outputs) -> str:
    one = lambda n: f"{n.dtype}{list(n.shape)}".replace(" ", "")
    return ",".join(one(x) for x in inputs) + "->" + ",".join(one(o) for o in outputs)


@functools.lru_cache(maxsize=None)
def toolchain() -> str:
    """The versions a timing depends on besides the kernel and the device, from package metadata
    (nothing is imported): torch's version names its CUDA build ("2.13.0+cu128")."""
    from importlib import metadata

    from ..version import __version__
    parts = [f"shardc {__version__}"]
    for pkg in ("triton", "torch"):
        try:
            parts.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{pkg} none")
    return ", ".join(parts)


def entry_key(khash: str, shapes: str, device: str, tools: str | None = None) -> str:
    return f"{khash}|{shapes}|{device}|{tools or toolchain()}"


def kernel_key(kernel, device: str) -> str:
    return entry_key(kernel_hash(kernel.source), shapes_text(kernel.inputs, kernel.outputs), device)


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
        entries = self._read() or {}
        self._memo[str(self.path)] = (st.st_mtime_ns, st.st_size, entries)
        return entries

    def _read(self, warn: bool = True) -> dict | None:
        """The entries; None (with a warning) when the file is corrupt; {} when there is none."""
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
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as e:  # unreadable (permissions): nothing stored as far as we can tell
            if warn:
                warnings.warn(f"shardc: cannot read the tuning database {self.path} ({e})", RuntimeWarning, stacklevel=3)
            return {}
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            if warn:
                warnings.warn(f"shardc: ignoring the corrupt tuning database {self.path} ({e}); it is kept as "
                              f"{self.path.name}.corrupt and rebuilt at the next tuning", RuntimeWarning, stacklevel=3)
            return None

    def get(self, key: str) -> dict | None:
        return self.entries().get(key)

    def put(self, key: str, entry: dict) -> bool:
        """Store one entry; False (with a warning) where the file cannot be written."""
        entries = self._read()
        try:
            if entries is None:  # corrupt: keep the old bytes beside the fresh database
                os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
                entries = {}
            entries = {**entries, key: entry}
            write_atomic(self.path, json.dumps({"version": DB_VERSION, "entries": entries}, indent=1, sort_keys=True))
        except OSError as e:
            warnings.warn(f"shardc: could not write the tuning database {self.path} ({e}); "
                          "the tuned config is used in this process only", RuntimeWarning, stacklevel=2)
            return False
        finally:
            self._memo.pop(str(self.path), None)
        return True


def lookup(khash: str, shapes: str, device: str | None, db: TuningDB | None = None) -> dict | None:
    """The config compile() launches a kernel with on `device` under SHARDC_TUNE, or None (the
    default): the stored best (auto), only a pinned one (pinned), never (off)."""
    m = mode()
    if device is None or m == "off":
        return None
    e = (db or TuningDB()).get(entry_key(khash, shapes, device))
    if e is None or (m == "pinned" and not e.get("pinned")):
        return None
    return dict(e["config"])


def tuned_choose(choose, source: str, inputs, outputs):
    """A kernel's `choose(interpret)` that prefers the database's config for this device (looked
    up when compile() emits the kernel); `choose(interpret, tuned=False)` is the default."""
    khash, shapes = kernel_hash(source), shapes_text(inputs, outputs)
    db = TuningDB()
    found = {}
    if mode() != "off":
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


# ------------------------------------------------------------------------------ candidates
def candidates(kernel, interpret: bool, limit: int | None = None) -> list[dict]:
    """The kernel's default config, then each point of its template's space laid over it."""
    out = autotune_space.space(kernel, default_config(kernel, interpret))
    return out[:limit] if limit else out


def gpu_target() -> tuple:
    """The ahead-of-time compile target of this machine's GPU (Hopper where there is none)."""
    from .aot import HOPPER
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return ("cuda", 10 * major + minor, 32)
    except Exception:
        pass
    return HOPPER


def pruned_candidates(kernel, device: str | None = None, resources: bool = True):
    """(candidates, [(dropped config, why)]) for a GPU: the space, pruned by the roofline model on
    `device`'s hardware preset, then (resources=True) by an ahead-of-time compile of each."""
    hw = autotune_space.hardware_for(device or gpu_name())
    kept, dropped = autotune_space.prune_by_roofline(kernel, candidates(kernel, False), hw)
    if resources and len(kept) > 1:
        kept, more, _ = autotune_space.prune_by_resources(kernel, kept, gpu_target())
        dropped += more
    return kept, dropped


# ------------------------------------------------------------------------------ benchmarking
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
    """Milliseconds, best of `reps` after a warm-up (the interpreter's first launch builds)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _time_gpu(fn, reps: int) -> float:
    """Milliseconds: triton.testing.do_bench (CUDA events, L2 flushed between runs, median)."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=10, rep=max(20, 10 * reps)))


def benchmark(kernel, configs: list[dict], interpret: bool, args=None, reps: int = 2,
              budget_s: float | None = None) -> list[tuple[dict, float | None, str]]:
    """(config, milliseconds or None, why not) per config, in order; outputs are checked against
    the first config's (a config that computes something else is rejected, not timed). Once
    `budget_s` seconds have passed, the remaining configs are skipped (the first always runs)."""
    import torch
    if interpret:
        args = args if args is not None else random_args(kernel)
        run = lambda cfg: kernel.launch(args, cfg)
    else:
        args = args if args is not None else random_args(kernel, "cuda")
        run = lambda cfg: kernel.launch(args, cfg, interpret=False)
    timer = _time_cpu if interpret else _time_gpu
    nout = len(kernel.outputs)
    outs = [a for a in args if isinstance(a, torch.Tensor)][len(kernel.inputs):len(kernel.inputs) + nout]
    results, ref, start = [], None, time.monotonic()
    for cfg in configs:
        if results and budget_s is not None and time.monotonic() - start > budget_s:
            results.append((cfg, None, f"skipped: the {budget_s:g} s time budget is spent"))
            continue
        try:
            run(cfg)
            got = [o.detach().float().cpu().clone() for o in outs]
            if ref is None:
                ref = got
            elif not all(torch.allclose(a, b, rtol=1e-2, atol=1e-2, equal_nan=True) for a, b in zip(got, ref)):
                results.append((cfg, None, "outputs differ from the default config's"))
                continue
            results.append((cfg, float(timer(lambda: run(cfg), reps)), ""))
        except Exception as e:  # an infeasible point (shared memory, registers): skip it
            results.append((cfg, None, f"{type(e).__name__}: {e}"[:300]))
    return results


def tune(kernel, interpret: bool | None = None, configs: list[dict] | None = None, db: TuningDB | None = None,
         args=None, reps: int = 2, budget_s: float | None = BUDGET_S, retune: bool = False,
         prune: bool = True, resources: bool = True) -> dict:
    """The best config of `kernel` on this machine's device (a GPU if a driver is present, else
    the interpreter with at most CPU_CANDIDATES candidates), stored in the database. A stored
    entry is returned without timing (retune=True times again; a pinned entry always wins);
    under SHARDC_TUNE=pinned nothing is timed and a kernel without a pin is an error. On a GPU
    the space is pruned first (prune=False: not at all; resources=False: by the roofline only,
    leaving shared memory and registers to the GPU's own compile, which refuses what does not fit)."""
    if Path(kernel.path).parent.name == "pallas":
        raise Error(f"autotune: {kernel.name} is a Pallas kernel: its block shapes are fixed in its source "
                    "(autotune_space.pallas_space lists the candidates, each lowered for a TPU); timing "
                    "them needs a TPU")
    if interpret is None:
        interpret = gpu_name() is None
    device = device_for(interpret)
    if device is None:
        raise Error("autotune: no GPU here; tune with interpret=True (the interpreter) instead")
    db = db or TuningDB()
    key = kernel_key(kernel, device)
    stored = db.get(key)
    if mode() == "pinned":
        if not (stored and stored.get("pinned")):
            raise Error(f"autotune: SHARDC_TUNE=pinned and kernel {kernel.name} has no pinned config on {device!r} "
                        "(autotune.pin(kernel, config) stores one; SHARDC_TUNE=auto tunes)")
        return dict(stored["config"])
    if stored and (stored.get("pinned") or not retune):
        return dict(stored["config"])  # warm start: nothing is timed
    t0, dropped = time.monotonic(), []
    if configs is None:
        if interpret:
            configs = candidates(kernel, True, CPU_CANDIDATES)
        elif prune:
            configs, dropped = pruned_candidates(kernel, device, resources)
        else:
            configs = candidates(kernel, False)
    left = None if budget_s is None else max(0.0, budget_s - (time.monotonic() - t0))
    results = benchmark(kernel, configs, interpret, args, reps, left)
    timed = [(cfg, ms) for cfg, ms, _ in results if ms is not None]
    if not timed:
        raise Error(f"autotune: no config of {kernel.name} ran: " + "; ".join(err for _, _, err in results))
    best, best_ms = min(timed, key=lambda t: t[1])
    db.put(key, {
        "config": best, "ms": best_ms, "kernel": kernel.name, "device": device, "toolchain": toolchain(),
        "shapes": shapes_text(kernel.inputs, kernel.outputs),
        "timer": "cpu (interpreter)" if interpret else "triton.testing.do_bench",
        "candidates": [{"config": c, "ms": ms, "error": err} for c, ms, err in results],
        "pruned": [{"config": c, "why": why} for c, why in dropped],
        "seconds": round(time.monotonic() - t0, 3), "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return best


def pin(kernel, config: dict, device: str | None = None, db: TuningDB | None = None) -> dict:
    """Store `config` for `kernel` on `device` (default: this machine's GPU, else the interpreter)
    as pinned: compile() launches with it and tune() never replaces it. Keys must be the kernel's
    own launch parameters (a misspelt one would silently do nothing)."""
    interpret = device == INTERPRETER or (device is None and gpu_name() is None)
    device = device or device_for(interpret)
    base = default_config(kernel, interpret)
    unknown = sorted(set(config) - set(base))
    if unknown:
        raise Error(f"autotune.pin: kernel {kernel.name} has no launch parameter {', '.join(unknown)} "
                    f"(it takes {', '.join(sorted(base))})")
    full = {**base, **config}
    (db or TuningDB()).put(kernel_key(kernel, device), {
        "config": full, "pinned": True, "kernel": kernel.name, "device": device, "toolchain": toolchain(),
        "shapes": shapes_text(kernel.inputs, kernel.outputs), "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return full


def tune_all(exe, interpret: bool | None = None, db: TuningDB | None = None, **kw) -> dict[str, dict]:
    """Tune every distinct kernel of an executable: {kernel name: best config}."""
    out = {}
    for k in exe.kernels:
        if k.name not in out:
            out[k.name] = tune(k, interpret, db=db, **kw)
    return out
