"""Compile time in depth (issue 14, item 2): the fusion planner asks the target about each distinct
group once (not once per probe per round), and identical layers' kernels are written once and
launched for every layer, each launch reading and writing its own layer's values. Correctness of
the shared kernels (every launch against the numpy evaluation of its nodes, whole programs
against Graph.evaluate) is tests/unit/test_codegen_zoo.py's, which runs with this on."""
import pytest

import shardc
from shardc import Mesh, models
from shardc.codegen import triton as triton_emitter


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


def compiled(n_layer: int, monkeypatch):
    """GPT-2 tiny's SGD step at `n_layer` layers over dp2 × tp2, compiled to Triton; and how many
    kernels the emitter wrote: trial ones for the planner ("probe") and real ones."""
    m = models.get("gpt2:tiny", n_layer=n_layer)
    g, _ = m.capture(train=True, shape_only=True, dtype="f32")
    prog = shardc.partition(g, Mesh({"dp": 2, "tp": 2}), specs=m.tp_specs(), plan="dp")
    names = []
    emit = triton_emitter.emit
    monkeypatch.setattr(triton_emitter, "emit", lambda grp, name: (names.append(name), emit(grp, name))[1])
    exe = shardc.compile(prog)
    monkeypatch.setattr(triton_emitter, "emit", emit)
    return exe, names.count("probe"), len(names) - names.count("probe")


def test_identical_layers_compile_once(monkeypatch):
    two, probes2, written2 = compiled(2, monkeypatch)
    three, probes3, written3 = compiled(3, monkeypatch)
    # one more layer: more launches, no more kernels written (the first and the last layer differ
    # from each other at their boundaries; a middle layer is made of kernels they already have,
    # and the gradient buffer's concatenation differs by depth)
    assert len(three.kernels) > len(two.kernels) + 40
    assert written2 == len({k.key for k in two.kernels})
    assert written3 == len({k.key for k in three.kernels}) <= written2 + 1
    # the planner's trial emits: one per distinct group it proposes (the merges of the optimizer's
    # per-parameter updates are new groups at every depth); they were ~90 per kernel at 4 layers
    assert probes2 < 3 * len(two.kernels) and probes3 < 2 * len(three.kernels)
    # a kernel shared by several launches: one source, each launch with its own layer's buffers
    by_key: dict = {}
    for k in three.kernels:
        by_key.setdefault(k.key, []).append(k)
        assert set(k.inputs) <= set(k.group.inputs) and set(k.outputs) <= set(k.group.nodes), k.name
    shared = [ks for ks in by_key.values() if len(ks) == 3]
    assert len(shared) >= 10
    for ks in shared:
        assert len({k.source for k in ks}) == 1 and len({k.path for k in ks}) == 1
        assert len({id(x) for k in ks for x in k.outputs}) == 3 * len(ks[0].outputs)


def test_epilogue_fits_matches_the_emitter():
    """Triton's quick answer (an epilogue root has the dot's size) is what emit_matmul enforces."""
    from shardc.codegen.fusion import FusionGroup
    from shardc.ir import DType, GraphBuilder, Op

    b = GraphBuilder()
    x, w = b.parameter("x", (8, 16), DType.f32), b.parameter("w", (16, 32), DType.f32)
    d = b.add(Op.DOT_GENERAL, [x, w], lhs_batch=(), rhs_batch=(), lhs_contract=(1,), rhs_contract=(0,))
    flat = b.add(Op.RESHAPE, [d], shape=(256,))
    cat = b.add(Op.CONCATENATE, [flat, b.add(Op.RESHAPE, [w], shape=(512,))], axis=0)
    relu = b.add(Op.MAX, [d, b.constant(0.0, DType.f32, d.shape)])
    for root, fits in ((relu, True), (cat, False)):
        assert triton_emitter.epilogue_fits(d, root) is fits
        nodes = [n for n in b.build([root]).nodes if n.op is not Op.PARAMETER]
        grp = FusionGroup("matmul", [root], nodes, [x, w], "test", d)
        if fits:
            triton_emitter.feasible(grp)
        else:
            with pytest.raises(triton_emitter.CannotFuse):
                triton_emitter.feasible(grp)
