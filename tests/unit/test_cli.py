"""The `shardc` command as users type it (the README's main job included)."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from shardc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_readme_main_job_runs_and_checks():
    r = run("run", "gpt2:tiny", "--mesh", "dp=2,tp=2", "--plan", "megatron", "--train")
    assert r.exit_code == 0, r.output
    assert "check against the unsharded model" in r.output and "NO" not in r.output
    assert "all_reduce" in r.output


def test_compile_writes_every_stage(tmp_path):
    r = run("compile", "llama:tiny", "--mesh", "tp=2", "--plan", "megatron", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    for name in ("global.ir", "device.ir", "ledger.txt", "shardings.txt", "launch_plan.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    kernels = list((tmp_path / "kernels").glob("*.py"))
    assert kernels and all("@triton.jit" in k.read_text() for k in kernels)
    assert "all_reduce(tp)" in (tmp_path / "ledger.txt").read_text()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("args", [
    ["run", "mlp:tiny", "--mesh", "dp=2", "--plan", "fsdp", "--target", "sim"],
    ["run", "mlp:tiny", "--mesh", "dp=2", "--plan", "fsdp"],
    ["run", "mlp:tiny", "--mesh", "tp=2", "--plan", "megatron", "--target", "pallas"],
    ["run", "gpt2:tiny", "--mesh", "dp=2,tp=2", "--plan", "megatron", "--engine", "torch"],
    ["run", "llama:tiny", "--mesh", "dp=2,tp=2", "--plan", "megatron-sp", "--target", "pallas", "--engine", "jax"],
    ["run", "llama:tiny", "--mesh", "tp=2", "--spec", "*.q_proj.weight=tp,-", "--frontend", "jax"],
    ["explain", "mlp:tiny", "--mesh", "tp=2", "--plan", "megatron"],
])
def test_commands_work_as_documented(args):
    r = run(*args)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, msg", [
    (["run", "nope:tiny"], "unknown model 'nope'"),
    (["run", "mlp:tiny", "--mesh", "dp=two"], "--mesh 'dp=two'"),
    (["run", "mlp:tiny", "--spec", "x"], "--spec 'x'"),
    (["run", "mlp:tiny", "--mesh", "dp=2", "--spec", "inputs[0]=tp"], "axis 'tp' is not in Mesh"),
])
def test_bad_input_is_one_clear_line(args, msg):
    p = subprocess.run([sys.executable, "-m", "shardc.cli", *args], capture_output=True, text=True)
    assert p.returncode == 2
    assert msg in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_report_has_the_sharding_map_timeline_and_ledger(tmp_path):
    r = run("explain", "gpt2:tiny", "--mesh", "dp=2,tp=2", "--plan", "megatron", "--report", str(tmp_path))
    assert r.exit_code == 0, r.output
    page = (tmp_path / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # self-contained: both pictures inline
    assert "Sharding map" in page and "Timeline" in page
    assert page.count("<td>all_reduce</td>") == 4  # Megatron: two per layer
    assert "h.0.attn.c_attn.weight" in page
    for png in ("sharding_map.png", "timeline.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
