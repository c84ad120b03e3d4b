"""Differential and metamorphic checks across stages: random programs agree between the numpy
evaluator, the SPMD simulation and the generated Triton and Pallas kernels; resharding and back
is the identity; runs are bitwise repeatable."""
import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import shardc
import shardc.testing
from shardc import P
from shardc import models
from shardc.fuzz import check_case, graphs, meshes, pass_sets, random_inputs, specs_for
from shardc.ir import DType, GraphBuilder, Op


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_kernels_agree_with_simulation_and_evaluation(data):
    g = data.draw(graphs(max_ops=6))
    mesh = data.draw(meshes())
    specs = data.draw(specs_for(g, mesh))
    target = data.draw(st.sampled_from(["triton", "pallas"]))
    passes = data.draw(pass_sets())
    note(f"{g}\nmesh={mesh} specs={specs} target={target} passes={passes}")
    check_case(g, mesh, specs, data.draw(st.integers(0, 2**31)), (target,), passes)


def _round_trip_graph(shape):
    b = GraphBuilder("round_trip")
    x = b.parameter("x", shape, DType.f32)
    mid = b.add(Op.NEG, [x], name="mid")
    return b.build([b.add(Op.NEG, [mid])])


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_resharding_there_and_back_is_the_identity(data):
    shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 3, 4, 6, 8]), min_size=1, max_size=3)))
    g = _round_trip_graph(shape)
    mesh = data.draw(meshes())
    a = data.draw(specs_for(g, mesh)).get("x")
    b = data.draw(specs_for(g, mesh)).get("x")
    specs = {k: v for k, v in {"x": a, "mid": b, "out": a}.items() if v is not None}
    note(f"mesh={mesh} specs={specs}")
    x = random_inputs(g, 0)[0]
    (got,) = shardc.partition(g, mesh, specs).simulate(x)
    assert np.array_equal(got, x)  # moves only: bitwise


def test_runs_are_bitwise_repeatable():
    m = models.get("gpt2:tiny")
    params = m.jax_params(0)
    args = (params, *m.jax_inputs(4, 1))
    g = shardc.from_jax(m.jax_forward, *args)
    prog = shardc.partition(g, shardc.Mesh(dp=2, tp=2), m.tp_specs(), plan="dp")
    assert np.array_equal(prog.simulate(*args)[0], prog.simulate(*args)[0])
    exe = shardc.compile(prog, target="triton")
    first, second = exe.run_interpreted(*args)[0], exe.run_interpreted(*args)[0]
    assert np.array_equal(shardc.ir.to_numpy(first), shardc.ir.to_numpy(second))


def test_regression_scatter_with_a_constant_index():
    """Found by the differential test: a scatter whose index is one constant loaded as a scalar
    gave Triton's atomic_add a scalar mask."""
    from shardc.ir import parse_graph
    g = parse_graph("""graph fuzz {
      %0 "p0": f32[1] = parameter()
      %1 "p1": f32[1] = parameter()
      %2: i32[1] = constant() {value=dense<[0]>}
      %3: f32[1] = scatter(%0, %2, %1) {axis=0, batch_dims=0}
      return %3 "out"
    }""")
    check_case(g, shardc.Mesh(x=2), {}, seed=3, targets=("triton", "pallas"))


def test_a_mismatch_names_the_first_diverging_node_and_device():
    """Plant a bug in one device's program: the report names that value and that device."""
    import pytest

    from shardc.partition.simulate import first_divergence
    b = GraphBuilder("planted")
    x = b.parameter("x", (8, 4), DType.f32)
    h = b.add(Op.TANH, [x], name="h")
    g = b.build([b.add(Op.EXP, [h], name="y")])
    prog = shardc.partition(g, shardc.Mesh(x=4), {"x": P("x")})
    tanh = next(n for n in prog.local.nodes if n.op is Op.TANH)
    tanh.op = Op.SIN  # the planted bug: every device computes sin where the model says tanh
    args = random_inputs(g, 1)
    with pytest.raises(AssertionError):
        shardc.testing.assert_close(prog.simulate(*args)[0], g.evaluate(*args)[0])
    where = first_divergence(prog, g.input_values(*args))
    assert where.startswith("first divergence: tanh 'h'") and "on device 0" in where


def test_regression_one_element_store_in_a_matmul_prologue():
    """Found by the differential test: a value stored by a matmul's prologue with one element per
    device (4 elements over 8 devices) stored through a scalar pointer under a block mask."""
    from shardc.ir import parse_graph
    g = parse_graph("""graph fuzz {
      %0 "p0": f32[4] = parameter()
      %1 "p1": f32[1,4] = parameter()
      %2: f32[1] = dot_general(%0, %1) {lhs_batch=[], lhs_contract=[0], rhs_batch=[], rhs_contract=[1]}
      %3: f32[4] = tanh(%0)
      return %3 "out"
    }""")
    check_case(g, shardc.Mesh(x=2, y=4), {"p0": P(("y", "x"))}, seed=0, targets=("triton", "pallas"))


def test_regression_concatenate_block_picked_by_a_device_index():
    """Found by `make fuzz --targets`: a load masked by a scalar (device-dependent) condition and a
    block mask together."""
    from shardc.ir import parse_graph
    g = parse_graph("""graph fuzz {
      %0 "p0": f32[1,2] = parameter()
      %1 "p1": f32[1] = parameter()
      %2: f32[2,2] = concatenate(%0, %0) {axis=0}
      return %2 "out"
    }""")
    check_case(g, shardc.Mesh(x=2), {"out": P("x", None)}, seed=0, targets=("triton", "pallas"))
