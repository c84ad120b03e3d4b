"""Where the torch engine runs (runtime/devices.py: one decision), and the one-GPU runner
(runtime/serial.py) exercised on CPU tensors: its collectives equal the simulator's, and its walk of
a partitioned plan equals the interpreter engine's and the numpy reference. No GPU is here: the
GPU path differs only in the torch device and in launching compiled kernels."""
import numpy as np
import pytest

import shardc
from shardc import DType, Mesh, Op, P, partition
from shardc.ir import GraphBuilder
from shardc.partition.simulate import run_collective
from shardc.runtime.devices import Placement, choose_placement, gpu_count
from shardc.runtime.serial import DevicePlan, collective_on
from shardc.testing import rel_err


@pytest.mark.parametrize("world, gpus, compiled, request_, kind", [
    (4, 0, True, None, "cpu"),            # CI: gloo ranks, interpreted kernels (unchanged)
    (4, 0, False, None, "cpu"),
    (4, 8, False, None, "cpu"),           # programs run op by op on CPU ranks, GPUs or not
    (4, 8, True, "cpu", "cpu"),           # asked for
    (4, 4, True, None, "cuda-ranks"),     # one rank per GPU, NCCL
    (2, 8, True, "cuda", "cuda-ranks"),
    (4, 1, True, None, "cuda-serial"),    # one GPU checks a whole mesh
    (4, 2, True, None, "cuda-serial"),
    (1, 1, True, None, "cuda-serial"),    # one device: no ranks needed
])
def test_placement_is_one_decision(world, gpus, compiled, request_, kind):
    p = choose_placement(world, gpus, compiled, request_)
    assert isinstance(p, Placement) and p.kind == kind and p.on_gpu == (kind != "cpu") and p.why


def test_placement_refuses_what_it_cannot_do():
    with pytest.raises(shardc.Error, match="no CUDA GPU"):
        choose_placement(4, 0, True, "cuda")
    with pytest.raises(shardc.Error, match="compile"):
        choose_placement(4, 4, False, "cuda")
    with pytest.raises(shardc.Error, match="device='tpu'"):
        choose_placement(4, 4, True, "tpu")
    from shardc.runtime.torch_launch import LocalPool
    with pytest.raises(shardc.Error, match="LocalPool"):
        LocalPool(2, device="tpu")


def test_this_machine_runs_on_the_cpu():
    assert gpu_count() == 0 and choose_placement(4, gpu_count(), True).kind == "cpu"


@pytest.mark.parametrize("op, attrs, shape", [
    (Op.ALL_REDUCE, dict(reduce="sum"), (4, 6)), (Op.ALL_REDUCE, dict(reduce="max"), (4, 6)),
    (Op.ALL_GATHER, dict(dim=1), (4, 12)), (Op.REDUCE_SCATTER, dict(dim=0), (2, 6)),
    (Op.ALL_TO_ALL, dict(split_dim=0, concat_dim=1), (2, 12)),
    (Op.COLLECTIVE_PERMUTE, dict(pairs=((0, 1), (1, 0))), (4, 6)),
])
@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16])
def test_device_collectives_equal_the_simulator(rng, op, attrs, shape, dtype):
    import torch

    from shardc.runtime.torch_ops import to_numpy, to_torch
    mesh = Mesh(dp=2, tp=2)
    b = GraphBuilder(mesh_axes=dict(mesh.axes))
    x = b.parameter("x", (4, 6), dtype)
    n = b.add(op, [x], axes=("tp",), **attrs)
    assert n.shape == shape
    vals = [rng.standard_normal((4, 6)).astype(np.float32).astype(dtype.np) for _ in range(mesh.size)]
    want = run_collective(n, mesh, vals)
    got = collective_on(n, mesh, [to_torch(v) for v in vals])
    for w, g in zip(want, got):
        assert isinstance(g, torch.Tensor) and g.dtype == to_torch(w).dtype
        np.testing.assert_array_equal(to_numpy(g).astype(np.float32), w.astype(np.float32))


def _mlp_program():
    """Megatron MLP on dp=2 x tp=2: column- then row-parallel matmuls, an all-reduce between."""
    b = GraphBuilder()
    x = b.parameter("x", (8, 32), DType.f32)
    w1 = b.parameter("w1", (32, 64), DType.f32)
    w2 = b.parameter("w2", (64, 32), DType.f32)
    h = b.add(Op.TANH, [b.add(Op.DOT_GENERAL, [x, w1], lhs_contract=(1,), rhs_contract=(0,))])
    y = b.add(Op.DOT_GENERAL, [h, w2], lhs_contract=(1,), rhs_contract=(0,))
    g = b.build([b.add(Op.REDUCE_SUM, [b.add(Op.MUL, [y, y])], axes=(1,))])
    return partition(g, Mesh(dp=2, tp=2), {"x": P("dp", None), "w1": P(None, "tp"), "w2": P("tp", None)})


def test_one_device_runs_every_devices_plan_like_the_interpreter(rng):
    prog = _mlp_program()
    exe = shardc.compile(prog)
    assert any(s.step == "collective" for s in exe.plan)
    args = [rng.standard_normal(p.shape).astype(np.float32) for p in prog.graph.inputs]
    plan = DevicePlan(exe, "cpu")
    assert plan.interpret and plan.configs == {k.name: k.config(True) for k in exe.kernels}
    got = plan.run(*args)
    want = exe.run_interpreted(*args)
    ref = prog.graph.evaluate(*args)
    for g, w, r in zip(got, want, ref):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)   # the same kernels, the same collectives
        assert rel_err(g, r) <= 1e-5
    blocks = plan.load(*args)  # resident inputs, one step: what a GPU timing loop calls
    assert len(blocks) == 4 and all(t.device.type == "cpu" for bl in blocks for t in bl)
    outs = plan.step(blocks)
    assert np.allclose(prog.assemble([[o.numpy() for o in per] for per in outs])[0], got[0], rtol=1e-6)
    with pytest.raises(shardc.Error, match="Triton"):
        DevicePlan(shardc.compile(prog, "pallas"), "cpu")
