"""Property: for random programs, meshes and specs, the SPMD simulation equals the numpy
evaluation of the unsharded graph (uneven dims included). A failure prints the shrunk case as
parseable IR text with its mesh and specs."""
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shardc import partition
from shardc.fuzz import graphs, meshes, random_inputs, specs_for
from shardc.testing import assert_close


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_simulate_equals_evaluate(data):
    g = data.draw(graphs())
    mesh = data.draw(meshes())
    specs = data.draw(specs_for(g, mesh))
    note(f"{g}\nmesh={mesh} specs={specs}")
    args = random_inputs(g, data.draw(st.integers(0, 2**31)))
    want = g.evaluate(*args)
    prog = partition(g, mesh, specs)
    got = prog.simulate(*args)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, tol=2e-5, what=f"output {i}")
