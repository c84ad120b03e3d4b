"""The public API of DESIGN.md end to end: compile, exe.run on the target's engine, shardc.check."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, models


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_compile_run_and_check(target, torch_pool):
    m = models.get("gpt2:tiny")
    params = m.jax_params(0)
    args = (params, *m.jax_inputs(4, 1))
    g = shardc.from_jax(m.jax_forward, *args)
    prog = shardc.partition(g, Mesh(dp=2, tp=2), m.tp_specs(), plan="dp")
    exe = shardc.compile(prog, target=target)
    assert exe.kernels and all(k.source for k in exe.kernels)
    kw = {"world": torch_pool} if target == "triton" else {}
    out = exe.run(*args, **kw)
    assert type(out[0]).__module__.startswith("torch" if target == "triton" else "jax")
    report = shardc.check(exe, *args, **kw)
    assert all(r.ok for r in report) and report[0].max_rel < 1e-5
    np.testing.assert_allclose(np.asarray(shardc.ir.to_numpy(out[0])), g.evaluate(*args)[0], rtol=1e-4, atol=1e-5)
