"""Grouped-matmul kernels (ragged_dot: rows and contraction forms, with and without an expert
offset) against numpy of their IR nodes on the Triton interpreter and in Pallas interpret mode;
the Triton kernels compile for sm_90 and the Pallas kernels lower for TPU."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P
from shardc.codegen import pallas
from shardc.codegen.aot import SHARED_MEMORY_LIMIT, compile_for_gpu
from shardc.ir import DType, GraphBuilder, Op
from shardc.testing import rel_err

R = np.random.default_rng(3)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def _graph(dt: DType):
    """The forward (rows in groups) and the weight gradient (contraction in groups) of one expert
    layer: 4 experts, 20 rows, an empty group and rows past the last group."""
    b = GraphBuilder("grouped", {})
    x = b.parameter("x", (20, 24), dt)
    w = b.parameter("w", (4, 24, 40), dt)
    s = b.parameter("sizes", (4,), DType.i32)
    dy = b.parameter("dy", (20, 40), dt)
    y = b.add(Op.RAGGED_DOT, [x, w, s])
    dw = b.add(Op.RAGGED_DOT, [b.add(Op.TRANSPOSE, [x], perm=(1, 0)), dy, s], mode="contract")
    g = b.build([y, dw])
    args = [R.standard_normal((20, 24)).astype(dt.np), R.standard_normal((4, 24, 40)).astype(dt.np),
            np.array([6, 0, 9, 3], np.int32), R.standard_normal((20, 40)).astype(dt.np)]
    return g, args


def _run(target: str, dt: DType, mesh: Mesh, specs: dict):
    g, args = _graph(dt)
    prog = shardc.partition(g, mesh, specs)
    exe = shardc.compile(prog, target=target)
    grouped = [k for k in exe.kernels if k.kind == "grouped_matmul"]
    assert len(grouped) == 2, [k.kind for k in exe.kernels]
    tol = 1e-5 if dt is DType.f32 else 1e-2
    bad = []

    def check(k, d, ins, outs):
        for o, r, n in zip(outs, k.reference(dict(zip(k.inputs, ins)), prog.mesh.coords(d)), k.outputs):
            if not rel_err(o, r) <= tol:
                bad.append(f"{k.name} [{k.kind}] device {d}: {rel_err(o, r):.3g}")

    got = exe.run_interpreted(*args, on_kernel=check)
    assert not bad, bad
    for a, r in zip(got, g.evaluate(*args)):
        assert rel_err(np.asarray(a, np.float32), np.asarray(r, np.float32)) <= tol
    return grouped


# f32 with one expert half per device (the group offset), bf16 whole
CASES = [(DType.f32, Mesh(ep=2), {"w": P("ep", None, None), "out[1]": P("ep", None, None)}),
         (DType.bf16, Mesh(dp=1), {})]


def test_grouped_matmul_triton_kernels_equal_numpy_and_compile_for_hopper():
    kernels = [k for dt, mesh, specs in CASES for k in _run("triton", dt, mesh, specs)]
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
        assert 0 <= r["shared"] <= SHARED_MEMORY_LIMIT, (k.name, r["shared"])
        if k.inputs[0].dtype is DType.bf16:
            assert r["wgmma"], f"{k.name}: tl.dot did not become wgmma"


def test_grouped_matmul_pallas_kernels_equal_numpy_and_lower_for_tpu():
    for dt, mesh, specs in CASES:
        for k in _run("pallas", dt, mesh, specs):
            pallas.export_for_tpu(k)
