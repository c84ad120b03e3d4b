"""The collective passes on the real engines: the collective matmul (rings of collective-permutes
with partial matmuls) runs exactly on 4 gloo ranks and on 8 JAX CPU devices, and the gloo trace
shows permutes in flight while partial matmuls run; the latency-hiding scheduler's order runs on
both too (its collectives start where it placed them)."""
import pytest

import shardc
from _zoo import captured, program
from shardc import Mesh
from shardc.partition.passes import run_passes
from shardc.partition.passes_collective_matmul import collective_matmul
from shardc.partition.plans import sequence_parallel_specs
from shardc.report import collective_overlap, write_report


def _collective_matmul_program(mesh: Mesh, bidirectional: bool):
    m, g, args = captured("gpt2", False)
    specs = dict(m.tp_specs())
    specs.update(sequence_parallel_specs(g, batch_axes=tuple(a for a in mesh.axis_names if a != "tp")))
    prog = shardc.partition(g, mesh, specs, passes=())
    report = collective_matmul(prog, "always", bidirectional)
    assert "4 all-gather → matmul" in report.summary and "4 matmul → reduce-scatter" in report.summary
    run_passes(prog, ["schedule"])
    assert {c.kind for c in prog.collectives} == {"collective_permute"}
    return prog, args


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_collective_matmul_on_gloo_ranks_overlaps_permutes_with_partial_matmuls(torch_pool, bidirectional,
                                                                                 tmp_path):
    prog, args = _collective_matmul_program(Mesh(tp=4), bidirectional)
    trace: list = []
    report = shardc.runtime.check(prog, *args, engine="torch", world=torch_pool, trace=trace)
    assert all(r.ok for r in report)
    local = prog.local.nodes
    for events in trace:  # on every rank a partial matmul runs while a permute is in flight
        in_flight, overlapped = set(), 0
        for e in events:
            if e.kind == "start" and e.op == "collective_permute":
                in_flight.add(e.index)
            elif e.kind == "wait":
                in_flight.discard(e.index)
            elif e.kind == "op" and e.op == "dot_general" and in_flight:
                overlapped += not any(local[i] in local[e.index].inputs for i in in_flight)
        assert overlapped >= 4
        stats = collective_overlap(events)
        assert 0 < stats["blocked_s"] < stats["in_flight_s"] and 0 < stats["hidden_fraction"] < 1
    page = write_report(prog, tmp_path, "collective matmul", trace=trace).read_text()
    assert (tmp_path / "measured.png").stat().st_size > 0 and "Timeline (measured)" in page


def test_collective_matmul_on_8_jax_devices(tmp_path):
    """Exact on 8 JAX CPU devices, and XLA's profiler gives each device's measured timeline:
    every ring permute and the instructions between them, one row per device in the report."""
    import numpy as np
    from shardc.runtime.jax_exec import run_jax
    prog, args = _collective_matmul_program(Mesh(dp=2, tp=4), True)
    report = shardc.runtime.check(prog, *args, engine="jax")
    assert all(r.ok for r in report)
    trace: list = []
    outs = run_jax(prog, *args, trace=trace)
    for got, want in zip(outs, run_jax(prog, *args)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    permutes = sum(n.op.value == "collective_permute" for n in prog.local.nodes)
    assert len(trace) == 8
    for events in trace:
        waits = [e for e in events if e.kind == "wait"]
        assert len(waits) == permutes and all("permute" in e.op for e in waits)
        assert sum(e.kind == "kernel" for e in events) > permutes
        assert all(a.t0 <= b.t0 and e.t0 <= e.t1 for a, b, e in zip(events, events[1:], events))
    page = write_report(prog, tmp_path, "collective matmul (JAX)", trace=trace).read_text()
    assert (tmp_path / "measured.png").stat().st_size > 0 and "Timeline (measured)" in page


def test_scheduled_fsdp_training_step_on_both_engines(torch_pool):
    prog, args = program("llama", True, "2x2-fsdp")
    assert prog.local.scheduled and prog.passes[-1].name == "schedule"
    assert all(r.ok for r in shardc.runtime.check(prog, *args, engine="torch", world=torch_pool))
    assert all(r.ok for r in shardc.runtime.check(prog, *args, engine="jax"))
