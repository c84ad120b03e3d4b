"""Inside a torch.distributed job (torchrun), `run` executes this process's rank and every rank
gets the global outputs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_under_torchrun():
    script = Path(__file__).with_name("torchrun_job.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                           str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(4):
        assert f"rank {r} of 4 ok" in proc.stdout
