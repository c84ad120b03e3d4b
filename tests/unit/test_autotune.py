"""The autotuner: candidates from each template's tuning space (grid order included), pruned by
the roofline model and by shared memory from the ahead-of-time sm_90 compile, timed (CPU timer on
the interpreter here: a smoke test with tiny shapes and few candidates) within a time budget, the
best stored in a JSON tuning database keyed by kernel hash + shapes + device + toolchain, written
atomically, warm starts that time nothing, pins and SHARDC_TUNE=pinned, a corrupt file kept aside
and rebuilt, and compile() launching with the stored best config."""
import json

import numpy as np
import pytest

import shardc
from shardc import DType, Mesh, Op, partition
from shardc.codegen import autotune
from shardc.ir import GraphBuilder
from shardc.testing import rel_err


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SHARDC_TUNE", raising=False)
    return tmp_path / "cache"


def _graph(m=8, k=32, n=16, dtype=DType.f32):
    b = GraphBuilder()
    x = b.parameter("x", (m, k), dtype)
    w = b.parameter("w", (k, n), dtype)
    d = b.add(Op.DOT_GENERAL, [x, w], lhs_contract=(1,), rhs_contract=(0,))
    return b.build([b.add(Op.TANH, [d])])


def _compile(**shape):
    return shardc.compile(partition(_graph(**shape), Mesh(dp=1)))


@pytest.fixture
def timer_calls(monkeypatch):
    """Counts the tuner's timer calls (the interpreter's CPU timer)."""
    calls = []
    real = autotune._time_cpu
    monkeypatch.setattr(autotune, "_time_cpu", lambda fn, reps: (calls.append(1), real(fn, reps))[1])
    return calls


def test_database_round_trips_atomically(_cache_dir):
    db = autotune.TuningDB()
    assert db.path == _cache_dir / "tuning.json" and db.get("k") is None
    key = autotune.entry_key("abc", "f32[8,32]->f32[8,16]", "interpreter")
    db.put(key, {"config": {"BM": 16, "BN": 32}, "ms": 1.5})
    db.put("other", {"config": {"BM": 1}})
    assert autotune.TuningDB().get(key)["config"] == {"BM": 16, "BN": 32}  # a fresh reader sees it
    data = json.loads(db.path.read_text())
    assert data["version"] == autotune.DB_VERSION and set(data["entries"]) == {key, "other"}
    assert not [p for p in _cache_dir.iterdir() if p.name != "tuning.json"]  # no temporary files left
    assert autotune.lookup("abc", "f32[8,32]->f32[8,16]", "interpreter") == {"BM": 16, "BN": 32}
    assert autotune.lookup("abc", "f32[8,32]->f32[8,16]", "NVIDIA H200") is None  # keyed by device


@pytest.mark.parametrize("garbage", ['{"version": 1, "entries": {"k": ', "\x00\xff not json",
                                     '{"version": 99, "entries": {}}', '{"version": 1, "entries": {"k": 3}}'])
def test_corrupt_database_is_ignored_with_a_warning_and_rewritten(_cache_dir, garbage):
    path = _cache_dir / "tuning.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage.encode("latin-1"))
    with pytest.warns(RuntimeWarning, match="corrupt tuning database"):
        assert autotune.TuningDB().get("k") is None
    exe = _compile()  # compile still works, with default configs (warned once per file version)
    assert all(k.config(True) == autotune.default_config(k, True) for k in exe.kernels)
    with pytest.warns(RuntimeWarning):
        assert autotune.TuningDB().put("k", {"config": {"BM": 4}})
    assert json.loads(path.read_text())["entries"] == {"k": {"config": {"BM": 4}}}
    assert (_cache_dir / "tuning.json.corrupt").read_bytes() == garbage.encode("latin-1")  # never lost


def test_an_unwritable_database_is_a_warning_not_a_crash(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    db = autotune.TuningDB(tmp_path / "a_file" / "tuning.json")
    with pytest.warns(RuntimeWarning, match="could not write the tuning database"):
        assert db.put("k", {"config": {"BM": 4}}) is False
    (k,) = _compile().kernels
    with pytest.warns(RuntimeWarning, match="could not write"):
        assert autotune.tune(k, interpret=True, db=db, reps=1, configs=[k.config(True)]) == k.config(True)


def test_tuned_config_is_picked_up_by_compile(rng):
    exe = _compile()
    (k,) = exe.kernels
    default = k.config(True)
    x = rng.standard_normal((8, 32)).astype(np.float32)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    # candidates: the default, then the template's space over it; the CPU timer runs a few
    cands = autotune.candidates(k, True, 2)
    assert cands[0] == default and len(cands) == 2 and cands[1] != default
    best = autotune.tune(k, interpret=True, configs=cands, reps=1)
    assert best in cands
    entry = autotune.TuningDB().get(autotune.entry_key(autotune.kernel_hash(k.source),
                                                       autotune.shapes_text(k.inputs, k.outputs), "interpreter"))
    assert entry["config"] == best and len(entry["candidates"]) == 2 and entry["ms"] > 0
    # a stored config that differs from the default: a new compile launches with it, correctly
    small = {**default, "BM": 16, "BN": 16, "BK": 16}
    autotune.TuningDB().put(autotune.entry_key(autotune.kernel_hash(k.source),
                                               autotune.shapes_text(k.inputs, k.outputs), "interpreter"),
                            {"config": small})
    exe2 = _compile()
    (k2,) = exe2.kernels
    assert k2.config(True) == small and autotune.default_config(k2, True) == default
    seen = []
    launch = k2.launch
    k2.launch = lambda args, config=None: (seen.append(config or k2.config(True)), launch(args, config))
    got = exe2.run_interpreted(x, w)[0]
    assert seen == [small]
    assert rel_err(got, np.tanh(x @ w)) <= 1e-5


def test_tune_all_covers_every_distinct_kernel():
    b = GraphBuilder()
    x = b.parameter("x", (4, 40), DType.f32)
    s = b.add(Op.REDUCE_SUM, [b.add(Op.EXP, [x])], axes=(1,))
    g = b.build([s, b.add(Op.MUL, [x, x])])
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    best = autotune.tune_all(exe, interpret=True, reps=1)
    assert set(best) == {k.name for k in exe.kernels}
    again = shardc.compile(partition(g, Mesh(dp=1)))
    assert all(k.config(True) == best[k.name] for k in again.kernels)


def test_candidates_cover_the_templates_space_with_grid_order():
    (k,) = _compile(m=512, k=512, n=512, dtype=DType.bf16).kernels
    assert k.dims == {"B": 1, "M": 512, "N": 512, "K": 512, "dtype": "bf16"}
    default = autotune.default_config(k, False)
    cands = autotune.candidates(k, False)
    assert cands[0] == default and default["GM"] == 8 and default["DT"] == "bf16"
    assert len(cands) == len({json.dumps(c, sort_keys=True) for c in cands}) == 10  # 5 tiles x 2 orders (one the default)
    assert {c["GM"] for c in cands} == {1, 8}
    assert {(c["BM"], c["BN"], c["BK"]) for c in cands} >= {(128, 256, 64), (64, 64, 32)}
    assert all(c["DT"] == "bf16" and c["PREC"] == default["PREC"] for c in cands)  # laid over the default


def test_grid_order_computes_the_same_product(rng):
    """Grouped tile order (GM rows of tiles at a time, a last group of fewer rows) covers every tile once."""
    exe = _compile(m=48, k=16, n=48)
    (k,) = exe.kernels
    x = rng.standard_normal((48, 16)).astype(np.float32)
    w = rng.standard_normal((16, 48)).astype(np.float32)
    import torch
    for gm in (1, 2, 8):
        out = torch.full((48, 48), float("nan"))
        k.launch([torch.from_numpy(x), torch.from_numpy(w), out], {**k.config(True), "BM": 16, "BN": 16, "BK": 16, "GM": gm})
        assert rel_err(out.numpy(), np.tanh(x @ w)) <= 1e-5, gm


def test_roofline_prunes_tiles_that_overhang_the_problem():
    from shardc.analysis import hardware
    from shardc.codegen import autotune_space
    hw = hardware.get("h100")
    (small,) = _compile(m=8, k=4096, n=4096, dtype=DType.bf16).kernels
    cands = autotune.candidates(small, False)
    kept, dropped = autotune_space.prune_by_roofline(small, cands, hw)
    assert kept[0] == cands[0] and len(kept) + len(dropped) == len(cands)
    # 8 rows: every tile overhangs M; with N=4096 a 128-wide tile gives 32 programs on 132 SMs,
    # a 64-wide one 64: the model keeps the narrow tiles (and the default), drops the wide ones
    assert dropped and all(c["BN"] >= 128 for c, _ in dropped) and all("roofline" in why for _, why in dropped)
    assert any(c["BN"] == 64 for c in kept)
    times = {json.dumps(c, sort_keys=True): autotune_space.model_s(small, c, hw) for c in cands}
    best = min(times.values())
    assert all(times[json.dumps(c, sort_keys=True)] > 1.5 * best for c, _ in dropped)
    # a large square matmul fills the machine with any of the tiles: nothing to prune
    (big,) = _compile(m=4096, k=4096, n=4096, dtype=DType.bf16).kernels
    kept, dropped = autotune_space.prune_by_roofline(big, autotune.candidates(big, False), hw)
    assert dropped == [] and len(kept) == 10
    t = autotune_space.model_s(big, kept[0], hw)
    assert 2 * 4096**3 / 989e12 <= t <= 1.2 * 2 * 4096**3 / 989e12  # compute-bound: FLOPs at peak


def test_resources_from_the_sm90_compile_prune_configs_over_shared_memory():
    from shardc.codegen import autotune_space
    from shardc.codegen.aot import SHARED_MEMORY_LIMIT
    (k,) = _compile(m=256, k=1024, n=256, dtype=DType.bf16).kernels
    default = autotune.default_config(k, False)
    # a pipelined stage holds a 128x128 tile of A and of B in bf16: 64 KiB; 3 stages fit in 227 KiB, 4 do not
    fits, too_big = {**default, "BK": 128, "num_stages": 3}, {**default, "BK": 128, "num_stages": 4}
    kept, dropped, results = autotune_space.prune_by_resources(k, [default, too_big, fits])
    assert kept == [default, fits]
    assert [c for c, _ in dropped] == [too_big] and "shared memory 262144 B" in dropped[0][1]
    assert results[2]["shared"] == 3 * 65536 and results[0]["shared"] == 3 * 32768  # every stage counted
    assert results[1]["shared"] > SHARED_MEMORY_LIMIT >= max(results[0]["shared"], results[2]["shared"])
    from shardc.codegen.aot import shared_memory_limit
    assert shared_memory_limit(("cuda", 90, 32)) == SHARED_MEMORY_LIMIT and shared_memory_limit(("cuda", 80, 32)) == 163 * 1024
    assert all(r["wgmma"] for r in results)
    assert all(0 < r["regs"] <= 255 and r["spill_bytes"] == 0 for r in (results[0], results[2]))


def test_warm_start_times_nothing(timer_calls):
    (k,) = _compile().kernels
    best = autotune.tune(k, interpret=True, reps=1)
    n = len(timer_calls)
    assert n == autotune.CPU_CANDIDATES  # one timing per candidate
    (again,) = _compile().kernels  # a fresh compile of the same kernel: a warm start
    assert again is not k and autotune.tune(again, interpret=True, reps=1) == best
    assert again.config(True) == best and len(timer_calls) == n
    autotune.tune(again, interpret=True, reps=1, retune=True)  # asked to: times again
    assert len(timer_calls) == 2 * n
    entry = autotune.TuningDB().get(autotune.kernel_key(k, "interpreter"))
    assert entry["toolchain"] == autotune.toolchain() and "triton" in entry["toolchain"]
    assert autotune.lookup(autotune.kernel_hash(k.source), entry["shapes"], "interpreter") == entry["config"]
    other = autotune.entry_key(autotune.kernel_hash(k.source), entry["shapes"], "interpreter", "triton 0.0")
    assert autotune.TuningDB().get(other) is None  # another toolchain is another key


def test_time_budget_stops_timing_after_the_first_config(timer_calls):
    (k,) = _compile().kernels
    cands = autotune.candidates(k, True, 3)
    autotune.tune(k, interpret=True, configs=cands, reps=1, budget_s=0)
    entry = autotune.TuningDB().get(autotune.kernel_key(k, "interpreter"))
    assert len(timer_calls) == 1 and entry["config"] == cands[0]
    assert [c["ms"] is None for c in entry["candidates"]] == [False, True, True]
    assert all("time budget" in c["error"] for c in entry["candidates"][1:])


def test_pinned_configs_are_reproduced(timer_calls, monkeypatch):
    (k,) = _compile().kernels
    default = k.config(True)
    pinned = autotune.pin(k, {"BM": 16, "BN": 16}, device="interpreter")
    assert pinned == {**default, "BM": 16, "BN": 16}
    assert autotune.tune(k, interpret=True, retune=True) == pinned and timer_calls == []  # a pin is never re-timed
    with pytest.raises(shardc.Error, match="no launch parameter BLOCK"):
        autotune.pin(k, {"BLOCK": 4}, device="interpreter")
    # SHARDC_TUNE=pinned: compile uses pins only, tune never times
    (other,) = shardc.compile(partition(_graph(m=16), Mesh(dp=1))).kernels
    autotune.tune(other, interpret=True, reps=1)
    monkeypatch.setenv("SHARDC_TUNE", "pinned")
    (k2,) = _compile().kernels
    (other2,) = shardc.compile(partition(_graph(m=16), Mesh(dp=1))).kernels
    assert k2.config(True) == pinned and other2.config(True) == autotune.default_config(other2, True)
    n = len(timer_calls)
    with pytest.raises(shardc.Error, match="has no pinned config"):
        autotune.tune(other2, interpret=True)
    assert autotune.tune(k2, interpret=True) == pinned and len(timer_calls) == n
    monkeypatch.setenv("SHARDC_TUNE", "off")
    assert _compile().kernels[0].config(True) == default  # the database is not read
    monkeypatch.setenv("SHARDC_TUNE", "sometimes")
    with pytest.raises(shardc.Error, match="SHARDC_TUNE='sometimes'"):
        autotune.mode()


def test_pallas_block_shapes_are_candidates_that_lower_for_tpu(rng):
    from shardc.codegen import autotune_space, pallas
    from shardc.kernels import pallas_templates as tpl
    (k,) = shardc.compile(partition(_graph(m=64, k=1024, n=512), Mesh(dp=1)), "pallas").kernels
    cands = autotune_space.pallas_space(k)
    assert cands[0]["vmem_budget"] == tpl.VMEM_BUDGET and cands[0]["kernel"].source == k.source  # the default first
    grids = [c["grid"] for c in cands]
    assert len(grids) == len(set(grids)) >= 2  # smaller budgets: more, smaller blocks
    steps = [int(np.prod(g)) for g in grids]
    assert steps[0] == 1 and steps == sorted(steps)  # 64x1024 @ 1024x512 f32 whole in 4 MiB, then tiled
    kept, dropped = autotune_space.prune_pallas_by_lowering(cands)
    assert dropped == [] and kept == cands  # every legal block shape lowers for a TPU
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    w = rng.standard_normal((1024, 512)).astype(np.float32)
    outs = [pallas.launch(c["kernel"], [x, w], [])[0] for c in cands]
    for c, got in zip(cands, outs):  # each candidate computes the same kernel (f32 sums of 1024 terms)
        assert rel_err(got, np.tanh(x.astype(np.float64) @ w)) <= 1e-4, c["grid"]
    with pytest.raises(shardc.Error, match="Pallas kernel"):
        autotune.tune(k, interpret=True)
