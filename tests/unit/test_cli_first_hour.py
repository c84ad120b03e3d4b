"""What a newcomer does in the first hour, each as the user did it (issue: the first hour)."""
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

import shardc
from shardc import Mesh, flags, models
from shardc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "300"})


def one_line_error(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "shardc.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr


# -- 2. a plan on a mesh with a dp axis uses it ------------------------------------------------------
def test_megatron_on_dp_x_tp_splits_the_batch_over_dp():
    r = run("explain", "gpt2:tiny", "--mesh", "dp=2,tp=2", "--plan", "megatron", "--train")
    assert r.exit_code == 0, r.output
    assert "batch over 'dp'" in r.output and "input without a spec: replicated" not in r.output.split("params")[0]
    g, _ = models.get("gpt2:tiny").capture(True, "jax", 4)
    prog = shardc.partition(g, Mesh(dp=2, tp=2), models.get("gpt2:tiny").tp_specs(), "dp")
    axes = {c.axes for c in prog.collectives}
    assert ("tp",) in axes and ("dp",) in axes  # Megatron's all-reduces and the gradients' over dp
    assert prog.notes == []


def test_plan_dp_alone_uses_every_axis_and_idle_axes_are_named():
    g, _ = models.get("mlp:tiny").capture(False, "jax", 4)
    prog = shardc.partition(g, Mesh(dp=2, tp=2), plan="dp")
    assert prog.sharding_of("inputs[0]").spec() == shardc.P(("dp", "tp"), None)
    assert prog.notes == []
    prog = shardc.partition(g, Mesh(dp=2, tp=2), {"inputs[0]": shardc.P("dp")})
    assert prog.notes == ["mesh axis 'tp' is idle: no spec splits a value over it, so its 2 devices compute the same thing"]
    r = subprocess.run([sys.executable, "-m", "shardc.cli", "run", "mlp:tiny", "--mesh", "dp=2,tp=2", "--spec",
                        "inputs[0]=dp", "--target", "sim"], capture_output=True, text=True)
    assert r.returncode == 0 and "note: mesh axis 'tp' is idle" in r.stderr


# -- 3. --train and --batch on file models -------------------------------------------------------------
TORCH_FILE = '''
import torch
import torch.nn.functional as F
from shardc import P
from helpers import width                    # a sibling module: the file's folder is on the path

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, width()), torch.nn.Linear(width(), 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))

def factory(batch=6):
    torch.manual_seed(0)
    x, y = torch.randn(batch, 8), torch.randint(0, 4, (batch,))
    return {"model": Net(), "args": (x,), "targets": (y,), "loss": lambda out, y: F.cross_entropy(out, y),
            "specs": {"*up.weight": P("tp", None), "*down.weight": P(None, "tp")}}

def forward_only():
    torch.manual_seed(0)
    return Net(), (torch.randn(4, 8),)
'''

JAX_FILE = '''
import jax, jax.numpy as jnp
import numpy as np

def fn(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]

def factory():
    r = np.random.default_rng(0)
    params = {"w1": jnp.asarray(r.standard_normal((8, 16)), jnp.float32),
              "w2": jnp.asarray(r.standard_normal((16, 4)), jnp.float32)}
    x, y = jnp.asarray(r.standard_normal((4, 8)), jnp.float32), jnp.asarray(r.standard_normal((4, 4)), jnp.float32)
    return {"model": fn, "args": (params, x), "targets": (y,), "loss": lambda out, y: jnp.mean((out - y) ** 2)}
'''


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "helpers.py").write_text("def width():\n    return 16\n")
    (tmp_path / "net.py").write_text(TORCH_FILE)
    (tmp_path / "jnet.py").write_text(JAX_FILE)
    return tmp_path


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_file_model_trains_with_its_loss(model_dir, optimizer):
    r = run("run", f"{model_dir}/net.py:factory", "--mesh", "dp=2,tp=2", "--plan", "dp", "--train",
            "--optimizer", optimizer, "--batch", "4", "--target", "sim")
    assert r.exit_code == 0, r.output
    assert f"train step ({optimizer})" in r.output and "NO" not in r.output
    assert "out[1]['up.weight']" in r.output or "more, all within tolerance" in r.output


def test_file_model_train_step_is_the_real_update(model_dir):
    """The captured step equals torch's own AdamW step on the same model and batch."""
    import torch

    from shardc.file_model import FileModel
    m = FileModel(f"{model_dir}/net.py:factory", batch=4)
    g, args = m.capture(True, "adamw", lr=1e-2)
    out = shardc.partition(g, Mesh(dp=2, tp=2), m.specs, "dp").simulate(*args)
    net = m.fn
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, eps=1e-8)
    loss = m.loss(net(*m.args), *m.targets)
    loss.backward()
    opt.step()
    got = dict(zip(g.output_names, out))
    assert abs(got["out[0]"] - loss.item()) < 1e-6
    for name, p in net.named_parameters():
        np.testing.assert_allclose(got[f"out[1][{name!r}]"], p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_jax_file_model_trains(model_dir):
    r = run("run", f"{model_dir}/jnet.py:factory", "--mesh", "dp=2", "--plan", "dp", "--train", "--optimizer",
            "adam", "--target", "sim")
    assert r.exit_code == 0, r.output
    assert "train step (adam)" in r.output and "NO" not in r.output


@pytest.mark.parametrize("args, msg", [
    (["{d}/net.py:forward_only", "--train"], "--train needs a loss"),
    (["{d}/net.py:forward_only", "--batch", "8"], "--batch needs the factory to take it"),
    (["{d}/net.py:factory", "--frontend", "jax"], "is a torch model"),
    (["mlp:tiny", "--optimizer", "adam"], "--optimizer needs --train"),
    (["mlp:tiny", "--mesh", "dp=2,dp=2"], "axis 'dp' is given twice"),
    (["mlp:tiny", "--engine", "jax"], "--engine jax runs Pallas kernels, not triton"),
    (["mlp:tiny", "--engine", "torch", "--target", "pallas"], "--engine torch runs Triton kernels, not pallas"),
    (["mlp:tiny", "--engine", "torch", "--target", "sim"], "--target sim runs the IR simulator"),
])
def test_flags_that_cannot_act_are_refused(model_dir, args, msg):
    assert msg in one_line_error("run", *(a.format(d=model_dir) for a in args))


# -- 5. the dump directory under concurrent writers ------------------------------------------------------
def test_dump_has_one_temporary_file_per_writer(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_DUMP_DIR", str(tmp_path))
    errors = []

    def write(i):
        try:
            for _ in range(30):
                flags.dump(3, "ledger", f"writer {i}\n" * 100)
        except Exception as e:  # a shared .tmp makes a rename fail: FileNotFoundError
            errors.append(e)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = (tmp_path / "03-ledger.txt").read_text()
    assert len(set(text.splitlines())) == 1 and len(text.splitlines()) == 100  # one writer's whole text
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_dump_dir_with_the_torch_engine(tmp_path):
    r = run("run", "mlp:tiny", "--mesh", "dp=2", "--plan", "dp", "--engine", "torch", "--dump-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    names = {p.name for p in tmp_path.iterdir()}
    assert {"00-global.txt", "03-ledger.txt", "30-launch-plan.txt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]


# -- 6, 7. the small things -----------------------------------------------------------------------------
def test_version_models_help_and_report_location(tmp_path):
    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"shardc {shardc.__version__}"
    r = run("models")
    assert r.exit_code == 0
    assert "gpt2:small" in r.output and f"{models.get('gpt2:small').num_params():,}" in r.output
    r = run("run", "--help")
    assert "dp+tp" in r.output
    p = subprocess.run([sys.executable, "-m", "shardc.cli", "explain", "mlp:tiny", "--mesh", "dp=2", "--plan", "dp",
                        "--report", str(tmp_path / "rep")], capture_output=True, text=True)
    assert p.returncode == 0 and f"report: {tmp_path / 'rep'}" in p.stderr


def test_tune_says_interpreter_timings_are_not_gpu_timings(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "shardc.cli", "tune", "mlp:tiny", "--mesh", "dp=2", "--plan", "dp"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "says nothing about GPU speed" in p.stderr
