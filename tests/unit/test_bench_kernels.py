"""bench/kernels.py and bench/gpu_check.py on this CPU machine: gpu_check says there is no GPU and
exits 0; the kernel benchmark checks its cases against torch eager and writes its table, JSON and
chart (interpreter timings, labelled as such); gpu_check's bars read the right figure of each row."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    p = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check; exiting 0"


def test_kernel_benchmark_on_the_interpreter(tmp_path):
    out, png = tmp_path / "k.json", tmp_path / "k.png"
    p = subprocess.run([sys.executable, str(BENCH / "kernels.py"), "--cases", "layer_norm,adamw_update",
                        "--json", str(out), "--chart", str(png)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "interpreter" in p.stdout and "layer_norm" in p.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["device"] == "cpu" and data["machine"]["copy_bw"] > 0
    rows = {r["case"]: r for r in data["rows"]}
    assert set(rows) == {"layer_norm", "adamw_update"}
    ln, adam = rows["layer_norm"], rows["adamw_update"]
    assert ln["ok"] and ln["max_rel_err"] <= 1e-4 and ln["kernel_kinds"] == ["reduction"]
    assert adam["ok"] and adam["kernels"] == 1 and adam["kernel_kinds"] == ["pointwise"]
    # bytes: every input once, every output once (64x256 f32 in, out; two 256 f32 vectors)
    assert ln["bytes"] == 4 * (2 * 64 * 256 + 2 * 256)
    assert adam["bytes"] == 4 * (4 * 4096 + 1 + 3 * 4096)
    for r in rows.values():
        assert r["shardc_ms"] > 0 and r["eager_ms"] > 0 and r["compile_ms"] is None  # no torch.compile on CPU
        assert abs(r["gbps"] - r["bytes"] / r["shardc_ms"] / 1e6) <= 1e-9 * r["gbps"]
    assert png.stat().st_size > 1000


def test_gpu_check_bars_read_each_rows_figure():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", BENCH / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    rows = [{"case": "layer_norm", "kind": "memory", "copy_fraction": 0.83, "ok": True},
            {"case": "softmax", "kind": "memory", "copy_fraction": 0.5, "ok": True},
            {"case": "matmul", "kind": "matmul", "vs_matmul": 0.9, "ok": True},
            {"case": "attention_fwd", "kind": "matmul", "vs_matmul": None, "ok": True},  # no torch.matmul twin
            {"case": "gpt2_layer", "kind": "layer", "vs_compile": 1.05, "ok": True},
            {"case": "train_step", "kind": "step", "ok": True},
            {"case": "rms_norm", "kind": "memory", "skipped": True}]
    checks = gc.bars(rows, None)
    got = {c["case"]: (c["bar"], c["pass"]) for c in checks}
    assert got == {"layer_norm": (0.80, True), "softmax": (0.80, False), "matmul": (0.85, True),
                   "gpt2_layer": (1.10, False)}
    # the summary printed last: one line per step, the bar beside it, the tuner's totals
    for r in rows:
        r.update(max_rel_err=1e-3, shardc_ms=1.0, eager_ms=2.0, compile_ms=1.05, matmul_ms=0.9)
    rows[0]["tuning"] = {"kernels": 1, "warm": 0, "timed": 4, "pruned": 2, "changed": 1}
    rows[2]["tuning"] = {"kernels": 1, "warm": 1, "timed": 9, "pruned": 1, "changed": 0}
    m = type("M", (), {"label": "NVIDIA H100 80GB HBM3", "copy_bw": 3.0e12, "peak_flops": 989e12})()
    text = gc.summary(rows, checks, m)
    lines = text.splitlines()
    assert "copy 3000.0 GB/s, bf16 peak 989 TFLOP/s" in lines[0]
    assert any(l.startswith("softmax") and "0.50 (>= 0.80) FAIL" in l for l in lines)
    assert any(l.startswith("gpt2_layer") and "speed over torch.compile's 1.05 (>= 1.10) FAIL" in l for l in lines)
    assert any(l.startswith("rms_norm") and "skipped" in l for l in lines)
    assert lines[-1] == (
        "autotune: 2 kernels (1 from the database), 13 configs timed, 3 pruned by the roofline, 1 better than the default")
