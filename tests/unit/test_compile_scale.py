"""Compile time in depth (issue 14, item 2): the fusion planner asks the target about each distinct
group once (not once per probe per round), and identical layers' kernels are written once and
launched for every layer, each launch reading and writing its own layer's values. Correctness of
the shared kernels (every launch against the numpy evaluation of its nodes, whole programs
against Graph.evaluate) is tests/unit/test_codegen_zoo.py's, which runs with this on."""
import functools

import pytest

import shardc
from shardc import Mesh, models
from shardc.codegen import fused_recompute, fusion
from shardc.codegen import triton as triton_emitter
from shardc.codegen.prologue import Operands, is_splat
from shardc.ir import Op
from shardc.ir.ops import ELEMENTWISE, REDUCE


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


@functools.lru_cache(maxsize=None)
def _train_program(name: str, n_layer: int):
    """The zoo model's SGD step (tiny, shape-only, f32) over dp2 × tp2, partitioned once per test run."""
    m = models.get(f"{name}:tiny", n_layer=n_layer)
    g, _ = m.capture(train=True, shape_only=True, dtype="f32", repeat=False)
    return shardc.partition(g, Mesh({"dp": 2, "tp": 2}), specs=m.tp_specs(), plan="dp")


def compiled(n_layer: int, monkeypatch):
    """GPT-2 tiny's SGD step at `n_layer` layers over dp2 × tp2, compiled to Triton; and how many
    kernels the emitter wrote: trial ones for the planner ("probe") and real ones."""
    prog = _train_program("gpt2", n_layer)
    names = []
    emit = triton_emitter.emit
    monkeypatch.setattr(triton_emitter, "emit", lambda grp, name: (names.append(name), emit(grp, name))[1])
    exe = shardc.compile(prog)
    monkeypatch.setattr(triton_emitter, "emit", emit)
    return exe, names.count("probe"), len(names) - names.count("probe")


def test_identical_layers_compile_once(monkeypatch):
    three, probes3, written3 = compiled(3, monkeypatch)
    four, probes4, written4 = compiled(4, monkeypatch)
    # one more middle layer: more launches, no more kernels written (the first and the last layer
    # differ from a middle one at their boundaries, where fusion reaches across the layer's edge)
    assert len(four.kernels) > len(three.kernels) + 15     # a GPT-2 layer's training step: ~20 launches
    assert written3 == len({k.key for k in three.kernels})
    assert written4 == len({k.key for k in four.kernels}) == written3
    # the planner's trial emits: one per distinct group it proposes (the merges of the optimizer's
    # per-parameter updates are new groups at every depth); they were ~90 per kernel at 4 layers
    groups = lambda exe: sum(len(k.members) for k in exe.kernels)  # (a multi-tensor launch: its members)
    assert probes3 < 3 * groups(three) and probes4 < 3 * groups(four)
    # a kernel shared by several launches: one source, each launch with its own layer's buffers
    by_key: dict = {}
    for k in four.kernels:
        by_key.setdefault(k.key, []).append(k)
        assert set(k.inputs) <= set(k.group.inputs) and set(k.outputs) <= set(k.group.nodes), k.name
    shared = [ks for ks in by_key.values() if len(ks) >= 2]
    assert sum(map(len, shared)) >= 2 * 15     # both middle layers launch the same kernels at least
    for ks in shared:
        assert len({k.source for k in ks}) == 1 and len({k.path for k in ks}) == 1
        assert len({id(x) for k in ks for x in k.outputs}) == len(ks) * len(ks[0].outputs)


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


def test_planner_rounds_do_not_grow_with_depth(monkeypatch):
    """Each planner round rebuilds every group; a layer's failing groups are fixed in the same
    rounds as every other layer's (they only share stored inputs and the causal mask), so planning
    stays linear in depth: GPT-2's SGD step needs as many rounds at 3 layers as at 2."""
    rounds = []
    build = fusion.Planner._groups
    monkeypatch.setattr(fusion.Planner, "_groups", lambda self, internal: (rounds.append(1), build(self, internal))[1])
    counts, kernels = [], []
    for n in (2, 3):
        rounds.clear()
        steps = fusion.plan_fusion(_train_program("gpt2", n).local, triton_emitter.feasible, triton_emitter.epilogue_fits)
        kernels.append(sum(s.step == "kernel" for s in steps))
        counts.append(len(rounds))
    assert kernels[1] > kernels[0] and 1 < counts[0] == counts[1]


def _full_walk_answers(x, order):
    """The dot-operand questions answered by walking x's whole inlinable upstream (their definition)."""
    inner = fusion.tree(x, lambda n: False)[0] if fusion.inlinable(x) else []
    work = sum(n.op in ELEMENTWISE and n.op is not Op.CAST for n in inner)
    sources = {i for n in inner for i in n.inputs if not fusion.inlinable(i)}
    cheap = not inner or (not any(n.op in REDUCE or n.op is Op.GATHER for n in inner) and work <= 16 and (
        (work <= 2 and not any(n.op in (Op.PAD, Op.CONCATENATE) for n in inner))
        or sum(min(i.size, x.size) for i in sources) <= 1.25 * x.size))
    recomputed = fused_recompute.recomputed_operand_stats(x, fusion.inlinable, lambda n: False) is not None
    reds = [n for n in inner if n.op in REDUCE]
    if not reds or len(reds) > 4:
        return cheap, recomputed, None
    inner_set, after = set(inner), set()
    for n in sorted(inner, key=order.get):
        if n.op in REDUCE or any(i in after for i in n.inputs if i in inner_set):
            after.add(n)
    outer = set(fusion.tree(x, lambda n: n.op in REDUCE)[0])
    under = set().union(*(fusion.tree(r.inputs[0], lambda n: n.op in REDUCE)[0] for r in reds))
    common = [n for n in outer & under if n not in after and n.size == x.size and not is_splat(n)]
    if not common:
        return cheap, recomputed, None
    s = max(common, key=order.get)
    while s.op in (Op.CAST, Op.RESHAPE) and s.inputs[0].size == s.size:
        s = s.inputs[0]
    work = fusion.tree(x, lambda n: n is s)[0]
    if any(n.op in (Op.GATHER, Op.PAD, Op.CONCATENATE) for n in work) \
            or sum(n.op in ELEMENTWISE and n.op is not Op.CAST for n in work) > 16:
        return cheap, recomputed, None
    return cheap, recomputed, s


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_operand_questions_stop_early_with_the_full_walks_answers(name):
    """codegen/prologue.py stops walking a dot operand's upstream once it knows the answer and keeps
    what it needs from the far end per node; its answers are those of the full walks."""
    g = _train_program(name, 2).local
    users, order = g.users(), {n: i for i, n in enumerate(g.nodes)}
    fused_recompute.mark_recomputed(g, users, set())
    ops = Operands(users, order, fusion.inlinable)
    seen = []
    for d in (n for n in g.nodes if n.op is Op.DOT_GENERAL):
        for x in d.inputs:
            cheap, recomputed, source = _full_walk_answers(x, order)
            assert (ops.cheap(x), ops.reads_recomputed(x)) == (cheap, recomputed), x.describe()
            assert ops.norm_source(x) is source, x.describe()
            seen.append((cheap, recomputed, source is not None))
    # every kind of answer occurs: recomputed per tile or not, normalized rows, recomputed logits
    assert {c for c, _, _ in seen} == {True, False} and any(r for _, r, _ in seen) and any(s for _, _, s in seen)


@functools.lru_cache(maxsize=None)
def _repeated_program(n_layer: int):
    """GPT-2 tiny's SGD step captured as a repeated block (4 layers standing for `n_layer`), over
    dp2 × tp2 with the default passes (the scheduler orders the unrolled program, across layers)."""
    m = models.get("gpt2:tiny", n_layer=n_layer)
    g, _ = m.capture(train=True, shape_only=True, dtype="f32", repeat=True)
    return shardc.partition(g, Mesh({"dp": 2, "tp": 2}), specs=m.tp_specs(), plan="dp")


def _launches(exe) -> list[tuple]:
    return [(s.kernel.key, s.kernel.reason, tuple(map(id, s.kernel.ops)), tuple(map(id, s.kernel.inputs)),
             tuple(map(id, s.kernel.outputs))) if s.step == "kernel" else (s.step, id(s.node)) for s in exe.plan]


def _distinct(exe) -> set:
    """The distinct kernels, a multi-tensor launch as its members' texts (it spans every layer's
    standalone updates, so its own text grows with depth)."""
    from shardc.codegen.cache import group_ir_text
    return {group_ir_text(m) if k.kind == "multi" else k.key for k in exe.kernels for m in k.members}


def test_repeated_block_planned_once(monkeypatch):
    """codegen plans a short instance of a repeated block (codegen/repeated.py) and replicates its
    middle copy: 10 and 12 layers plan the same ops, and the 10-layer plan is, launch for launch,
    the plan of the whole unrolled (and scheduled) program. (At 8 layers the schedule still gives
    some attention kernels of the middle copies another key than at 10: 5 more distinct kernels at
    10 layers, the same plan; from 10 layers on, none.)"""
    from shardc import codegen
    planned = []
    plan = fusion.Planner.plan
    monkeypatch.setattr(fusion.Planner, "plan", lambda self: (planned.append(len(self.g.nodes)), plan(self))[1])
    assert _repeated_program(10).unrolled().local.scheduled
    ten, twelve = shardc.compile(_repeated_program(10)), shardc.compile(_repeated_program(12))
    assert planned[0] == planned[1] < len(_repeated_program(10).unrolled().local.nodes)
    assert len(twelve.kernels) > len(ten.kernels) + 2 * 15    # two more copies, ~29 launches each
    assert _distinct(twelve) == _distinct(ten)
    monkeypatch.setattr(codegen, "plan_once_per_block", lambda *a: None)   # plan all 10 layers
    whole = shardc.compile(_repeated_program(10))
    assert planned[2] == len(_repeated_program(10).unrolled().local.nodes)
    assert _launches(ten) == _launches(whole) and ten.plan_text() == whole.plan_text()
