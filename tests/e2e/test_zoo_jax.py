"""Every zoo model, forward and SGD step, partitioned over 8 devices (DP with a padded batch,
FSDP, 2-D Megatron, 2-D FSDP, TP + SP) and run as one jax.jit(jax.shard_map(...)) program on
8 JAX CPU devices: check == the reference."""
import jax
import numpy as np
import pytest

from _zoo import ZOO, program
from shardc.runtime import check, run

JAX_LAYOUTS = ["dp8", "2x4", "4x2-fsdp", "2x4+sp"]
SLOW = {("gpt2", True), ("llama", True)}


def _cases():
    for name in ZOO:
        for train in (False, True):
            for layout in JAX_LAYOUTS:
                marks = [pytest.mark.slow] if (name, train) in SLOW and layout != "2x4" else []
                yield pytest.param(name, train, layout, marks=marks,
                                   id=f"{name}-{'train' if train else 'forward'}-{layout}")


@pytest.mark.parametrize("name,train,layout", list(_cases()))
def test_zoo_on_jax_devices(name, train, layout):
    prog, args = program(name, train, layout)
    report = check(prog, *args, engine="jax")
    assert len(report) == len(prog.graph.outputs) and all(r.ok for r in report)


def test_fsdp8_and_4_device_meshes_on_8_devices():
    for layout in ["fsdp8", "tp4+sp"]:
        prog, args = program("gpt2", False, layout)
        check(prog, *args, engine="jax")


@pytest.mark.parametrize("name", ["gpt2", "moe"])
def test_torch_frontend_models_too(name):
    """int64 token ids (torch.export): the JAX engine runs them with x64 on."""
    prog, args = program(name, False, "2x4", "torch")
    check(prog, *args, engine="jax")


def test_outputs_are_sharded_jax_arrays():
    prog, args = program("gpt2", False, "2x4")
    (out,) = run(prog, *args, engine="jax")
    assert isinstance(out, jax.Array)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), prog.graph.evaluate(*args)[0], rtol=1e-5, atol=1e-5)
