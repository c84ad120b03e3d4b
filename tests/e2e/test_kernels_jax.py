"""Executable.run(engine="jax") for target="pallas": the one jax.jit(jax.shard_map(...)) program
walks the compiled launch plan (generated pallas_calls in interpret mode on CPU, lax collectives,
views as reshapes) instead of the IR op by op. Zoo models forward and SGD step under Megatron
TP x DP == the reference, and the body traced every kernel of the plan, in plan order."""
import functools

import jax
import numpy as np
import pytest

import shardc
from _zoo import program
from shardc.codegen import CollectiveStep
from shardc.runtime.jax_exec import jax_program


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


@functools.lru_cache(maxsize=None)
def compiled(name: str, train: bool, layout: str):
    prog, args = program(name, train, layout)
    return shardc.compile(prog, "pallas"), args


@pytest.mark.parametrize("name,train,layout", [("gpt2", False, "2x4"), ("llama", False, "2x4"),
                                               ("gpt2", True, "2x2"), ("llama", True, "2x2")],
                         ids=["gpt2-forward-2x4", "llama-forward-2x4", "gpt2-train-2x2", "llama-train-2x2"])
def test_zoo_pallas_kernels_on_jax_devices(name, train, layout):
    exe, args = compiled(name, train, layout)
    assert exe.engine == "jax"
    report = shardc.check(exe, *args)
    assert len(report) == len(exe.prog.graph.outputs) and all(r.ok for r in report)
    jp = jax_program(exe)
    assert jp.exe is exe
    assert jp.launched == [k.name for k in exe.kernels]  # the body launched the plan's kernels
    assert any(isinstance(s, CollectiveStep) for s in exe.plan)


def test_run_returns_jax_arrays_equal_to_the_interpreter():
    exe, args = compiled("gpt2", False, "2x4")
    got = exe.run(*args)
    assert all(isinstance(o, jax.Array) for o in got)
    want = exe.run_interpreted(*args)
    for g, w in zip(got, want):  # the same kernels on the same blocks
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5)


def test_programs_still_run_op_by_op():
    exe, args = compiled("gpt2", False, "2x4")
    jp = jax_program(exe.prog)
    assert jp.exe is None and jp is not jax_program(exe)
    shardc.runtime.check(exe.prog, *args, engine="jax")
    assert jp.launched == []
