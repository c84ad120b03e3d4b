"""Pipeline parallelism: stages along layers, microbatches, schedules; simulate == evaluate."""
import numpy as np
import pytest

import shardc
from shardc import Mesh, P, models
from shardc.partition.pipeline_schedule import bubble_fraction, schedule_slots, timeline
from shardc.testing import rel_err


def _fresh_args(g, args, seed):
    """The captured example arguments with fresh random parameters and batch (same shapes)."""
    rng = np.random.default_rng(seed)
    vals = g.input_values(*args)
    out = {}
    for x in g.inputs:
        v = vals[x.name]
        if v.dtype.kind in "iu":
            out[x.name] = rng.integers(0, int(v.max()) + 1, v.shape).astype(v.dtype)
        elif "step" in x.name:
            out[x.name] = v
        elif "['v']" in x.name:
            out[x.name] = np.abs(rng.standard_normal(v.shape)).astype(v.dtype) * 1e-3
        else:
            out[x.name] = (rng.standard_normal(v.shape) * 0.1).astype(v.dtype)
    return out


def _run(g, values, prog):
    from shardc.ir.evaluate import evaluate_graph
    from shardc.partition.pipeline_sim import simulate_pipeline
    ref = evaluate_graph(g, values)
    got, order = simulate_pipeline(prog, values)
    return max(rel_err(a, b) for a, b in zip(got, ref)), order


@pytest.fixture(scope="module")
def gpt2_sgd():
    m = models.get("gpt2:tiny", n_layer=4)
    return m, *m.capture(train=True, batch=8)


_PP4 = {}


def _pp4(g, schedule):
    """GPT-2 over pp=4, 8 microbatches: partitioned once, the other schedules built on that."""
    from shardc.partition.pipeline import build
    if not _PP4:
        _PP4["1f1b"] = shardc.partition(g, Mesh({"pp": 4}), {}, pipeline=shardc.Pipeline("pp", 8, "1f1b"))
    if schedule not in _PP4:
        first = _PP4["1f1b"]
        _PP4[schedule] = build(g, first.mesh, shardc.Pipeline("pp", 8, schedule), first.inner, 4)
    return _PP4[schedule]


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zero-bubble"])
def test_gpt2_sgd_pp4(gpt2_sgd, schedule):
    m, g, args = gpt2_sgd
    prog = _pp4(g, schedule)
    assert [s.layers for s in prog.stages] == [["h.0"], ["h.1"], ["h.2"], ["h.3"]]
    err, order = _run(g, _fresh_args(g, args, 1), prog)
    assert err < 1e-5
    assert len(order) == (3 if schedule == "zero-bubble" else 2) * 4 * 8
    if schedule == "zero-bubble":   # W holds weight gradients only: nothing it makes is sent
        assert all(st.weight for st in prog.stages)
        assert not any(t.node in st.weight for st in prog.stages for t in prog.transfers)
    # activations forward and their gradients backward between neighbours: one [mb, seq, d] f32 each
    # way (the next layer norm is computed on the next stage, its gradient summed into the residual's
    # before it is sent), and the norm's per-row [mb, seq] gradient term back
    act = 1 * 16 * 32 * 4
    for s in range(3):
        assert [t.bytes for t in prog.transfers if (t.src, t.dst, t.phase) == (s, s + 1, "F")] == [act]
        assert sorted(t.bytes for t in prog.transfers if (t.src, t.dst, t.phase) == (s + 1, s, "B")) == [16 * 4, act]
    assert all(t.count == 8 for t in prog.transfers if t.phase != "step")
    # the tied head's share of the embedding gradient: accumulated on the last stage, sent once per
    # step (not the [mb, seq, vocab] logits' gradient every microbatch)
    tied = [t for t in prog.transfers if t.src == 3 and t.dst == 0]
    assert [(t.phase, t.count, t.node.shape) for t in tied] == [("step", 1, (m.config.vocab_size, 32))]


def test_gpt2_sgd_pp2_dp2_tp2_split_points(gpt2_sgd):
    m, g, args = gpt2_sgd
    specs = {"args[0]": P("dp"), "args[1]": P("dp"), **m.tp_specs()}
    prog = shardc.partition(g, Mesh({"pp": 2, "dp": 2, "tp": 2}), specs,
                            pipeline=shardc.Pipeline("pp", 2, "1f1b", split_points=["h.1"]))
    assert [s.layers for s in prog.stages] == [["h.0"], ["h.1", "h.2", "h.3"]]
    assert any(c.kind == "all_reduce" and c.axes == ("tp",) for c in prog.collectives)  # Megatron inside stages
    err, _ = _run(g, _fresh_args(g, args, 2), prog)
    assert err < 1e-5


def test_llama_adam_pp4_dp2():
    m = models.get("llama:tiny", n_layer=4)
    g, args = m.capture(train=True, batch=8, optimizer="adam")
    data = [n for n in g.input_names if n.startswith("args")]
    prog = shardc.partition(g, Mesh({"pp": 4, "dp": 2}), {n: P("dp") for n in data},
                            pipeline=shardc.Pipeline("pp", 4, "gpipe"))
    err, _ = _run(g, _fresh_args(g, args, 3), prog)
    assert err < 1e-5
    assert prog.p2p_bytes > 0


@pytest.mark.parametrize("p,m", [(4, 8), (2, 4), (4, 4)])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_bubble_fraction(schedule, p, m):
    slots = schedule_slots(schedule, p, m)
    assert bubble_fraction(slots) == pytest.approx((p - 1) / (m + p - 1))
    t = timeline(slots)
    if schedule == "1f1b":   # at most p - s microbatches in flight on stage s
        for s in range(p):
            for j in range(m):
                assert sum(1 for k in range(m) if t[("F", s, k)] <= t[("F", s, j)] < t[("B", s, k)] + 1) <= p - s


def test_refusals(gpt2_sgd):
    m, g, args = gpt2_sgd
    with pytest.raises(shardc.Error, match="schedule"):
        shardc.partition(g, Mesh({"pp": 2}), {}, pipeline=shardc.Pipeline("pp", 2, "chimera"))
    with pytest.raises(shardc.Error, match="divisible"):
        shardc.partition(g, Mesh({"pp": 2}), {}, pipeline=shardc.Pipeline("pp", 3))
    with pytest.raises(shardc.Error, match="pipeline axis"):
        shardc.partition(g, Mesh({"pp": 2, "dp": 2}), {"args[0]": P("pp")}, pipeline=shardc.Pipeline("pp", 2))
    with pytest.raises(shardc.Error, match="split_points"):
        shardc.partition(g, Mesh({"pp": 4}), {}, pipeline=shardc.Pipeline("pp", 2, split_points=["h.1"]))
    with pytest.raises(shardc.Error, match="layers"):
        shardc.partition(g, Mesh({"pp": 8}), {}, pipeline=shardc.Pipeline("pp", 2))


def test_modeled_times_follow_from_slots():
    for schedule in ("gpipe", "1f1b"):
        slots = schedule_slots(schedule, 4, 8)
        t = timeline(slots, duration=lambda k, s: 1.0 if k == "F" else 2.0)
        span = max(v + (1.0 if k == "F" else 2.0) for (k, s, j), v in t.items())
        assert span == pytest.approx(3.0 * (8 + 4 - 1))    # (m + p - 1) slots of F + B
        assert 1 - 4 * 8 * 3.0 / (4 * span) == pytest.approx(3 / 11)


def test_analyze_pipeline(gpt2_sgd):
    m, g, args = gpt2_sgd
    got = {}
    for schedule in ("gpipe", "1f1b"):
        prog = _pp4(g, schedule)
        a = got[schedule] = shardc.analyze(prog, hardware="h100")
        assert a.bubble_fraction >= 3 / 11 - 1e-9        # imbalance and transfers only add to it
        assert a.step_s >= 8 * max(f + b for f, b in zip(a.stage_forward_s, a.stage_backward_s))
        assert a.p2p_bytes == prog.p2p_bytes
    # 1F1B keeps p - s microbatches' activations on stage s, GPipe all m
    for s in range(4):
        assert got["1f1b"].activations_in_flight[s] * 8 == got["gpipe"].activations_in_flight[s] * (4 - s)


def test_at_depth_reads_a_deeper_pipeline_off_a_shallow_one(gpt2_sgd):
    """at_depth(a, 1, p) is `a` itself; more layers per stage scale each stage's times (middle
    stages by their layers, first and last keep their constants); recompute adds a forward."""
    from shardc.partition.pipeline_analysis import at_depth
    m, g, args = gpt2_sgd
    prog = _pp4(g, "1f1b")
    a = shardc.analyze(prog, hardware="h100")
    same = at_depth(a, 1, 4)
    assert same.step_s == pytest.approx(a.step_s, rel=1e-12)
    assert same.bubble_fraction == pytest.approx(a.bubble_fraction, rel=1e-9)
    deep = at_depth(a, 3, 8, microbatches=16)
    f = a.stage_forward_s
    assert deep.stage_forward_s == pytest.approx([f[0] + 2 * f[1]] + [3 * f[1]] * 6 + [f[3] + 2 * f[1]])
    assert deep.step_s > a.step_s and deep.extrapolated == (4, 24)
    full = shardc.analyze(prog, hardware="h100", recompute="full")
    assert full.stage_backward_s == pytest.approx([b + f for b, f in zip(a.stage_backward_s, f)])
    with pytest.raises(shardc.Error, match="recompute"):
        shardc.analyze(prog, hardware="h100", recompute="selective")


def test_zero_bubble_schedule():
    # ZB-H1 with F = B = W = one slot: (p - 1) idle slots per stage against 1F1B's 3(p - 1) (B + W in one)
    zb = schedule_slots("zero-bubble", 4, 8)
    assert all(sorted(a) == sorted([(k, j) for k in "FBW" for j in range(8)]) for a in zb)
    assert bubble_fraction(zb) == pytest.approx(3 / (3 * 8 + 3))
    assert bubble_fraction(zb) < bubble_fraction(schedule_slots("1f1b", 4, 8)) / 2


def test_interleaved_pp2_dp2(gpt2_sgd):
    m, g, args = gpt2_sgd
    prog = shardc.partition(g, Mesh({"pp": 2, "dp": 2}), {"args[0]": P("dp"), "args[1]": P("dp")},
                            pipeline=shardc.Pipeline("pp", 4, "interleaved-1f1b", chunks=2))
    assert [s.layers for s in prog.stages] == [["h.0"], ["h.1"], ["h.2"], ["h.3"]]   # device d: stages d, d + 2
    err, order = _run(g, _fresh_args(g, args, 4), prog)
    assert err < 1e-5
    assert bubble_fraction(prog.slots) == pytest.approx(1 / (2 * 4 + 1))   # (p-1)/(v·m + p - 1)
    for p, m in [(4, 8), (4, 16)]:
        assert bubble_fraction(schedule_slots("interleaved-1f1b", p, m, 2)) == pytest.approx((p - 1) / (2 * m + p - 1))


def marked_mlp_step(batch=8, blocks=4, seed=0):
    """A torch MLP whose forward marks its stages with shardc.pipeline_split(), and its SGD step."""
    import torch
    from torch.func import functional_call, grad_and_value

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(blocks))

        def forward(self, x):
            for i, b in enumerate(self.blocks):
                x = torch.tanh(b(shardc.pipeline_split(x) if i else x))
            return x

    torch.manual_seed(seed)
    net = Net()

    def step(params, x, y):
        g, loss = grad_and_value(lambda p: ((functional_call(net, p, (x,)) - y) ** 2).mean())(params)
        return loss, {k: params[k] - 0.1 * g[k] for k in params}

    args = ({k: v.detach().clone() for k, v in net.named_parameters()}, torch.randn(batch, 16), torch.randn(batch, 16))
    return shardc.from_torch(step, args, capture="make_fx"), args


def test_pipeline_split_marks():
    g, args = marked_mlp_step()
    prog = shardc.partition(g, Mesh({"pp": 4, "dp": 2}), {"x": P("dp"), "y": P("dp")},
                            pipeline=shardc.Pipeline("pp", 2, "1f1b"))
    # one activation forward and its gradient backward per boundary, each stage updating its own block
    assert sorted((t.src, t.dst) for t in prog.transfers) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert all(t.bytes == 2 * 16 * 4 for t in prog.transfers)    # 8 rows over dp=2 and 2 microbatches
    assert all(st.step for st in prog.stages)
    err, _ = _run(g, _fresh_args(g, args, 5), prog)
    assert err < 1e-5
    with pytest.raises(shardc.Error, match="split_points"):
        shardc.partition(g, Mesh({"pp": 2}), {}, pipeline=shardc.Pipeline("pp", 2, split_points=["blocks.2"]))
