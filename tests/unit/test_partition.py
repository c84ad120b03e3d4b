"""The partitioner on its own: meshes and specs, bad specs, and exact ledgers on small graphs."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P, ShardingError, Strided, partition
from shardc.ir.emitter import Emitter
from shardc.ir import DType, Op
from shardc.partition.mesh import DimSharding, Sharding, shard_array, unshard_arrays
from shardc.testing import assert_close


def mlp_graph(b=8, d=16, f=32):
    e = Emitter("mlp")
    x = e.parameter("x", (b, d), DType.f32)
    w1 = e.parameter("fc1.weight", (f, d), DType.f32)
    w2 = e.parameter("fc2.weight", (d, f), DType.f32)
    h = e.unary(Op.TANH, e.add(Op.DOT_GENERAL, [x, w1], lhs_contract=[1], rhs_contract=[1], name="h"))
    y = e.add(Op.DOT_GENERAL, [h, w2], lhs_contract=[1], rhs_contract=[1], name="y")
    return e.build([y])


def args_for(g, rng):
    return [rng.standard_normal(p.shape).astype(np.float32) for p in g.inputs]


def test_mesh_groups_and_ranks():
    m = Mesh({"dp": 2, "tp": 4})
    assert m.size == 8 and m.coords(6) == {"dp": 1, "tp": 2}
    assert m.groups(("tp",)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert m.groups(("dp",)) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert m.groups(("tp", "dp"))[0] == [0, 4, 1, 5, 2, 6, 3, 7]
    assert m.group_rank(6, ("tp", "dp")) == 5


@pytest.mark.parametrize("dims", [
    (DimSharding(("x",)), DimSharding()), (DimSharding(("y", "x")), DimSharding()),
    (DimSharding(("x",), outer=3), DimSharding(("y",))), (DimSharding(), DimSharding(("x", "y")))])
def test_shard_then_unshard_is_identity(dims, rng):
    mesh = Mesh(x=2, y=3)
    a = rng.standard_normal((12, 7))
    s = Sharding(dims)
    blocks = [shard_array(a, s, mesh, d) for d in range(mesh.size)]
    np.testing.assert_array_equal(unshard_arrays(blocks, a.shape, s, mesh), a)


def test_megatron_mlp_needs_one_all_reduce(rng):
    g = mlp_graph()
    prog = partition(g, Mesh(tp=4), {"fc1.weight": P("tp", None), "*.weight": P(None, "tp")})
    assert [(c.kind, c.axes, c.bytes) for c in prog.collectives] == [("all_reduce", ("tp",), 8 * 16 * 4)]
    assert prog.sharding_of("h") == Sharding((DimSharding(), DimSharding(("tp",))))
    args = args_for(g, rng)
    assert_close(prog.simulate(*args)[0], g.evaluate(*args)[0])


def test_exact_names_win_over_globs_and_globs_go_in_order():
    g = mlp_graph()
    prog = partition(g, Mesh(tp=4), {"*.weight": P(None, "tp"), "fc*": P("tp"), "fc1.weight": P("tp", None)})
    assert prog.sharding_of("fc1.weight").spec() == P("tp", None)
    assert prog.sharding_of("fc2.weight").spec() == P(None, "tp")


def test_uneven_dims_are_padded_and_exact(rng):
    g = mlp_graph(b=7, d=10, f=11)
    args = args_for(g, rng)
    for specs in ({"x": P("dp")}, {"x": P(("dp", "tp"))}, {"fc1.weight": P("tp")}, {"x": P(None, "tp")}):
        prog = partition(g, Mesh(dp=2, tp=3), specs)
        assert_close(prog.simulate(*args)[0], g.evaluate(*args)[0])


def test_output_spec_reshards_the_result(rng):
    g = mlp_graph()
    prog = partition(g, Mesh(dp=2, tp=4), {"x": P("dp"), "out": P(None, "tp")})
    assert prog.output_shardings[0].spec() == P(None, "tp")
    args = args_for(g, rng)
    assert_close(prog.simulate(*args)[0], g.evaluate(*args)[0])


def test_ledger_records_reason_source_and_wire_bytes():
    g = mlp_graph()
    prog = partition(g, Mesh(tp=4), {"fc1.weight": P("tp"), "fc2.weight": P(None, "tp")})
    (c,) = prog.collectives
    assert c.tensor == "y" and "partial(sum:tp)" in c.reason
    assert c.wire_bytes == 2 * 3 * c.bytes // 4


@pytest.mark.parametrize("specs, msg", [
    ({"x": P("model")}, "axis 'model' is not in Mesh"),
    ({"x": P("dp", None, None)}, "3 entries for a tensor of rank 2"),
    ({"x": P("dp", "dp")}, "axis 'dp' is used twice"),
    ({"*.bias": P("dp")}, "glob '\\*.bias' matches no"),
    ({"nothing": P("dp")}, "spec 'nothing' matches no"),
    ({"x": "dp"}, "is not a P"),
    ({"fc1.weight": P(Strided("tp", 3), None)}, "dim 0 of size 32 is not 3 blocks that each split evenly over 4"),
    ({"fc1.weight": P(Strided("tp", 16), None)}, "is not 16 blocks that each split evenly over 4"),
    ({"fc1.weight": P(Strided("model", 2), None)}, "axis 'model' is not in Mesh"),
    ({"fc1.weight": P(Strided("tp", 2), "tp")}, "axis 'tp' is used twice"),
])
def test_bad_specs_name_the_spec_and_tensor(specs, msg):
    with pytest.raises(ShardingError, match=msg):
        partition(mlp_graph(), Mesh(dp=2, tp=4), specs)


def test_strided_entries_are_checked_where_they_are_written():
    with pytest.raises(ShardingError, match=r"Strided\('tp', 1\): blocks must be an int >= 2"):
        Strided("tp", 1)
    with pytest.raises(ShardingError, match="axes must be an axis name"):
        Strided(None, 3)
    with pytest.raises(ShardingError, match="Strided entries are for the weights' specs"):
        shardc.constrain(None, P(Strided("tp", 3)))
    assert repr(P(Strided("tp", 3), None)) == "P(Strided('tp', 3), None)"
    assert P(Strided(("a", "b"), 2)) == P(Strided(("a", "b"), 2)) != P(("a", "b"))


def fused_qkv_graph(b=4, d=8, h=12):
    """Megatron's fused QKV: w [3h, d] → q, k, v (its row blocks) → q·k + v; an Adam-like state m
    of w's shape that nothing slices: w' = w + m."""
    e = Emitter("qkv")
    x = e.parameter("x", (b, d), DType.f32)
    w = e.parameter("attn.w", (3 * h, d), DType.f32)
    m = e.parameter("opt.attn.w", (3 * h, d), DType.f32)
    y = e.add(Op.DOT_GENERAL, [x, w], lhs_contract=[1], rhs_contract=[1])
    q, k, v = (e.add(Op.SLICE, [y], start=(0, i * h), limit=(b, (i + 1) * h), stride=(1, 1)) for i in range(3))
    out = e.binary(Op.ADD, e.unary(Op.TANH, e.binary(Op.MUL, q, k)), v)
    return e.build([out, e.binary(Op.ADD, w, m)])


@pytest.mark.parametrize("entry", [Strided("tp", 3), "tp"])
def test_strided_spec_keeps_whole_q_k_v_blocks_on_each_device(entry, rng):
    """P(Strided("tp", 3), None): q, k and v each split over tp, nothing moves. A plain split
    of the same tensors is laid out the same way (the program slices w into 3 blocks, and the
    state its glob also names follows w), as Megatron's layout is the only one that moves nothing."""
    g = fused_qkv_graph()
    args = args_for(g, rng)
    prog = partition(g, Mesh(tp=4), {"*attn.w": P(entry, None)})
    assert prog.collectives == [], prog.ledger()
    assert [repr(s.dims[0]) for s in prog.input_shardings[1:]] == ["'tp'/3", "'tp'/3"]
    for got, want in zip(prog.simulate(*args), g.evaluate(*args)):
        assert_close(got, want, 1e-6)


def test_bad_meshes_and_plans():
    with pytest.raises(ShardingError, match="sizes must be positive"):
        Mesh(dp=0)
    with pytest.raises(ShardingError, match="unknown plan 'zero'"):
        partition(mlp_graph(), Mesh(dp=2), plan="zero")
    with pytest.raises(ShardingError, match="needs a shardc.Mesh"):
        partition(mlp_graph(), {"dp": 2})


def test_torch_constrain_becomes_a_spec(rng):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

        def forward(self, x):
            h = shardc.constrain(torch.tanh(self.fc1(x)), P(None, "tp"))  # Megatron's hidden split
            return self.fc2(h)

    torch.manual_seed(0)
    model = Block()
    x = torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32))
    g = shardc.from_torch(model, (x,))
    assert list(g.sharding_constraints.values()) == [(None, "tp")]
    prog = partition(g, Mesh(tp=4))
    # the constraint alone splits the MLP: fc1 computes its columns locally, fc2 all-reduces once
    assert [c.kind for c in prog.collectives] == ["all_reduce"]
    assert_close(prog.simulate(x)[0], model(x).detach().numpy())

    # the gradient passes through it: a training step through torch.func.grad keeps the spec
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def step(params, x):
        grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).pow(2).mean())(params)
        return {k: params[k] - 0.1 * grads[k] for k in params}

    g = shardc.from_torch(step, (params, x))
    assert list(g.sharding_constraints.values()) == [(None, "tp")]
    prog = partition(g, Mesh(tp=4))
    for got, want in zip(prog.simulate(params, x), step(params, x).values()):
        assert_close(got, want.numpy())


def test_jax_with_sharding_constraint_becomes_a_spec(rng):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("dp",))

    def f(x, w):
        h = jax.lax.with_sharding_constraint(jnp.tanh(x @ w), NamedSharding(mesh, PartitionSpec(None, "dp")))
        return h.sum(0)

    x, w = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((6, 8)).astype(np.float32)
    g = shardc.from_jax(f, x, w)
    prog = partition(g, Mesh(dp=2))
    assert prog.collectives == [] and prog.output_shardings[0].spec() == P("dp")
    assert_close(prog.simulate(x, w)[0], np.asarray(f(x, w)))
