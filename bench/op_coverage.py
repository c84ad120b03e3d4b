"""Framework coverage, measured on the frameworks' own op databases.

PyTorch: every OpInfo in `torch.testing._internal.common_methods_invocations.op_db` that supports
float32 on CPU and is not random, complex, linalg or sorting; its FIRST float32 sample (input,
args, kwargs) becomes a function of the sample's tensors (other arguments baked in), captured
with `shardc.from_torch` and checked:
  - evaluate: `g.evaluate(*tensors)` against torch's own result (f32: |a-b| <= 1e-5 + 1e-4|b|,
    NaNs where torch has NaNs; integers and bools exactly);
  - simulate: `shardc.partition(g, Mesh({"x": 2}), specs)` with the first tensor input split over
    x along its first dim when that dim is even, else every input replicated (the partitioner
    still chooses how to split the rest), then `prog.simulate(*tensors)` against torch.
JAX: the records of `jax._src.internal_test_util.lax_test_util.lax_ops()` less the 4 that only
have complex dtypes (65 records); each record at float32 (else int32, else its first dtype) on
operands of shape (4, 6) from the record's own rng, through `shardc.from_jax` the same way.

Skipped before counting: ops whose first sample has over MAX_ELEMENTS elements, and ops that
torch itself cannot run or that give different results on two calls (random ones).

Outcomes per op: "ok", "wrong" (ran, mismatched torch), "refused" (a shardc.Error: listed with
its message), "crash" (any other exception: a shardc bug, listed with its traceback tail) and
"timeout". Prints a table; writes bench/results/op_coverage.json.

    .venv/bin/python bench/op_coverage.py [--only NAME,...] [--torch-only | --jax-only]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import traceback
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

MAX_ELEMENTS = 20_000
TIMEOUT_S = 30
RTOL, ATOL = 1e-4, 1e-5
LAX_SHAPE = (4, 6)

# OpInfo names left out by kind (the selection): linalg, sorting, complex-only, random
LINALG = re.compile(r"^(linalg\.|_linalg|cholesky|inverse|det$|logdet|slogdet|pinverse|matrix_exp|lu|qr$|svd|"
                    r"geqrf|ormqr|triangular_solve|symeig|eig|lstsq|pca_lowrank|svd_lowrank|"
                    r"ldl|householder|cholesky_|lu_|ormqr|tensorinv|tensorsolve|norm$|nn\.functional\.pdist)")
SORTING = re.compile(r"^(sort|argsort|msort|topk|kthvalue|median|nanmedian|mode|unique|unique_consecutive|"
                     r"searchsorted_|quantile|nanquantile|_unique)")
RANDOMISH = re.compile(r"(^|\.)(bernoulli|normal|rand|randn|randint|multinomial|dropout|"
                       r"uniform|cauchy|exponential|geometric|log_normal|poisson|rrelu|"
                       r"feature_alpha_dropout|alpha_dropout|gumbel)|^(new_)?empty")  # empty: undefined values
COMPLEXISH = re.compile(r"(^fft\.|^stft|^istft|^view_as_complex|^view_as_real|^complex$|^polar|^real$|"
                        r"^imag$|^angle$|^conj|^resolve_conj|^resolve_neg|^_refs)")


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _close(got, want) -> tuple[bool, str]:
    """got (numpy) against want (numpy) as the module docstring says."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    if want.dtype.kind in "fc" or got.dtype.kind in "fc":
        g, w = got.astype(np.float64), want.astype(np.float64)
        if np.array_equal(np.isnan(g), np.isnan(w)) and np.allclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True):
            return True, ""
        bad = ~np.isclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True)
        return False, f"max abs err {np.nanmax(np.abs(g - w)[bad]) if bad.any() else 'nan pattern'}"
    if np.array_equal(got.astype(want.dtype), want):
        return True, ""
    return False, "integer/bool values differ"


def _compare(got, want) -> tuple[bool, str]:
    if len(got) != len(want):
        return False, f"{len(got)} outputs, framework gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        ok, why = _close(g, w)
        if not ok:
            return False, f"output {i}: {why}"
    return True, ""


def _run_stage(what, fn):
    """(outcome, detail, value)."""
    import shardc
    signal.alarm(TIMEOUT_S)
    try:
        return "ok", "", fn()
    except _Timeout:
        return "timeout", f"over {TIMEOUT_S}s", None
    except shardc.Error as err:
        return "refused", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", None
    except Exception as err:  # noqa: BLE001
        tb = traceback.format_exception(err)
        return "crash", f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''} | " + \
            "".join(tb[-3:])[-600:], None
    finally:
        signal.alarm(0)


def _check(capture, evaluate, partition, simulate, want) -> dict:
    """One op through capture → evaluate and → partition → simulate."""
    rec = {}
    state, detail, g = _run_stage("capture", capture)
    if state != "ok":
        rec["evaluate"] = rec["simulate"] = state
        rec["detail"] = detail
        return rec
    state, detail, got = _run_stage("evaluate", lambda: evaluate(g))
    if state == "ok":
        ok, why = _compare(got, want)
        state, detail = ("ok", "") if ok else ("wrong", why)
    rec["evaluate"] = state
    if detail:
        rec["detail"] = detail
    state, detail, got = _run_stage("simulate", lambda: simulate(partition(g)))
    if state == "ok":
        ok, why = _compare(got, want)
        state, detail = ("ok", "") if ok else ("wrong", why)
    rec["simulate"] = state
    if detail:
        rec["simulate_detail"] = detail
    return rec


def _specs(shapes, names):
    from shardc import P
    if shapes and len(shapes[0]) and shapes[0][0] % 2 == 0 and shapes[0][0] > 0:
        return {names[0]: P("x", *([None] * (len(shapes[0]) - 1)))}
    return {}


# ------------------------------------------------------------------------------------- torch
def torch_ops(only=None):
    import torch
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.utils import _pytree as pytree

    seen = set()
    for op in op_db:
        name = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        if name in seen or (only and name not in only and op.name not in only):
            continue
        seen.add(name)
        if LINALG.search(op.name) or SORTING.search(op.name) or RANDOMISH.search(op.name) or \
                COMPLEXISH.search(op.name):
            continue
        try:
            if torch.float32 not in op.supported_dtypes("cpu"):
                continue
        except Exception:  # noqa: BLE001
            continue
        yield name, op


def _torch_sample(op):
    import torch
    torch.manual_seed(0)
    sample = next(iter(op.sample_inputs("cpu", torch.float32, requires_grad=False)))
    return sample


def measure_torch(only=None) -> dict:
    import torch
    from torch.utils import _pytree as pytree
    import shardc
    from shardc import Mesh

    results = {}
    for name, op in torch_ops(only):
        t0 = time.time()
        try:
            sample = _torch_sample(op)
        except Exception:  # noqa: BLE001
            continue
        tree = (sample.input, sample.args, sample.kwargs)
        leaves, spec = pytree.tree_flatten(tree)
        at = [i for i, l in enumerate(leaves) if isinstance(l, torch.Tensor)]
        if any(leaves[i].is_complex() or leaves[i].layout != torch.strided for i in at):
            continue
        if sum(leaves[i].numel() for i in at) > MAX_ELEMENTS:
            results[name] = {"skipped": "first sample too large"}
            continue
        tensors = [leaves[i].detach().clone() for i in at]

        def fn(*ts, _leaves=leaves, _at=at, _spec=spec, _op=op):
            full = list(_leaves)
            for i, t in zip(_at, ts):
                full[i] = t
            inp, args, kwargs = pytree.tree_unflatten(full, _spec)
            return _op.op(inp, *args, **kwargs)

        try:
            with torch.no_grad():
                w1 = fn(*[t.clone() for t in tensors])
                w2 = fn(*[t.clone() for t in tensors])
        except Exception:  # noqa: BLE001
            continue
        flat1 = [x for x in pytree.tree_leaves(w1) if isinstance(x, torch.Tensor)]
        flat2 = [x for x in pytree.tree_leaves(w2) if isinstance(x, torch.Tensor)]
        if not flat1 or any(x.is_complex() or x.layout != torch.strided for x in flat1):
            continue
        if any(not torch.equal(a, b) and not (a.is_floating_point() and torch.allclose(a, b, equal_nan=True))
               for a, b in zip(flat1, flat2)):
            continue  # random
        want = [(x.float() if x.dtype == torch.bfloat16 else x).numpy() for x in flat1]
        fn.__name__ = re.sub(r"\W", "_", name)
        shapes = [tuple(t.shape) for t in tensors]

        def capture():
            return shardc.from_torch(fn, tuple(t.clone() for t in tensors))

        def partition(g):
            return shardc.partition(g, Mesh({"x": 2}), specs=_specs(shapes, g.input_names))

        rec = _check(capture, lambda g: g.evaluate(*[t.clone() for t in tensors]), partition,
                     lambda p: p.simulate(*[t.clone() for t in tensors]), want)
        rec["seconds"] = round(time.time() - t0, 2)
        results[name] = rec
        print(f"  torch {name:40s} {rec['evaluate']:8s} {rec['simulate']:8s} {rec['seconds']:.1f}s",
              file=sys.stderr, flush=True)
    return results


# --------------------------------------------------------------------------------------- lax
def lax_records(only=None):
    from jax._src.internal_test_util import lax_test_util
    for i, rec in enumerate(lax_test_util.lax_ops()):
        dts = [np.dtype(d) for d in rec.dtypes]
        if all(d.kind == "c" for d in dts):
            continue
        name = rec.op
        if only and name not in only:
            continue
        dt = next((np.dtype(t) for t in (np.float32, np.int32) if np.dtype(t) in dts), dts[0])
        yield f"{name}[{dt.name}]", rec, dt


def measure_lax(only=None) -> dict:
    import jax
    from jax import lax
    import shardc
    from shardc import Mesh

    results = {}
    for name, rec, dt in lax_records(only):
        t0 = time.time()
        rng = rec.rng_factory(np.random.RandomState(0))
        args = [np.asarray(rng(LAX_SHAPE, dt)) for _ in range(rec.nargs)]
        fn = getattr(lax, rec.op)
        try:
            want = [np.asarray(fn(*args))]
        except Exception:  # noqa: BLE001
            continue

        def capture(fn=fn, args=args):
            return shardc.from_jax(fn, *args)

        def partition(g):
            return shardc.partition(g, Mesh({"x": 2}), specs=_specs([a.shape for a in args], g.input_names))

        out = _check(capture, lambda g: g.evaluate(*args), partition, lambda p: p.simulate(*args), want)
        out["seconds"] = round(time.time() - t0, 2)
        results[name] = out
        print(f"  lax {name:40s} {out['evaluate']:8s} {out['simulate']:8s} {out['seconds']:.1f}s", file=sys.stderr,
              flush=True)
    return results


# ------------------------------------------------------------------------------------ report
def summarize(results: dict) -> dict:
    counted = {k: v for k, v in results.items() if "skipped" not in v}
    out = {"total": len(counted), "skipped": sorted(k for k, v in results.items() if "skipped" in v)}
    for stage in ("evaluate", "simulate"):
        for state in ("ok", "wrong", "refused", "crash", "timeout"):
            out[f"{stage}_{state}"] = sorted(k for k, v in counted.items() if v[stage] == state)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated op names")
    ap.add_argument("--torch-only", action="store_true")
    ap.add_argument("--jax-only", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "op_coverage.json"))
    a = ap.parse_args(argv)
    only = set(filter(None, a.only.split(",")))
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.time()
    report = {}
    if not a.jax_only:
        report["torch"] = measure_torch(only)
    if not a.torch_only:
        report["lax"] = measure_lax(only)
    summary = {k: summarize(v) for k, v in report.items()}
    print(f"\n{'database':10s} {'ops':>5s} {'evaluate':>9s} {'simulate':>9s} {'wrong':>6s} {'refused':>8s} "
          f"{'crash':>6s}")
    for k, s in summary.items():
        print(f"{k:10s} {s['total']:5d} {len(s['evaluate_ok']):9d} {len(s['simulate_ok']):9d} "
              f"{len(s['evaluate_wrong']) + len(s['simulate_wrong']):6d} {len(s['evaluate_refused']):8d} "
              f"{len(s['evaluate_crash']) + len(s['simulate_crash']):6d}")
    for k, s in summary.items():
        res = report[k]
        for label, key in (("wrong (evaluate)", "evaluate_wrong"), ("wrong (simulate)", "simulate_wrong"),
                           ("crash (evaluate)", "evaluate_crash"), ("crash (simulate)", "simulate_crash"),
                           ("refused (evaluate)", "evaluate_refused"), ("refused (simulate)", "simulate_refused"),
                           ("timeout (evaluate)", "evaluate_timeout"), ("timeout (simulate)", "simulate_timeout")):
            names = [n for n in s[key] if not key.startswith("simulate") or res[n]["evaluate"] == "ok"]
            if names:
                print(f"\n{k} {label}{' (evaluate ok)' if key.startswith('simulate') else ''}: {len(names)}")
                for name in names:
                    d = res[name].get("simulate_detail" if key.startswith("simulate") else "detail", "")
                    print(f"  {name}: {d.splitlines()[0] if d else ''}"[:220])
    print(f"\n{time.time() - t0:.0f} s")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    if only and os.path.exists(a.out):
        return 0  # a partial run does not overwrite the full figures
    with open(a.out, "w") as f:
        json.dump({"summary": summary, "results": report, "seconds": round(time.time() - t0, 1)}, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
