"""Every zoo model, forward and SGD step, partitioned over 4 devices (DP, FSDP, Megatron TP,
TP + sequence parallel, 2-D) and run on 4 torch.distributed gloo ranks: check == the reference."""
import numpy as np
import pytest
import torch

from _zoo import ZOO, program
from shardc.runtime import check, run

TORCH_LAYOUTS = ["dp4", "fsdp4", "tp4", "tp4+sp", "2x2", "2x2-fsdp"]


@pytest.mark.parametrize("layout", TORCH_LAYOUTS)
@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_on_torch_ranks(torch_pool, name, train, layout):
    prog, args = program(name, train, layout)
    report = check(prog, *args, engine="torch", world=torch_pool, timeout_s=120)
    assert len(report) == len(prog.graph.outputs) and all(r.ok for r in report)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_torch_frontend_models_too(torch_pool, name):
    """Captured through torch.export (int64 token ids), Megatron TP + DP on a 2x2 mesh."""
    prog, args = program(name, False, "2x2", "torch")
    check(prog, *args, engine="torch", world=torch_pool, timeout_s=120)


def test_run_returns_torch_tensors_and_reuses_the_pool(torch_pool):
    prog, args = program("mlp", False, "2x2")
    starts = torch_pool.starts
    a = run(prog, *args, engine="torch")          # the default pool is the session's pool
    b = run(prog, *args, engine="torch", world=4)
    assert all(isinstance(t, torch.Tensor) for t in a)
    assert torch_pool.starts == starts
    want = prog.graph.evaluate(*args)
    for x, y, w in zip(a, b, want):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
        np.testing.assert_allclose(x.numpy(), w, rtol=1e-5, atol=1e-6)
