"""The local-scatter pass (partition/passes_local_scatter.py): a scatter-add whose readers each keep
one contiguous block of rows scatters into that block alone; the program stays exact."""
import numpy as np

import shardc
import zoo_cases
from shardc import Mesh, P
from shardc.ir import Op
from shardc.testing import assert_close


def _scatters(prog):
    return [n for n in prog.local.nodes if n.op is Op.SCATTER and not n.attrs.get("batch_dims", 0)]


def _report(prog):
    return next(str(r) for r in prog.passes if r.name == "local_scatter")


def test_moe_dispatch_buffers_scatter_only_the_local_experts():
    """The zoo MoE's step with its experts over tp=2: the dispatch buffer and its gradient are
    [experts·capacity, d] = [128, 32]; each device scatters its 2 experts' 64 rows."""
    m, g, args = zoo_cases.captured("moe", True)
    prog = shardc.partition(g, Mesh(tp=2), m.tp_specs())
    assert "scatters into this device's block of rows alone: 2 " in _report(prog), _report(prog)
    assert sorted(n.shape for n in _scatters(prog)) == [(64, 32), (64, 32)]
    for got, want in zip(prog.simulate(*args), zoo_cases.reference("moe", True)):
        assert_close(got, want, 1e-5)


def test_dropped_wrapped_and_repeated_indices_stay_exact():
    """Indices past the buffer (dropped), negative ones (wrapped by the frontend) and repeated
    ones (summed) land where the whole scatter put them, on every device of tp=2 and tp=4."""
    import jax.numpy as jnp
    rng = np.random.default_rng(11)
    x = rng.standard_normal((12, 16)).astype(np.float32)
    w = rng.standard_normal((4, 16, 8)).astype(np.float32)
    dest = np.array([0, 5, 31, -1, 40, 17, 9, 63, 12, 8, 8, 24], np.int32)

    def f(x, w, dest):
        buf = jnp.zeros((32, 16), jnp.float32).at[dest].add(x, mode="drop").reshape(4, 8, 16)
        return jnp.einsum("ecd,edf->ecf", buf, w)
    g = shardc.from_jax(f, x, w, dest)
    want = g.evaluate(x, w, dest)
    for tp in (2, 4):
        prog = shardc.partition(g, Mesh(tp=tp), {"w": P("tp", None, None), "out": P("tp", None, None)})
        assert "block of rows alone: 1 " in _report(prog), _report(prog)
        assert [n.shape for n in _scatters(prog)] == [(32 // tp, 16)]
        for got, ref in zip(prog.simulate(x, w, dest), want):
            assert_close(got, ref, 1e-6)


def test_a_scatter_read_whole_is_left_alone():
    m, g, args = zoo_cases.captured("moe", True)
    prog = shardc.partition(g, Mesh(dp=2), {}, "dp")  # each device reads its whole buffer
    assert "no scatter whose readers keep one block" in _report(prog)
    plain = shardc.partition(g, Mesh(dp=2), {}, "dp", passes=())
    assert [n.shape for n in _scatters(prog)] == [n.shape for n in _scatters(plain)]
