"""The pipeline on JAX CPU devices (engine "jax_pipeline": one jitted shard_map program per stage
and action, ppermute between stages): two training steps == the unsharded reference."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P, runtime
from shardc.runtime.pipeline_exec import slot_bubble
from shardc.testing import rel_err

from multihost_job import step_graph
from test_pipeline_torch import _program, _steps, assert_steps_match


def _run_steps(g, args, prog, p, R):
    trace = []
    got, got_loss = _steps(g, args, lambda *a: runtime.run(prog, *a, engine="jax_pipeline", trace=trace))
    want, want_loss = _steps(g, args, g.evaluate)
    assert [acts for _, _, acts in sorted(trace[:p * R])][::R] == prog.slots    # each device ran its slot list
    assert max(rel_err(a, b) for a, b in zip(got_loss, want_loss)) < 1e-5
    return got, want, trace


@pytest.mark.parametrize("schedule", ["zero-bubble", "interleaved-1f1b"])
def test_mlp_steps(schedule):
    """A 4-layer MLP's SGD step over pp=2 x dp=2 x tp=2 (small programs: quick to compile)."""
    g, args = step_graph()
    tp = {n: P(None, "tp") for n in g.input_names if "layers." in n}
    prog = shardc.partition(g, Mesh({"pp": 2, "dp": 2, "tp": 2}), {"x": P("dp"), "y": P("dp"), **tp},
                            pipeline=shardc.Pipeline("pp", 2, schedule))
    got, want, trace = _run_steps(g, args, prog, 2, 4)
    assert max(rel_err(a, b) for a, b in zip(got, want)) < 1e-5
    # ZB-H1 at p=2, m=2: 1 idle slot of 3m+p-1 per device; interleaved (v=2): (p-1)/(v·m+p-1)
    assert slot_bubble(trace[:8]) == pytest.approx(1 / 7 if schedule == "zero-bubble" else 1 / 5)


# Each group compiles its stages' programs once (XLA on 2 shared cores: seconds per program); a
# further schedule of the group reuses them (runtime/pipeline_jax.py caches programs by structure):
# GPipe's are 1F1B's, zero-bubble compiles only its B and W. Rows: GPT-2 SGD on pp2 x dp2 x tp2
# under 1F1B, GPipe and zero-bubble; Llama Adam on pp4 x dp2 under GPipe and 1F1B (its zero-bubble
# B and W would add ~15 s; the torch rows run it). Interleaving runs on JAX in test_mlp_steps; the
# rest of the matrix runs on torch (test_pipeline_torch.MATRIX).
@pytest.mark.slow
@pytest.mark.parametrize("model,optimizer,mesh,schedule", [
    ("gpt2", "sgd", "pp2xdp2xtp2", "1f1b"), ("gpt2", "sgd", "pp2xdp2xtp2", "gpipe"),
    ("gpt2", "sgd", "pp2xdp2xtp2", "zero-bubble"),
    ("llama", "adam", "pp4xdp2", "gpipe"), ("llama", "adam", "pp4xdp2", "1f1b"),
])
def test_zoo_steps(model, optimizer, mesh, schedule):
    # one layer per stage: XLA's compile time grows with the ops of each stage's programs
    m, g, args, prog = _program(model, optimizer, mesh, schedule, layers=int(mesh.split("x")[0].removeprefix("pp")))
    p = prog.mesh.axes["pp"]
    got, want, _ = _run_steps(g, args, prog, p, 8 // p)
    assert_steps_match(m, g, got, want, optimizer)


def test_jax_pipeline_refuses_spmd_program():
    from shardc.ir import DType, Op
    from shardc.ir.graph import GraphBuilder
    b = GraphBuilder("f")
    x = b.parameter("x", (4, 4), DType.f32)
    prog = shardc.partition(b.build([b.add(Op.NEG, [x])]), Mesh({"dp": 2}), {"x": P("dp")})
    with pytest.raises(shardc.Error, match="jax_pipeline.*PipelineProgram"):
        runtime.run(prog, np.ones((4, 4), np.float32), engine="jax_pipeline")
