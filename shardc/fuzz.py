"""Random programs, meshes and specs for differential testing (hypothesis strategies): every
stage must agree with the numpy evaluation of the global graph on whatever these draw."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .ir.emitter import Emitter
from .ir import DType, Graph, Node, Op
from .partition import Mesh, P

DIMS = (1, 2, 3, 4, 5, 6, 8)
MESHES = ({"x": 2}, {"x": 3}, {"x": 4}, {"x": 2, "y": 2}, {"x": 2, "y": 3}, {"x": 2, "y": 4},
          {"x": 2, "y": 2, "z": 2})


@st.composite
def shapes(draw, min_rank=1, max_rank=3):
    return tuple(draw(st.lists(st.sampled_from(DIMS), min_size=min_rank, max_size=max_rank)))


def _factorizations(shape):
    """Reshapes that split or merge neighbouring dims."""
    out = []
    for i, s in enumerate(shape):
        for k in (2, 3, 4):
            if s % k == 0 and s > k:
                out.append(shape[:i] + (k, s // k) + shape[i + 1:])
    for i in range(len(shape) - 1):
        out.append(shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2:])
    return out


@st.composite
def graphs(draw, max_ops: int = 8) -> Graph:
    """A random f32 program over the closed op set with 1-3 parameters."""
    b = Emitter("fuzz")
    vals: list[Node] = []
    for i in range(draw(st.integers(1, 3))):
        vals.append(b.parameter(f"p{i}", draw(shapes()), DType.f32))
    nparams = len(vals)
    for _ in range(draw(st.integers(1, max_ops))):
        x = draw(st.sampled_from(vals))
        kind = draw(st.sampled_from(["unary", "binary", "dot", "reduce", "reshape", "transpose",
                                     "slice", "concat", "broadcast", "gather", "scatter", "softmax", "iota"]))
        if kind == "unary":
            y = b.unary(draw(st.sampled_from([Op.TANH, Op.NEG, Op.ABS, Op.LOGISTIC, Op.SIN])), x)
        elif kind == "binary":
            same = [v for v in vals if v.shape == x.shape]
            other = draw(st.sampled_from(same))
            y = b.add(draw(st.sampled_from([Op.ADD, Op.MUL, Op.SUB, Op.MAX])), [x, other])
        elif kind == "dot":
            k = draw(st.integers(0, x.rank - 1))
            n = draw(st.sampled_from(DIMS))
            w = b.parameter(f"p{nparams}", (n, x.shape[k]), DType.f32)
            nparams += 1
            y = b.add(Op.DOT_GENERAL, [x, w], lhs_contract=[k], rhs_contract=[1])
        elif kind == "reduce":
            axes = draw(st.lists(st.integers(0, x.rank - 1), min_size=1, max_size=x.rank, unique=True))
            y = b.reduce(draw(st.sampled_from([Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN])), x, axes)
            if not y.rank:
                y = b.reshape(y, (1,))
        elif kind == "reshape":
            opts = _factorizations(x.shape)
            if not opts:
                continue
            y = b.reshape(x, draw(st.sampled_from(opts)))
        elif kind == "transpose":
            y = b.transpose(x, draw(st.permutations(range(x.rank))))
        elif kind == "slice":
            d = draw(st.integers(0, x.rank - 1))
            s = draw(st.integers(0, x.shape[d] - 1))
            y = b.slice(x, d, s, draw(st.integers(s + 1, x.shape[d])))
        elif kind == "concat":
            y = b.concat([x, x], draw(st.integers(0, x.rank - 1)))
        elif kind == "broadcast":
            y = b.broadcast_to(x, (draw(st.sampled_from(DIMS)),) + x.shape)
        elif kind == "gather":
            d = draw(st.integers(0, x.rank - 1))
            idx = draw(st.lists(st.integers(0, x.shape[d] - 1), min_size=1, max_size=6))
            y = b.add(Op.GATHER, [x, b.const(np.array(idx), DType.i32)], axis=d)
        elif kind == "scatter":
            d = draw(st.integers(0, x.rank - 1))
            idx = draw(st.lists(st.integers(0, x.shape[d] - 1), min_size=1, max_size=6))
            upd_shape = x.shape[:d] + (len(idx),) + x.shape[d + 1:]
            upd = b.parameter(f"p{nparams}", upd_shape, DType.f32)
            nparams += 1
            y = b.add(Op.SCATTER, [x, b.const(np.array(idx), DType.i32), upd], axis=d)
        elif kind == "softmax":
            y = b.softmax(x, draw(st.integers(0, x.rank - 1)))
        else:
            d = draw(st.integers(0, x.rank - 1))
            y = b.binary(Op.ADD, x, b.cast(b.iota(x.shape, d, DType.i32), DType.f32))
        vals.append(y)
    outs = [vals[-1]] + draw(st.lists(st.sampled_from(vals[nparams:] or vals), max_size=1))
    return b.build(list(dict.fromkeys(outs)))


@st.composite
def meshes(draw) -> Mesh:
    return Mesh(draw(st.sampled_from(MESHES)))


@st.composite
def specs_for(draw, g: Graph, mesh: Mesh) -> dict:
    """Random specs on some inputs and maybe an output; each axis used once per tensor."""
    specs = {}
    targets = [(p.name, p.shape) for p in g.inputs] + [(g.output_names[0], g.outputs[0].shape)]
    for name, shape in targets:
        if not draw(st.booleans()):
            continue
        free = list(mesh.axis_names)
        entries = []
        for _ in shape:
            if free and draw(st.booleans()):
                k = draw(st.integers(1, min(2, len(free))))
                picked = draw(st.permutations(free))[:k]
                for a in picked:
                    free.remove(a)
                entries.append(picked[0] if k == 1 else tuple(picked))
            else:
                entries.append(None)
        specs[name] = P(*entries)
    return specs


@st.composite
def pass_sets(draw):
    """No passes, one pass alone, the default set, or every pass (in registry order)."""
    from .partition.passes import DEFAULT, PASSES
    return draw(st.sampled_from([(), *((p,) for p in PASSES), DEFAULT, tuple(PASSES)]))


def random_inputs(g: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(p.dtype.np) for p in g.free_inputs]


def check_case(g: Graph, mesh: Mesh, specs: dict, seed: int, targets: tuple[str, ...] = (),
               passes="default") -> None:
    """evaluate == simulate (== the generated kernels of each target, on the interpreters) for one
    drawn case, after the collective `passes`; a mismatch names the stage and the first output
    that differs."""
    from . import compile as compile_kernels
    from .ir import to_numpy
    from .partition import partition
    from .testing import assert_close
    args = random_inputs(g, seed)
    want = g.evaluate(*args)
    prog = partition(g, mesh, specs, passes=passes)
    stages = [("simulate", prog.simulate)]
    stages += [(t, lambda *a, t=t: compile_kernels(prog, target=t).run_interpreted(*a)) for t in targets]
    for stage, run in stages:
        for name, a, b in zip(g.output_names, run(*args), want):
            try:  # inputs are O(1): a result that cancels to near 0 is judged on that scale
                assert_close(to_numpy(a), b, tol=2e-5, what=f"{stage}: output {name!r}", floor=1.0)
            except AssertionError as e:
                from .partition.simulate import first_divergence
                where = first_divergence(prog, g.input_values(*args))
                raise AssertionError(f"{e}\n{where or 'every value of the simulation agrees'}") from None


def main(argv=None) -> int:
    """`python -m shardc.fuzz --seconds N`: draw cases until time runs out (CI runs a bounded
    number through pytest); a failure prints the shrunk case as parseable IR text."""
    import argparse
    import time

    from hypothesis import HealthCheck, given, note, settings

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-ops", type=int, default=12)
    ap.add_argument("--targets", default="", help="also run the generated kernels: triton,pallas")
    opts = ap.parse_args(argv)
    stop = time.monotonic() + opts.seconds
    targets = tuple(t for t in opts.targets.split(",") if t)
    if targets:
        import os
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported
    count = [0]

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def batch(data):
        g = data.draw(graphs(max_ops=opts.max_ops))
        mesh = data.draw(meshes())
        specs = data.draw(specs_for(g, mesh))
        passes = data.draw(pass_sets())
        note(f"{g}\nmesh={mesh} specs={specs} passes={passes}")
        check_case(g, mesh, specs, data.draw(st.integers(0, 2**31)), targets, passes)
        count[0] += 1

    while time.monotonic() < stop:  # fresh batches of 100 until the time is up
        batch()
    print(f"{count[0]} cases, no mismatch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
