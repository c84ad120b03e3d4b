"""plan="auto" (issue 16): the ILP's plan per mesh and budget, priced by shardc.analyze against the
hand plans, and simulate == evaluate. Tiny zoo models on an H200 scaled down to their size
(auto_helpers.scaled_h200), so the trade-offs are those of a production-size model."""
import functools
import sys
from pathlib import Path

import pytest

import shardc
from shardc import Mesh, analyze, models, partition
from shardc.partition.auto import solve
from shardc.partition.auto_plan import partition_auto
from shardc.partition.auto_strategies import axes_key
from shardc.testing import assert_close

sys.path.insert(0, str(Path(__file__).parent))
from auto_helpers import scaled_h200  # noqa: E402

BATCH = 4
HW = scaled_h200()


@functools.lru_cache(maxsize=None)
def captured(name: str, train: bool, n_layer: int = 1):
    m = models.get(name + ":tiny", **({"n_layer": n_layer} if name in ("gpt2", "llama") else {}))
    g, args = m.capture(train, "jax", BATCH, lr=0.1)
    return m, g, args, g.evaluate(*args)


def axes_of(prog, name):
    return [d.axes for d in prog.sharding_of(name).dims]


def check_simulate(prog, g, args, want):
    for i, (a, b) in enumerate(zip(prog.simulate(*args), want)):
        assert_close(a, b, tol=1e-5, what=g.output_names[i])


def step(prog):
    return analyze(prog, HW).step_s


def test_tp_mesh_training_is_megatron_with_whole_heads():
    """GPT-2 training on tp=2: column-parallel c_attn (split per fused q/k/v block, whole heads)
    and c_fc, row-parallel c_proj; no worse than the zoo's Megatron specs."""
    m, g, args, want = captured("gpt2", True)
    prog = partition_auto(g, Mesh(tp=2), None, None, HW, compare=False, passes="default")     # the ILP's own plan
    for i in range(m.config.n_layer):
        assert axes_of(prog, f"params['h.{i}.mlp.c_fc.weight']") == [("tp",), ()]
        assert axes_of(prog, f"params['h.{i}.mlp.c_proj.weight']") == [(), ("tp",)]
        assert axes_of(prog, f"params['h.{i}.attn.c_proj.weight']") == [(), ("tp",)]
        qkv = prog.sharding_of(f"params['h.{i}.attn.c_attn.weight']").dims[0]
        assert qkv.axes == ("tp",) and qkv.outer == 3          # q, k and v each split by heads
    assert all(axes_of(prog, p.name)[0] == () for p in g.inputs if p.name.startswith("args"))  # batch whole
    assert "auto:" in prog.origins[g.node_by_name("params['h.0.mlp.c_fc.weight']")]
    megatron = partition(g, Mesh(tp=2), m.tp_specs())
    assert step(prog) <= step(megatron)
    check_simulate(prog, g, args, want)


def test_dp_mesh_with_room_is_data_parallel():
    m, g, args, want = captured("gpt2", True)
    prog = partition(g, Mesh(dp=2), plan="auto", hardware=HW)
    for p in g.inputs:
        if p.name.startswith("args"):
            assert axes_of(prog, p.name)[0] == ("dp",)               # the batch over dp
        elif p.rank == 2:
            assert axes_of(prog, p.name) == [(), ()], p.name        # every weight whole on each device
    hand = prog.auto.hand                 # the hand plans it was priced against, by shardc.analyze
    assert set(hand) == {"dp", "fsdp"} and prog.auto.step_s <= min(t for t, _ in hand.values())
    assert prog.auto.step_s == pytest.approx(step(prog), rel=1e-2)
    check_simulate(prog, g, args, want)


def test_budget_too_small_for_replicated_state_is_fsdp():
    m, g, args, want = captured("mlp", True)
    roomy = solve(g, Mesh(dp=2), {}, HW)
    weights = [p for p in g.inputs if p.rank == 2 and "[" in p.name and p.name.startswith("params")]
    assert all(roomy.shardings[p].is_replicated for p in weights)
    budget = 0.75 * roomy.memory
    prog = partition(g, Mesh(dp=2), plan="auto", memory_budget=budget, hardware=HW)
    res = prog.auto.result
    assert res.memory <= budget
    split = [p for p in weights if not prog.shardings[p].is_replicated]
    assert split and all(prog.shardings[p].used_axes == ("dp",) for p in split)   # ZeRO-3: state over dp
    assert any(r.kind == "all_gather" and r.axes == ("dp",) for r in prog.collectives)   # gathered for use
    check_simulate(prog, g, args, want)


def test_infeasible_budget_names_the_smallest_that_fits():
    m, g, args, _ = captured("mlp", True)
    with pytest.raises(shardc.ShardingError, match=r"smallest that fits is [0-9.e-]+ GB") as e:
        partition(g, Mesh(dp=2), plan="auto", memory_budget=1000, hardware=HW)
    least = float(str(e.value).split("smallest that fits is ")[1].split(" GB")[0]) * 1e9
    res = solve(g, Mesh(dp=2), {}, HW, memory_budget=least * 1.01)    # and that one does fit
    assert res.memory <= least * 1.01


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_2d_mesh_is_dp_times_tp_and_beats_the_hand_plans(name):
    m, g, args, want = captured(name, True)
    mesh = Mesh(dp=2, tp=2)
    prog = partition_auto(g, mesh, None, None, HW, compare=False, passes="default")            # the ILP's own plan
    batch = [p for p in g.inputs if not p.name.startswith("params")]
    if name == "moe":   # experts over dp×tp (expert parallelism), tokens to them by all-to-all
        assert prog.sharding_of("params['layers.0.w_in']").dims[0].axes == ("dp", "tp")
    else:
        assert_dp_times_tp(prog, batch)
    assert step(prog) <= step(partition(g, mesh, m.tp_specs(), "dp"))     # Megatron over tp, the batch over dp
    check_simulate(prog, g, args, want)


def assert_dp_times_tp(prog, batch):
    # the batch over dp (an input some op needs whole anyway, such as the ids an embedding's
    # gradient scatters by, may come whole: slicing it is cheaper than gathering it back)
    assert any(axes_of(prog, p.name)[0] == ("dp",) for p in batch)
    assert not any("tp" in prog.shardings[p].dims[0].axes for p in batch)
    assert any("tp" in s.used_axes for p, s in prog.shardings.items() if p.name and p.name.startswith("params"))


def test_user_specs_are_fixed_choices():
    m, g, args, want = captured("mlp", False)
    prog = partition(g, Mesh(dp=2, tp=2), {"layers.0.weight": shardc.P(None, "tp")}, plan="auto", hardware=HW)
    assert axes_of(prog, "params['layers.0.weight']") == [(), ("tp",)]
    assert "spec" in prog.origins[g.node_by_name("params['layers.0.weight']")]
    check_simulate(prog, g, args, want)


def test_repeated_layers_share_their_choices():
    """A 4-layer GPT-2 solves in as many classes as a 2-layer one plus each layer's parameters."""
    sizes = {}
    for n_layer in (2, 4):
        m = models.get("gpt2:tiny", n_layer=n_layer)
        g, _ = m.capture(False, "jax", BATCH)
        res = solve(g, Mesh(tp=2), {}, HW)
        params = sum(1 for p in g.inputs if p.name.startswith("params"))
        sizes[n_layer] = (res.n_groups, res.n_classes - params)
        chosen = {axes_key(res.shardings[p]) for p in g.inputs if p.name.endswith("mlp.c_fc.weight']")}
        assert len(chosen) == 1                                      # every layer the same choice
    assert sizes[4][0] > sizes[2][0] and sizes[4][1] <= sizes[2][1] + 2


def test_explain_lists_rejected_alternatives():
    m, g, args, _ = captured("gpt2", True)
    prog = partition_auto(g, Mesh(tp=2), None, None, HW, compare=False, passes="default")
    text = prog.auto.text()
    assert "rejected alternatives" in text and "params['wte.weight']" in text
    name, nbytes, chosen, alts = prog.auto.rejected[0]
    assert alts and all(extra >= -1e-12 for _, extra, _ in alts)     # the ILP's choice is locally best


def test_hugging_face_style_gpt2_training_on_tp_is_megatron():
    """HF's Conv1D weights are [in, out] and c_attn is fused: column-parallel is dim 1, split
    per q/k/v block; row-parallel c_proj is dim 0."""
    from shardc.models import hf_style as H
    c = H.Cfg()
    fn, args = H.sgd_step("gpt2", c, BATCH)
    g = shardc.from_torch(fn, args, capture="make_fx")
    want = g.evaluate(*args)
    prog = partition_auto(g, Mesh(tp=2), None, None, HW, compare=False, passes="default")
    for i in range(c.n_layer):
        qkv = prog.sharding_of(f"params['model.h.{i}.attn.c_attn.weight']").dims[1]
        assert qkv.axes == ("tp",) and qkv.outer == 3
        assert axes_of(prog, f"params['model.h.{i}.mlp.c_fc.weight']") == [(), ("tp",)]
        assert axes_of(prog, f"params['model.h.{i}.mlp.c_proj.weight']") == [("tp",), ()]
        assert axes_of(prog, f"params['model.h.{i}.attn.c_proj.weight']") == [("tp",), ()]
    assert step(prog) <= step(partition(g, Mesh(tp=2), H.megatron_specs("gpt2")))
    check_simulate(prog, g, args, want)


def test_cli_plan_auto_explains_and_takes_a_budget():
    from click.testing import CliRunner
    from shardc.cli import main
    r = CliRunner().invoke(main, ["explain", "mlp", "--mesh", "dp=2", "--plan", "auto", "--train",
                                  "--memory-budget", "1KB"])
    assert isinstance(r.exception, shardc.ShardingError) and "smallest that fits" in str(r.exception)
    r = CliRunner().invoke(main, ["explain", "mlp", "--mesh", "dp=2", "--plan", "auto", "--hardware", "h100"])
    assert r.exit_code == 0, r.output
    assert "auto plan:" in r.output and "rejected alternatives" in r.output and "126.9" not in r.output
    assert "72 GB budget" in r.output          # h100: 80 GB less the 10% margin
