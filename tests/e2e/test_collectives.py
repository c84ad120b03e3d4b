"""Each collective on both engines against the simulator (partition/simulate.py: the reference
semantics), on hand-written per-device programs: groups over several axes in both orders (group
order decides all_gather concatenation order), reductions in bf16 and bool, all_to_all, permutes
with untargeted devices (zeros), axis_index. torch: 4 gloo ranks on a 2x2 mesh; JAX: 2x4 on 8."""
import numpy as np
import pytest

from shardc.ir import DType, Op
from shardc.ir.graph import GraphBuilder, to_numpy
from shardc.partition import Mesh, SpmdProgram
from shardc.partition.mesh import DimSharding, Sharding
from shardc.runtime import run

R = np.random.default_rng(1)


def split(*axes):
    return DimSharding(tuple(axes))


REP = DimSharding()


def spmd(mesh: Mesh, gshape, dtype: DType, in_s: Sharding, out_gshape, out_s: Sharding, body):
    """A one-input, one-output program: body(builder, local input) -> local output."""
    from shardc.partition.mesh import local_shape
    g = GraphBuilder("global", mesh.axes)
    x = g.parameter("x", gshape, dtype)
    y = g.add(Op.BROADCAST, [g.constant(0, dtype)], shape=out_gshape, dims=())
    glob = g.build([y])
    b = GraphBuilder("local", mesh.axes)
    xl = b.parameter("x", local_shape(gshape, in_s, mesh), dtype)
    local = b.build([body(b, xl)])
    return SpmdProgram(glob, mesh, local, {}, {}, [in_s], [out_s], [])


def cases(mesh: Mesh):
    a0, a1 = mesh.axis_names
    n0, n1 = mesh.shape
    n = mesh.size
    f32, bf16 = DType.f32, DType.bf16
    out = []
    for axes in ((a0, a1), (a1, a0), (a1,)):
        k = mesh.group_size(axes)
        s = Sharding((split(*axes), REP))
        # gathers the blocks back in group order: a wrong order permutes rows of the replicas
        out.append((f"all_gather{axes}", (4 * n, 3), f32, s, (4 * n, 3), Sharding((REP, REP)),
                    lambda b, x, axes=axes: b.add(Op.ALL_GATHER, [x], axes=axes, dim=0)))
        out.append((f"all_gather_dim1{axes}", (3, 2 * n), f32, Sharding((REP, split(*axes))), (3, 2 * n),
                    Sharding((REP, REP)), lambda b, x, axes=axes: b.add(Op.ALL_GATHER, [x], axes=axes, dim=1)))
        # all_to_all: [rows split over axes, cols whole] -> [rows whole, cols split over axes]
        out.append((f"all_to_all{axes}", (4 * k, 2 * k), f32, Sharding((split(*axes), REP)), (4 * k, 2 * k),
                    Sharding((REP, split(*axes))),
                    lambda b, x, axes=axes: b.add(Op.ALL_TO_ALL, [x], axes=axes, split_dim=1, concat_dim=0)))
        # replicated input, sum over the group, each keeps its piece: k * x split over axes
        out.append((f"reduce_scatter{axes}", (2 * k, 3), f32, Sharding((REP, REP)), (2 * k, 3),
                    Sharding((split(*axes), REP)),
                    lambda b, x, axes=axes: b.add(Op.REDUCE_SCATTER, [x], axes=axes, dim=0)))
    # reductions: the input differs per device (split), the result is per-group: keep it split
    for red in ("sum", "max", "min"):
        for dt in (f32, bf16, DType.i32, DType.bool):
            out.append((f"all_reduce_{red}_{dt}_{a0}", (n * 2, 3), dt, Sharding((split(a0, a1), REP)),
                        (n1 * 2, 3), Sharding((split(a1), REP)),
                        lambda b, x, red=red: b.add(Op.ALL_REDUCE, [x], axes=(a0,), reduce=red)))
    out.append(("all_reduce_both_axes", (n * 2, 3), f32, Sharding((split(a0, a1), REP)), (2, 3),
                Sharding((REP, REP)), lambda b, x: b.add(Op.ALL_REDUCE, [x], axes=(a1, a0), reduce="sum")))
    # permutes: a cyclic shift over a1, and over (a1, a0) a partial one (untargeted devices get zeros)
    shift = tuple((i, (i + 1) % n1) for i in range(n1))
    out.append(("permute_shift", (2 * n, 3), f32, Sharding((split(a0, a1), REP)), (2 * n, 3),
                Sharding((split(a0, a1), REP)),
                lambda b, x: b.add(Op.COLLECTIVE_PERMUTE, [x], axes=(a1,), pairs=shift)))
    some = ((0, n - 1), (n - 1, 1), (2, 2))
    out.append(("permute_partial", (2 * n, 3), f32, Sharding((split(a1, a0), REP)), (2 * n, 3),
                Sharding((split(a1, a0), REP)),
                lambda b, x: b.add(Op.COLLECTIVE_PERMUTE, [x], axes=(a1, a0), pairs=some)))

    def with_index(b, x):  # x + (axis_index(a0) * 10 + axis_index(a1)), per device
        i0 = b.add(Op.CAST, [b.add(Op.AXIS_INDEX, [], axis=a0)], to=DType.f32)
        i1 = b.add(Op.CAST, [b.add(Op.AXIS_INDEX, [], axis=a1)], to=DType.f32)
        v = b.add(Op.ADD, [b.add(Op.MUL, [i0, b.constant(10.0, DType.f32)]), i1])
        return b.add(Op.ADD, [x, b.add(Op.BROADCAST, [v], shape=x.shape, dims=())])
    out.append(("axis_index", (2 * n, 3), f32, Sharding((split(a0, a1), REP)), (2 * n, 3),
                Sharding((split(a0, a1), REP)), with_index))

    def ragged(axes):  # value-sized segments per peer (an empty one, a whole buffer), packed at the receiver
        k = mesh.group_size(axes)
        table = np.array([[(r + 2 * j) % 3 if (r + j) % 4 else 0 for j in range(k)] for r in range(n)], np.int32)
        table[:, -1] = np.minimum(table[:, -1], 4 * k - table[:, :-1].sum(1))  # sends fit its 4k rows

        def body(b, x):
            me = b.add(Op.ADD, [b.add(Op.MUL, [b.add(Op.AXIS_INDEX, [], axis=a0), b.constant(n1, DType.i32)]),
                                b.add(Op.AXIS_INDEX, [], axis=a1)])
            sizes = b.add(Op.GATHER, [b.constant(table, DType.i32), b.add(Op.RESHAPE, [me], shape=(1,))], axis=0)
            return b.add(Op.RAGGED_ALL_TO_ALL, [x, b.add(Op.RESHAPE, [sizes], shape=(k,))], axes=axes, rows=4 * k * k)
        return (f"ragged_all_to_all{axes}", (4 * k * n, 3), f32, Sharding((split(a0, a1), REP)), (4 * k * k * n, 3),
                Sharding((split(a0, a1), REP)), body)
    out += [ragged((a1,)), ragged((a1, a0))]

    def chain(b, x):  # a collective feeding a collective, and one nobody else reads first
        g = b.add(Op.ALL_GATHER, [x], axes=(a1,), dim=0)
        return b.add(Op.ALL_REDUCE, [g], axes=(a0,), reduce="sum")
    out.append(("chained", (2 * n, 3), f32, Sharding((split(a0, a1), REP)), (2 * n1, 3),
                Sharding((REP, REP)), chain))
    return out


def _check(engine, mesh, case, **kw):
    label, gshape, dt, in_s, out_gshape, out_s, body = case
    prog = spmd(mesh, gshape, dt, in_s, out_gshape, out_s, body)
    x = (R.random(gshape) < 0.5) if dt is DType.bool else (R.integers(-9, 9, gshape) if dt.is_int else R.standard_normal(gshape)).astype(dt.np)
    want = prog.simulate(x)[0]
    got = to_numpy(run(prog, x, engine=engine, **kw)[0])
    assert got.dtype == want.dtype, label
    if dt.is_float:
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2 if dt is DType.bf16 else 1e-6,
                                   atol=1e-6, err_msg=label)
    else:
        np.testing.assert_array_equal(got, want, err_msg=label)


MESH4, MESH8 = Mesh(a=2, b=2), Mesh(a=2, b=4)


@pytest.mark.parametrize("case", cases(MESH4), ids=[c[0] for c in cases(MESH4)])
def test_collectives_on_torch(torch_pool, case):
    _check("torch", MESH4, case, world=torch_pool, timeout_s=60)


@pytest.mark.parametrize("case", cases(MESH8), ids=[c[0] for c in cases(MESH8)])
def test_collectives_on_jax(case):
    _check("jax", MESH8, case)


def _schedule_ok(local, label):
    from shardc.ir.ops import COLLECTIVES
    from shardc.runtime.schedule import schedule
    steps = schedule(local)
    colls = [n for n in local.nodes if n.op in COLLECTIVES]
    for c in colls:
        starts = [i for i, s in enumerate(steps) if s.kind == "start" and s.node is c]
        waits = [i for i, s in enumerate(steps) if s.kind == "wait" and s.node is c]
        assert len(starts) == 1 and len(waits) == 1 and starts[0] < waits[0], label
        readers = [i for i, s in enumerate(steps) if s.kind != "wait" and c in s.node.inputs]
        assert all(waits[0] < i for i in readers), label
    ops = [s.node for s in steps if s.kind == "op"]
    assert len(ops) == len(set(ops)) == len([n for n in local.nodes if n.op is not Op.PARAMETER and n not in colls])


def test_schedule_starts_early_waits_late_once_each():
    from _zoo import program
    for case in cases(MESH4):
        label, gshape, dt, in_s, out_gshape, out_s, body = case
        _schedule_ok(spmd(MESH4, gshape, dt, in_s, out_gshape, out_s, body).local, label)
    for name, layout in [("gpt2", "2x2-fsdp"), ("moe", "tp4+sp"), ("llama", "2x2")]:
        _schedule_ok(program(name, True, layout)[0].local, f"{name} {layout}")
