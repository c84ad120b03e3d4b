"""The partitioner's communication against XLA's SPMD partitioner, on every row of
bench/comm_vs_xla.py: shardc moves no more bytes than XLA (at the tiny size in HLO-buffer bytes
and in bytes on the wire; at the mini size on the wire, which its cost model minimizes — there
MoE's combine gathers 1.25x-capacity expert outputs, a larger buffer than XLA's all-reduce of
the result but half the bytes sent), and matches the closed forms (exact where one is exact,
within the bound where it is a bound). Each model runs the benchmark in its own process (it sets
up JAX's 8 CPU devices)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoo_cases import ZOO

BENCH = Path(__file__).resolve().parents[2] / "bench" / "comm_vs_xla.py"


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "mini"])
@pytest.mark.parametrize("model", ZOO)
def test_no_more_bytes_than_xla(model, size, tmp_path):
    out = tmp_path / "comm.json"
    p = subprocess.run([sys.executable, str(BENCH), "--models", model, "--size", size, "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 10  # forward and training step × dp, fsdp, tp, tp+sp, 2d
    for r in rows:
        where = f"{r['model']} {r['step']} {r['layout']}"
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["shardc_wire_bytes"] <= r["xla_wire_bytes"], f"{where}: wire {r['shardc_wire_bytes']} > {r['xla_wire_bytes']}"
        if size == "tiny":
            assert r["shardc_bytes"] <= r["xla_bytes"], f"{where}: {r['shardc_bytes']} > XLA {r['xla_bytes']}"
        assert not [f for f in r["flags"] if f != ">XLA"], f"{where}: {r['flags']} (closed form {r['closed_form']})"
        if r["layout"] != "dp" or r["step"] == "train":
            assert r["shardc_bytes"] > 0, f"{where}: a split model that moves nothing?"


@pytest.mark.slow
def test_expert_parallel_rows_no_more_bytes_than_xla(tmp_path):
    """The dropless MoE layer with experts over 'ep' (shardc: two ragged all-to-alls of the routed
    rows; XLA: the GShard einsum form of the same layer) moves no more than XLA; so does the zoo's
    capacity-factor MoE with its experts and its batch over one axis (layout 'ep')."""
    out = tmp_path / "comm.json"
    p = subprocess.run([sys.executable, str(BENCH), "--models", "moe-ep,moe", "--layouts", "ep", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 8  # forward and training step × ep, dp×ep, ep×tp; the zoo MoE's two
    for r in rows:
        where = f"{r['model']} {r['step']} {r['layout']}"
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["shardc_bytes"] <= r["xla_bytes"] and r["shardc_wire_bytes"] <= r["xla_wire_bytes"], where
        if r["model"] == "moe-ep":
            assert r["routed_all_to_all_bytes"] > 0 and "ragged_all_to_all" in r["shardc_kinds"], where


def run_bench(tmp_path, *args) -> list[dict]:
    out = tmp_path / "comm.json"
    p = subprocess.run([sys.executable, str(BENCH), *args, "--json", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())["rows"]


@pytest.mark.slow
def test_torch_and_hf_style_graphs_no_more_bytes_than_xla(tmp_path):
    """The zoo's torch twins and the Hugging Face-style modules (Conv1D, fused QKV, SDPA,
    shardc/models/hf_style.py) through from_torch, and the JAX twins, against XLA on the JAX
    twin of the same shapes: at or below XLA (bytes and wire) and at the closed form where one
    exists. One process (the three frontends' rows share XLA's compiles), the training steps
    (their forward is the forward step's graph) of one-layer models, the layouts where the
    torch graphs differ from the JAX twins' (FSDP, TP + SP) and dp2 × tp4, where Llama is GQA
    with its 2 KV heads over tp=4 (replicated over tp_1; the JAX twin's repeat_kv is one
    broadcast and reshape); the benchmark itself prints every row."""
    rows = run_bench(tmp_path, "--models", "mlp,gpt2,llama,moe", "--frontend", "jax,torch,hf", "--steps", "train",
                     "--layouts", "fsdp,tp+sp,dp2xtp4", "--layers", "1")
    assert len(rows) == 30 and {r["frontend"] for r in rows} == {"jax", "torch", "hf"}
    gqa = [r for r in rows if r["model"] == "llama" and r["layout"] == "dp2xtp4"]
    assert len(gqa) == 3 and all(r["closed_form"]["rel"] == "=" for r in gqa)
    assert len({r["shardc_bytes"] for r in gqa}) == 1, [(r["frontend"], r["shardc_bytes"]) for r in gqa]
    for r in rows:
        where = f"{r['frontend']} {r['model']} {r['step']} {r['layout']}"
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["shardc_bytes"] <= r["xla_bytes"], f"{where}: {r['shardc_bytes']} > XLA {r['xla_bytes']}"
        assert r["shardc_wire_bytes"] <= r["xla_wire_bytes"], f"{where}: wire {r['shardc_wire_bytes']} > {r['xla_wire_bytes']}"
        assert not r["flags"], f"{where}: {r['flags']} (closed form {r['closed_form']})"
