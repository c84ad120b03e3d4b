"""The `shardc` command as users type it (the README's main job included)."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from shardc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def readme_main_job() -> list[str]:
    """The README's main command, as written there (after its set-up step)."""
    import re
    import shlex
    from pathlib import Path
    text = (Path(__file__).parent.parent.parent / "README.md").read_text()
    line = re.search(r"bash \.ci/setup && \.venv/bin/shardc (run .*)", text).group(1)
    return shlex.split(line)


def test_readme_main_job_runs_and_checks():
    r = run(*readme_main_job())
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
    (["run", "mlp:tiny", "--plan", "zero"], "Invalid value for '--plan'"),
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


MODEL_FILE = '''
import torch
from shardc import P

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))

def factory():
    torch.manual_seed(0)
    return Net(), (torch.randn(4, 8),), {"up.weight": P("tp", None), "down.weight": P(None, "tp")}

def broken():
    raise ValueError("no weights here")
'''


def test_file_model_runs_with_its_own_specs(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text(MODEL_FILE)
    r = run("run", f"{f}:factory", "--mesh", "tp=2")
    assert r.exit_code == 0, r.output
    assert "all_reduce" in r.output and "NO" not in r.output


@pytest.mark.parametrize("model, msg", [
    ("{dir}/mymodel.py:broken", "ValueError: no weights here"),
    ("{dir}/missing.py:factory", "no such file"),
    ("{dir}/mymodel.py:nope", "has no function 'nope'"),
])
def test_bad_file_models_are_one_clear_line(tmp_path, model, msg):
    (tmp_path / "mymodel.py").write_text(MODEL_FILE)
    p = subprocess.run([sys.executable, "-m", "shardc.cli", "run", model.format(dir=tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr


def test_a_mesh_larger_than_the_devices_is_one_clear_line():
    p = subprocess.run([sys.executable, "-m", "shardc.cli", "run", "mlp:tiny", "--mesh", "dp=16",
                        "--target", "pallas", "--engine", "jax"], capture_output=True, text=True)
    assert p.returncode == 2 and "needs 16 devices" in p.stderr and "Traceback" not in p.stderr


def test_tune_stores_best_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path))
    r = run("tune", "mlp:tiny", "--mesh", "tp=2", "--plan", "megatron")
    assert r.exit_code == 0, r.output
    import json
    db = json.loads((tmp_path / "tuning.json").read_text())
    assert db and all("config" in v for v in (db.get("entries", db)).values())


def test_bench_fronts_the_benchmarks(tmp_path):
    out = tmp_path / "comm.json"  # its own process: the benchmark sets up JAX's 8 devices itself
    p = subprocess.run([sys.executable, "-m", "shardc.cli", "bench", "comm", "--models", "mlp", "--steps",
                        "forward", "--layouts", "tp", "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert out.exists() and "mlp" in p.stdout


def test_dump_dir_writes_each_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_DUMP_DIR", "")  # restored after the test; the option sets it
    r = run("run", "mlp:tiny", "--mesh", "tp=2", "--plan", "megatron", "--dump-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"00-global.txt", "01-shardings.txt", "02-spmd.txt", "03-ledger.txt", "30-launch-plan.txt"} <= set(names)
    assert any(n.startswith("31-kernel-") for n in names)
