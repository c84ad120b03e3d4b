"""Kernel benchmarks: the zoo's kernels at realistic sizes against torch eager and torch.compile.

    .venv/bin/python bench/kernels.py [--cases matmul,layer_norm,...] [--scale gpu|cpu]
                                      [--torch-compile | --no-torch-compile] [--json PATH] [--chart PATH]

Each case is one computation the zoo's models run (a matmul with its bias + GELU epilogue, layer
norm, RMSNorm, softmax, cross-entropy, causal attention forward and backward, the AdamW update,
one GPT-2 layer), written in torch, captured by shardc (from_torch), compiled for one device and
run through its launch plan (runtime/serial.py's DevicePlan: every kernel of the plan, in order).
Per case: the kernels it became, the result checked against torch eager, the time of shardc's
plan, of torch eager and of torch.compile on the same computation (inputs resident on the
device), achieved TFLOP/s and GB/s, and the fraction of the roofline: max(FLOPs / peak, bytes /
measured copy bandwidth) over the time, where bytes are the minimum (each input read once, each
output written once) and FLOPs the matmuls' (causal attention counts the unmasked half).
Matmul rows also give the time of torch.matmul on the same operands.

On a GPU (--scale gpu, the default there): bf16 at realistic sizes, times from
triton.testing.do_bench, peak FLOP/s from the hardware preset of the GPU's name. On a CPU machine
(--scale cpu, the default there): f32 at small sizes, shardc's kernels on the Triton interpreter
and torch on the CPU: those times say nothing about a GPU and are labelled "interpreter"; the
run takes a minute or two. torch.compile runs by default on a GPU only (--torch-compile on a
CPU; it compiles C++ per case). Writes a table, bench/results/kernels-<gpu|cpu>.json and a bar
chart (bench/results/kernels-<gpu|cpu>.png, with matplotlib).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    name: str
    kind: str                      # "matmul" (compute-bound), "memory" (bandwidth-bound), "layer"
    setup: Callable                # (scale, dtype) -> (torch callable, args on the CPU)
    flops: Callable = lambda args: 0.0
    capture: str = "auto"          # from_torch's capture ("make_fx" for a backward pass)
    matmul_operands: Callable | None = None   # args -> (a, b): the torch.matmul reference


def _randn(*shape, dtype):
    import torch
    return torch.randn(*shape, dtype=torch.float32).to(dtype)


def _matmul(scale, dt):
    n = 4096 if scale == "gpu" else 64
    return (lambda a, b: a @ b), (_randn(n, n, dtype=dt), _randn(n, n, dtype=dt))


def _matmul_bias_gelu(scale, dt):
    import torch.nn.functional as F
    m, k, n = (8192, 768, 3072) if scale == "gpu" else (64, 32, 96)  # GPT-2's MLP up-projection
    return ((lambda x, w, b: F.gelu(x @ w + b, approximate="tanh")),
            (_randn(m, k, dtype=dt), _randn(k, n, dtype=dt) * k ** -0.5, _randn(n, dtype=dt)))


def _rows(scale):
    return (16384, 4096) if scale == "gpu" else (64, 256)


def _layer_norm(scale, dt):
    import torch.nn.functional as F
    r, c = _rows(scale)
    return ((lambda x, g, b: F.layer_norm(x, (c,), g, b, 1e-5)),
            (_randn(r, c, dtype=dt), _randn(c, dtype=dt), _randn(c, dtype=dt)))


def _rms_norm(scale, dt):
    import torch

    def rms_norm(x, w):  # the zoo's RMSNorm: statistics in f32
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * w
    r, c = _rows(scale)
    return rms_norm, (_randn(r, c, dtype=dt), _randn(c, dtype=dt))


def _softmax(scale, dt):
    import torch
    r, c = _rows(scale)
    return (lambda x: torch.softmax(x, dim=-1)), (_randn(r, c, dtype=dt),)


def _cross_entropy(scale, dt):
    import torch
    import torch.nn.functional as F
    t, v = (8192, 50304) if scale == "gpu" else (32, 500)   # GPT-2's (padded) vocabulary
    return ((lambda logits, y: F.cross_entropy(logits.float(), y)),
            (_randn(t, v, dtype=dt), torch.randint(0, v, (t,))))


def _attention_shape(scale):
    return (4, 16, 1024, 64) if scale == "gpu" else (1, 2, 64, 16)


def _attention(scale, dt):
    from shardc.models.torch_models import causal_attention
    shape = _attention_shape(scale)
    return causal_attention, tuple(_randn(*shape, dtype=dt) for _ in range(3))


def _attention_backward(scale, dt):
    import torch

    from shardc.models.torch_models import causal_attention

    def attention_backward(q, k, v, do):  # dq, dk, dv (the forward recomputed, as a fused kernel does)
        with torch.enable_grad():  # (the benchmark times the rest under no_grad)
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            return torch.autograd.grad(causal_attention(q, k, v), (q, k, v), do)
    shape = _attention_shape(scale)
    return attention_backward, tuple(_randn(*shape, dtype=dt) for _ in range(4))


def _attention_flops(args, dots):
    """FLOPs of `dots` S x S x D matmuls per head (forward: QKᵀ, PV; backward, as FlashAttention
    counts it: QKᵀ again, dV, dP, dQ, dK), causal: half the scores."""
    b, h, s, d = args[0].shape
    return dots * 2.0 * b * h * s * s * d / 2


def _adamw(scale, dt):
    import torch

    from shardc.models.optim import update

    def adamw(p, g, m, v, step):  # the zoo's optimizer, on one flat parameter
        new_p, state = update("adamw", {"w": p}, {"w": g}, {"step": step, "m": {"w": m}, "v": {"w": v}},
                              1e-3, torch.sqrt)
        return new_p["w"], state["m"]["w"], state["v"]["w"]
    n = 1 << 26 if scale == "gpu" else 4096
    f32 = torch.float32
    return adamw, (_randn(n, dtype=f32), _randn(n, dtype=f32), _randn(n, dtype=f32) * 0.1,
                   _randn(n, dtype=f32).abs() * 0.01, torch.tensor(9.0))


def _gpt2_layer(scale, dt):
    from shardc.models import get
    from shardc.models.torch_models import GPT2Block
    import torch
    cfg = get("gpt2:small" if scale == "gpu" else "gpt2:tiny").config
    torch.manual_seed(0)
    block = GPT2Block(cfg).to(dt).eval()
    batch = 8 if scale == "gpu" else 2
    return block, (_randn(batch, cfg.seq_len, cfg.d_model, dtype=dt),)


def _gpt2_layer_flops(args):
    b, s, d = args[0].shape
    return 2.0 * b * s * (12 * d * d) + 2.0 * b * s * s * d  # 4 matmuls (12 d² per token) + causal attention


CASES = [
    Case("matmul", "matmul", _matmul, lambda a: 2.0 * a[0].shape[0] * a[0].shape[1] * a[1].shape[1],
         matmul_operands=lambda a: (a[0], a[1])),
    Case("matmul_bias_gelu", "matmul", _matmul_bias_gelu,
         lambda a: 2.0 * a[0].shape[0] * a[0].shape[1] * a[1].shape[1], matmul_operands=lambda a: (a[0], a[1])),
    Case("layer_norm", "memory", _layer_norm),
    Case("rms_norm", "memory", _rms_norm),
    Case("softmax", "memory", _softmax),
    Case("cross_entropy", "memory", _cross_entropy),
    Case("attention_fwd", "matmul", _attention, lambda a: _attention_flops(a, 2)),
    Case("attention_bwd", "matmul", _attention_backward, lambda a: _attention_flops(a, 5), capture="make_fx"),
    Case("adamw_update", "memory", _adamw),
    Case("gpt2_layer", "layer", _gpt2_layer, _gpt2_layer_flops),
]


# ------------------------------------------------------------------------------------- the machine
@dataclass
class Machine:
    device: str                # "cuda" or "cpu"
    label: str                 # what the times mean
    peak_flops: float | None   # bf16 dense FLOP/s (None on the CPU: no compute roofline)
    copy_bw: float             # bytes/s of a device-to-device copy, measured

    @property
    def scale(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"


def time_ms(fn, device: str, reps: int = 3) -> float:
    """Milliseconds: triton.testing.do_bench on a GPU; on the CPU the best of `reps` after one
    warm-up run."""
    if device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=5, rep=50))
    fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def machine(cpu: bool = False) -> Machine:
    """This machine's GPU (or the CPU where there is none, or `cpu`) with its copy bandwidth."""
    import torch
    if torch.cuda.is_available() and not cpu:
        from shardc.codegen.autotune_space import hardware_for
        name = torch.cuda.get_device_name()
        hw = hardware_for(name)
        x = torch.empty(1 << 29, dtype=torch.uint8, device="cuda")  # 512 MiB
        y = torch.empty_like(x)
        ms = time_ms(lambda: y.copy_(x), "cuda")
        return Machine("cuda", f"{name} (do_bench; peak from the {hw.name} preset)", hw.peak_flops["bf16"],
                       2 * x.numel() / (ms / 1e3))
    x = torch.empty(1 << 26, dtype=torch.uint8)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), "cpu", reps=5)
    return Machine("cpu", "interpreter: shardc's kernels on the Triton interpreter, torch on the CPU "
                          "(no GPU here; these times say nothing about a GPU)", None, 2 * x.numel() / (ms / 1e3))


# ------------------------------------------------------------------------------------- one case
def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def compile_case(case: Case, fn, args):
    """shardc's executable of the case on one device."""
    import shardc
    from shardc import Mesh, partition
    g = shardc.from_torch(fn, args, capture=case.capture)
    return shardc.compile(partition(g, Mesh(dp=1)))


def tune(exe, seconds: float) -> dict:
    """Autotune each distinct kernel on this GPU (roofline-pruned, `seconds` each; the GPU's own
    compile refuses configs over its resources): what was warm, timed, pruned and changed."""
    from shardc.codegen import autotune
    db, out = autotune.TuningDB(), {"kernels": 0, "warm": 0, "timed": 0, "pruned": 0, "changed": 0}
    for k in {k.name: k for k in exe.kernels}.values():
        key = autotune.kernel_key(k, autotune.gpu_name())
        out["warm"] += db.get(key) is not None
        best = autotune.tune(k, interpret=False, budget_s=seconds, resources=False)
        entry = db.get(key) or {}
        out["kernels"] += 1
        out["timed"] += sum(c["ms"] is not None for c in entry.get("candidates", []))
        out["pruned"] += len(entry.get("pruned", []))
        out["changed"] += best != autotune.default_config(k, False)
    return out


def measure(case: Case, m: Machine, torch_compile: bool, tune_s: float | None = None) -> dict:
    """One row: kernels, error against torch eager, times and rates. `tune_s`: autotune each of
    the case's kernels on the GPU first (that many seconds per kernel), then compile again."""
    import torch

    from shardc.runtime.serial import DevicePlan
    from shardc.testing import rel_err
    dt = torch.bfloat16 if m.scale == "gpu" else torch.float32
    fn, args = case.setup(m.scale, dt)
    exe = compile_case(case, fn, args)
    tuning = None
    if tune_s is not None and m.device == "cuda":
        tuning = tune(exe, tune_s)
        exe = compile_case(case, fn, args)  # compile() reads the tuned configs
    dev_fn = fn.to(m.device) if isinstance(fn, torch.nn.Module) else fn
    dev_args = tuple(a.to(m.device) for a in args)
    plan = DevicePlan(exe, m.device)
    blocks = plan.load(*args)
    with torch.no_grad():
        want = [t.detach().float().cpu().numpy() for t in _flat(dev_fn(*dev_args))]
    got = exe.prog.assemble([[t.float().cpu().numpy() for t in per] for per in plan.step(blocks)])
    err = max(rel_err(g, w) for g, w in zip(got, want))
    row = {"case": case.name, "kind": case.kind, "kernels": len(exe.kernels), "tuning": tuning,
           "kernel_kinds": [k.kind for k in exe.kernels], "shapes": [list(a.shape) for a in args],
           "dtype": str(dt).replace("torch.", ""), "max_rel_err": err, "ok": bool(err <= (2e-2 if dt != torch.float32 else 1e-4))}
    with torch.no_grad():
        row["shardc_ms"] = time_ms(lambda: plan.step(blocks), m.device)
        row["eager_ms"] = time_ms(lambda: dev_fn(*dev_args), m.device)
        row["compile_ms"] = None
        if torch_compile:
            compiled = torch.compile(dev_fn)
            compiled(*dev_args)
            row["compile_ms"] = time_ms(lambda: compiled(*dev_args), m.device)
        row["matmul_ms"] = None
        if case.matmul_operands is not None:
            a, b = case.matmul_operands(dev_args)
            row["matmul_ms"] = time_ms(lambda: a @ b, m.device)
    flops = case.flops(args)
    nbytes = _nbytes(args) + sum(o.size * o.dtype.itemsize for o in exe.prog.graph.outputs)
    s = row["shardc_ms"] / 1e3
    ideal = max(flops / m.peak_flops if m.peak_flops else 0.0, nbytes / m.copy_bw)
    row.update(flops=flops, bytes=nbytes, tflops=flops / s / 1e12, gbps=nbytes / s / 1e9,
               roofline=ideal / s, copy_fraction=nbytes / s / m.copy_bw,
               vs_eager=row["eager_ms"] / row["shardc_ms"],
               vs_compile=row["compile_ms"] / row["shardc_ms"] if row["compile_ms"] else None,
               vs_matmul=row["matmul_ms"] / row["shardc_ms"] if row["matmul_ms"] else None)
    return row


# ------------------------------------------------------------------------------------- output
def _f(v, fmt) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict], m: Machine) -> str:
    head = (f"{'case':<18}{'kern':>5}{'err':>9}{'shardc ms':>11}{'eager ms':>10}{'compile ms':>11}"
            f"{'TFLOP/s':>10}{'GB/s':>10}{'roofline':>10}{'x eager':>8}{'x compile':>10}{'x matmul':>9}")
    lines = [f"times: {m.label}; copy bandwidth {m.copy_bw / 1e9:.1f} GB/s", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['case']:<18}{r['kernels']:>5}{r['max_rel_err']:>9.1e}{r['shardc_ms']:>11.3f}"
                     f"{r['eager_ms']:>10.3f}{_f(r['compile_ms'], '.3f'):>11}{r['tflops']:>10.3g}{r['gbps']:>10.3g}"
                     f"{r['roofline']:>10.3g}{r['vs_eager']:>8.2f}{_f(r['vs_compile'], '.2f'):>10}"
                     f"{_f(r['vs_matmul'], '.2f'):>9}" + ("" if r["ok"] else "  WRONG"))
    lines.append("x eager / x compile / x matmul: the torch time over shardc's (above 1: shardc is faster)")
    return "\n".join(lines)


def chart(rows: list[dict], m: Machine, path: Path) -> str:
    """A bar chart of the speed-ups and roofline fractions; what was written, or why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed in this environment"
    names = [r["case"] for r in rows]
    series = [("x torch eager", [r["vs_eager"] for r in rows]),
              ("x torch.compile", [r["vs_compile"] or 0.0 for r in rows]),
              ("fraction of roofline", [r["roofline"] for r in rows])]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 1.1), 4.5))
    width = 0.8 / len(series)
    for i, (label, vals) in enumerate(series):
        ax.bar([x + i * width for x in range(len(rows))], vals, width, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([x + width for x in range(len(rows))], names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_title(f"shardc kernels: {m.label[:90]}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart: {path}"


def run(names: list[str], m: Machine, torch_compile: bool, tune_s: float | None = None, log=print) -> list[dict]:
    rows = []
    for case in CASES:
        if case.name in names:
            t = time.perf_counter()
            rows.append(measure(case, m, torch_compile, tune_s))
            log(f"  {case.name}: {time.perf_counter() - t:.1f} s")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(c.name for c in CASES))
    ap.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time torch.compile (default: on a GPU only)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--chart", default=None)
    a = ap.parse_args(argv)
    names = a.cases.split(",")
    unknown = sorted(set(names) - {c.name for c in CASES})
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(c.name for c in CASES)}")
    m = machine()
    torch_compile = m.device == "cuda" if a.torch_compile is None else a.torch_compile
    rows = run(names, m, torch_compile)
    print(table(rows, m))
    out = Path(a.json) if a.json else RESULTS / f"kernels-{m.scale}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": vars(m), "rows": rows}, indent=1))
    print(f"json: {out}")
    print(chart(rows, m, Path(a.chart) if a.chart else RESULTS / f"kernels-{m.scale}.png"))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
