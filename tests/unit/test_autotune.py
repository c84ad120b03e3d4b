"""The autotuner: candidates from each template's tuning space, timed (CPU timer on the
interpreter here: a smoke test with tiny shapes and few candidates), the best stored in a JSON
tuning database keyed by kernel hash + shapes + device, written atomically, a corrupt file
recovered from, and compile() launching with the stored best config."""
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
    return tmp_path / "cache"


def _graph():
    b = GraphBuilder()
    x = b.parameter("x", (8, 32), DType.f32)
    w = b.parameter("w", (32, 16), DType.f32)
    d = b.add(Op.DOT_GENERAL, [x, w], lhs_contract=(1,), rhs_contract=(0,))
    return b.build([b.add(Op.TANH, [d])])


def _compile():
    return shardc.compile(partition(_graph(), Mesh(dp=1)))


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
        autotune.TuningDB().put("k", {"config": {"BM": 4}})
    assert json.loads(path.read_text())["entries"] == {"k": {"config": {"BM": 4}}}


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
