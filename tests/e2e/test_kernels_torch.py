"""Executable.run(engine="torch"): every torch.distributed rank walks the compiled launch plan for
its device, launching the generated Triton kernels (interpreter on CPU), collectives through
torch.distributed (async, as the op-by-op executor) and views as reshapes. Zoo models forward and
SGD step under Megatron TP x DP (2x2) and FSDP (dp=4) == the reference, and the ranks' traces show
the kernel launches."""
import functools

import numpy as np
import pytest
import torch

import shardc
from _zoo import program
from shardc.codegen import CollectiveStep, KernelLaunch


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


@functools.lru_cache(maxsize=None)
def compiled(name: str, train: bool, layout: str, passes="default"):
    prog, args = program(name, train, layout, passes=passes)
    return shardc.compile(prog, "triton"), args


@pytest.mark.parametrize("layout", ["2x2", "fsdp4"])
@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_zoo_kernels_on_torch_ranks(torch_pool, name, train, layout):
    exe, args = compiled(name, train, layout)
    trace: list = []
    report = shardc.check(exe, *args, world=torch_pool, trace=trace, timeout_s=120)
    assert len(report) == len(exe.prog.graph.outputs) and all(r.ok for r in report)
    names = [k.name for k in exe.kernels]
    assert len(trace) == 4
    for events in trace:  # every rank launched every kernel of the plan, in plan order
        assert [e.op for e in events if e.kind == "kernel"] == names
        assert not any(e.kind == "op" for e in events)
        n_coll = sum(isinstance(s, CollectiveStep) for s in exe.plan)
        assert sum(e.kind == "start" for e in events) == sum(e.kind == "wait" for e in events) == n_coll
    assert any(isinstance(s, CollectiveStep) for s in exe.plan)


def test_run_returns_torch_tensors_equal_to_the_interpreter(torch_pool):
    exe, args = compiled("gpt2", False, "2x2")
    starts = torch_pool.starts
    got = exe.run(*args, engine="torch")          # the default pool is the session's pool
    assert torch_pool.starts == starts and all(isinstance(t, torch.Tensor) for t in got)
    want = exe.run_interpreted(*args)
    for g, w in zip(got, want):  # the same kernels on the same blocks: the same numbers
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-6, atol=1e-6)


def test_programs_still_run_op_by_op(torch_pool):
    exe, args = compiled("gpt2", False, "2x2")
    trace: list = []
    shardc.runtime.check(exe.prog, *args, engine="torch", trace=trace)
    assert all(e.kind != "kernel" for events in trace for e in events)
    assert any(e.kind == "op" for e in trace[0])
    assert sum(isinstance(s, KernelLaunch) for s in exe.plan) > 0


def test_independent_kernels_run_while_a_collective_is_in_flight(torch_pool):
    """The launch plan's collectives are asynchronous: between a collective's start and its wait
    each rank launches kernels that do not read its result. (Without the combiner, which merges
    this tiny model's gradient all-reduces into one bucket at the end of the backward pass: the
    engine's asynchrony is what is tested, with a collective per gradient to overlap.)"""
    exe, args = compiled("gpt2", True, "2x2", passes=())
    trace: list = []
    exe.run(*args, engine="torch", world=torch_pool, trace=trace)
    launches = [s.kernel for s in exe.plan if isinstance(s, KernelLaunch)]
    local = exe.prog.local.nodes
    for events in trace:
        in_flight, overlapped, k = {}, 0, 0
        for e in events:
            if e.kind == "start":
                in_flight[e.index] = local[e.index]
            elif e.kind == "wait":
                in_flight.pop(e.index, None)
            elif e.kind == "kernel":
                kernel = launches[k]
                k += 1
                if in_flight and not any(c in kernel.inputs for c in in_flight.values()):
                    overlapped += 1
        assert overlapped > 0
