"""Causal blocks skipped (codegen/masked_blocks.py): loops over a reduced axis visit only the blocks
where the mask leaves a summand that is not the identity. Each kernel still equals numpy of its IR
nodes (Triton interpreter, Pallas interpret mode), the whole program equals Graph.evaluate, and the
loops make exactly the trips causality implies: the emitted bounds are evaluated per program and
compared with the blocks of a numpy causal mask that hold an unmasked entry."""
import ast
import re
import types

import numpy as np
import pytest

import shardc
from shardc import Mesh, models, partition
from shardc.codegen import masked_blocks as mb
from shardc.codegen import masked_loops as ml
from shardc.codegen import stats
from shardc.codegen.aot import compile_for_gpu
from shardc.codegen.pallas import vmem_budget
from shardc.kernels import attention as attention_t
from shardc.kernels import matmul as matmul_t
from shardc.kernels import rows as rows_t
from shardc.testing import rel_err
from test_codegen_pallas import export_all, run_and_check
from test_codegen_zoo import run_and_check_kernels

BLOCK = 16  # interpreter blocks small enough that a 40-long sequence spans 3 (the last one partial)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


@pytest.fixture
def small_blocks(monkeypatch):
    """Triton interpreter configs with BLOCK-sized tiles (GPU configs unchanged)."""
    for mod, names in ((matmul_t, ("BM", "BN", "BK", "RB")), (attention_t, ("BM", "BN"))):
        orig = mod.choose
        monkeypatch.setattr(mod, "choose", lambda *a, _o=orig, _n=names: {**_o(*a), **{
            k: BLOCK for k in _n}} if a[-1] else _o(*a))
    orig = rows_t.choose_looped
    monkeypatch.setattr(rows_t, "choose_looped", lambda r, c, i: {**orig(r, c, i), "BM": BLOCK, "BN": BLOCK})


def _attention(seq, causal=True, heads=2, d=16, window=None, bf16=False):
    """softmax(q kᵀ/√d, mask) v and its vjp with cotangent w (no loss reduction: the output and
    dq, dk, dv are the graph's outputs). Mask: causal (q >= k), or a sliding window, or none."""
    import jax
    import jax.numpy as jnp
    from shardc.models.jax_models import causal_attention
    rng = np.random.default_rng(seq + heads)
    dt = jnp.bfloat16 if bf16 else jnp.float32
    q, k, v, w = (jnp.asarray(rng.standard_normal((1, heads, seq, d)), dt) for _ in range(4))

    def attn(q, k, v):
        if causal and window is None:  # the zoo's: where(tril(ones), q·kᵀ/√d, -1e9)
            return causal_attention(q, k, v)
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(d)
        if causal:
            i, j = jnp.arange(seq)[:, None], jnp.arange(seq)[None, :]
            keep = (i >= j) if window is None else (i >= j) & (i - j < window)
            s = jnp.where(keep, s, -1e9)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)

    def f(q, k, v, w):
        out, vjp = jax.vjp(attn, q, k, v)
        return (out, *vjp(w))
    return shardc.from_jax(f, q, k, v, w), (q, k, v, w)


def _keep(seq, window=None) -> np.ndarray:
    i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
    return (i >= j) if window is None else (i >= j) & (i - j < window)


def _needed(keep: np.ndarray, block: int, cols: int | None = None) -> list[int]:
    """Per block of `block` rows: how many blocks of `cols` (default: block) columns hold an
    unmasked entry."""
    cols = cols or block
    return [sum(bool(keep[r:r + block, c:c + cols].any()) for c in range(0, keep.shape[1], cols))
            for r in range(0, keep.shape[0], block)]


def _loops(source: str) -> list[tuple[str, str, str, str]]:
    """(variable, start, end, step) of every `for` over a range in a kernel's source."""
    out = []
    for line in source.splitlines():
        m = re.match(r"\s*for (\w+) in range\((.*)\):\s*$", line)
        if m:
            call = ast.parse(f"range({m.group(2)})", mode="eval").body
            out.append((m.group(1), *(ast.unparse(a) for a in call.args)))
    return out


def _trips(loop, programs: int, block: int) -> list[int]:
    """The emitted loop's trip count in each program (row block) at BM = BK = BN = block."""
    _, start, end, step = loop
    out = []
    for p in range(programs):
        tl = types.SimpleNamespace(minimum=min, maximum=max, program_id=lambda a, p=p: p)
        env = dict(tl=tl, pid_m=p, BM=block, BN=block, BK=block, RB=block)
        out.append(len(range(eval(start, env), eval(end, env), eval(step, env))))
    return out


def _narrowed(exe):
    return [(k, lp) for k in exe.kernels for lp in _loops(k.source) if lp[1] != "0" or not lp[2].isdigit()]


# ------------------------------------------------------------------------------ the analysis
def test_supports_of_masks_and_bounds_against_brute_force():
    """Bounds from random affine masks visit every block with an unmasked entry (never fewer), and
    exactly those for causal and sliding-window masks, at sizes that are not block multiples."""
    rng = np.random.default_rng(0)
    n, k_ext, bm, bk = 37, 45, 8, 16
    ranges = {"m": ml.Range("p", str(bm), n)}
    for trial in range(60):
        conj = []
        for _ in range(rng.integers(1, 3)):
            a, c = int(rng.choice([-1, 1])), int(rng.integers(-1, 2))
            conj.append(({"k": a, "m": c} if c else {"k": a}, int(rng.integers(-20, 20))))
        sup = [tuple(conj)]
        b = ml.loop_bounds(sup, "k", k_ext, str(bk), ranges)
        m_i, k_i = np.arange(n)[:, None], np.arange(k_ext)[None, :]
        keep = np.ones((n, k_ext), bool)
        for co, e in conj:
            keep &= co.get("k", 0) * k_i + co.get("m", 0) * m_i + e >= 0
        need = [[c // bk for c in range(0, k_ext, bk) if keep[r:r + bm, c:c + bk].any()] for r in range(0, n, bm)]
        for p, blocks in enumerate(need):
            env = {"m": (p * bm, min(p * bm + bm, n) - 1)}
            lo = 0 if b is None or b.lo is None else min(max(b._value(t, env) for t in cj) for cj in b.lo)
            hi = k_ext - 1 if b is None or b.hi is None else max(min(b._value(t, env) for t in cj) for cj in b.hi)
            visited = set(range(max(lo, 0) // bk, -(-min(hi + 1, k_ext) // bk)))
            assert set(blocks) <= visited, (trial, conj, p, blocks, visited)
            if len(conj) == 1:  # one constraint: its bound at the block's extreme row is exact
                assert visited == set(blocks), (trial, conj, p, blocks, visited)
    assert mb._negate([]) is None and mb._negate(None) == []  # not nowhere is everywhere
    # causal q >= k over 40 queries, keys in blocks of 16: 1 + 2 + 3 of 9 trips
    causal = ml.loop_bounds([(({"k": -1, "m": 1}, 0),)], "k", 40, "16", {"m": ml.Range("p", "16", 40)})
    assert causal.trips({}) == (6, 9) == (sum(_needed(_keep(40), 16)), 9)


def test_non_causal_and_data_masks_are_never_narrowed():
    """A mask read from memory (key padding) or no mask: the support is everywhere."""
    import jax.numpy as jnp
    import jax

    def f(q, k, pad):
        s = jnp.where(pad[None, :] > 0, q @ k.T, -1e9)
        return jax.nn.softmax(s, axis=-1), jax.nn.softmax(q @ k.T, axis=-1)
    x = jnp.ones((8, 4))
    g = shardc.from_jax(f, x, x, jnp.ones((8,)))
    an = mb.Analysis()
    for out in g.outputs:
        exp = next(n for n in g.nodes if n.op.value == "exp" and n in shardc.ir.graph.ancestors([out]))
        assert an.zero(exp) is None


# ---------------------------------------------------------------------------------- Triton
@pytest.mark.parametrize("looped", [False, True], ids=["one-tile-rows", "looped-rows"])
def test_triton_attention_backward_skips_causal_blocks(small_blocks, monkeypatch, looped):
    """Causal attention forward and backward at seq 40 (blocks of 16: the last partial): every
    kernel equals numpy, the step equals evaluate, and every loop over keys (P·V and dQ) or over
    queries (dK, dV) — and, with rows longer than a tile, the row statistics' loops — makes the
    trips the causal mask implies."""
    if looped:
        monkeypatch.setattr(rows_t, "MAX_ROW_TILE", BLOCK)
    g, args = _attention(40, heads=3 if looped else 2)  # (another IR: the kernel cache keys the IR alone)
    exe, got = run_and_check_kernels(partition(g, Mesh(dp=1)), args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    keep = _keep(40)
    over_keys, over_queries = _needed(keep, BLOCK), _needed(keep.T, BLOCK)
    loops = [_trips(lp, 3, BLOCK) for _, lp in _narrowed(exe)]
    assert sorted(loops).count(over_queries) == 1, loops  # dK and dVᵀ: one pass over the queries
    assert loops.count(over_keys) == len(loops) - 1 >= (3 if looped else 1), loops  # looped: + flash forward, D
    assert sum(over_keys) == 6 and sum(over_queries) == 6  # of 3·3 blocks each
    # the FLOP count reads the same bounds: every dot of a narrowed loop runs 6 of 9 blocks
    for k in exe.kernels:
        for n, bounds in k.dot_sites:
            for b in bounds:
                assert b.trips(k.config(True)) == (6, 9), (k.name, n.describe())


def test_triton_flash_attention_template_and_sliding_window(small_blocks):
    """The inference template's key loop: causal (1+2+3 of 9 blocks) and a sliding window of 12
    (the blocks before the window are skipped too)."""
    import jax
    import jax.numpy as jnp
    from shardc.models.jax_models import causal_attention
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 2, 40, 16)), jnp.float32) for _ in range(3))
    exe, got = run_and_check_kernels(partition(shardc.from_jax(causal_attention, q, k, v), Mesh(dp=1)), (q, k, v), 1e-5)
    assert rel_err(got[0], causal_attention(q, k, v)) <= 1e-5
    (kern, loop), = [(k, lp) for k, lp in _narrowed(exe) if k.kind == "attention"]
    assert _trips(loop, 3, BLOCK) == _needed(_keep(40), BLOCK) == [1, 2, 3]

    def window(q, k, v):
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        i, j = jnp.arange(40)[:, None], jnp.arange(40)[None, :]
        s = jnp.where((i >= j) & (i - j < 12), s, -jnp.inf)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)
    exe, got = run_and_check_kernels(partition(shardc.from_jax(window, q, k, v), Mesh(dp=1)), (q, k, v), 1e-5)
    assert rel_err(got[0], window(q, k, v)) <= 1e-5
    (kern, loop), = [(k, lp) for k, lp in _narrowed(exe) if k.kind == "attention"]
    assert _trips(loop, 3, BLOCK) == _needed(_keep(40, 12), BLOCK) == [1, 2, 2]


def test_non_causal_attention_narrows_nothing(small_blocks):
    g, args = _attention(24, causal=False)
    exe, got = run_and_check_kernels(partition(g, Mesh(dp=1)), args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    assert not _narrowed(exe) and all(not b for k in exe.kernels for _, b in k.dot_sites)
    f = stats.flops(exe)
    assert f["flops"] == f["dense_flops"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_training_steps_skip_causal_blocks(small_blocks, name):
    """A causal model's training step (seq 40, one layer) with its attention loops narrowed to the
    blocks causality implies, each kernel equal to numpy, the step equal to evaluate."""
    m = models.get(f"{name}:tiny", seq_len=40, n_layer=1)
    g, args = m.capture(True, "jax", 1, lr=0.1)
    exe, got = run_and_check_kernels(partition(g, Mesh(dp=1)), args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    trips = [_trips(lp, 3, BLOCK) for _, lp in _narrowed(exe)]
    assert len(trips) >= 2 and all(t in ([1, 2, 3], [3, 2, 1]) for t in trips), trips


def test_dot_flops_at_gpu_configs():
    """Compile only, seq 256: at the kernels' GPU configs the attention dots of a causal step
    execute the share of blocks the mask implies; the other dots are dense."""
    m = models.get("gpt2:tiny", seq_len=256, n_layer=1)
    g, _ = m.capture(True, "jax", 1, lr=0.1)
    exe = shardc.compile(partition(g, Mesh(dp=1)))
    f = stats.flops(exe)
    assert f["flops"] < f["dense_flops"] and f["attention_flops"] < f["attention_dense_flops"]
    assert f["dense_flops"] - f["attention_dense_flops"] == pytest.approx(f["flops"] - f["attention_flops"])
    keep, seen = _keep(256), 0
    for k in exe.kernels:
        cfg = k.config(False)
        for n, bounds in k.dot_sites:
            for b in bounds:  # rows are queries where the loop's end narrows (over keys), else keys
                (var,) = {v for side in (b.lo or []) + (b.hi or []) for t in side for _, v, _ in t[0]}
                rows = b.ranges[var]
                want = _needed(keep if b.hi is not None else keep.T, int(cfg[rows.block]), int(cfg[b.block]))
                assert b.trips(cfg)[0] == sum(want), (k.name, b.var)
                seen += 1
    assert seen >= 4


# ---------------------------------------------------------------------------------- Pallas
def test_pallas_attention_steps_skip_causal_blocks():
    """Seq 384 in blocks of 128 rows: the grid steps of the dQ (over keys) and dK/dV (over queries)
    matmuls and of flash attention's key axis run only where the causal mask leaves a score (their
    inputs' block indices clamped to the blocks that run), every kernel equals numpy and lowers for
    TPU."""
    g, args = _attention(384)
    with vmem_budget(100_000):
        exe, got = run_and_check(partition(g, Mesh(dp=1)), args, 1e-5)
    for a, b in zip(got, g.evaluate(*args)):
        assert rel_err(a, b) <= 1e-5
    guarded = [k for k in exe.kernels if "def _step" in k.source]
    assert len(guarded) == 2, [k.name for k in exe.kernels]
    # a skipped step's inputs are the block its neighbour reads (no fetch): clamped index maps
    assert all("lax.min(lax.max(" in k.source for k in guarded)
    for k in guarded:  # 128-row blocks over K blocks of 8: rows i see K blocks below 128·(i+1)
        (_, (frac,)), *_ = k.dot_sites
        grid = eval(re.search(r"GRID = (.*)", k.source).group(1))
        assert frac.value == pytest.approx(2 / 3), (k.name, grid)
    export_all(exe.kernels)
    import jax.numpy as jnp
    from shardc.models.jax_models import causal_attention
    q, k, v = args[:3]  # inference: query and key blocks capped (MASKED_BLOCK) at the default budget
    exe, got = run_and_check(partition(shardc.from_jax(causal_attention, q, k, v), Mesh(dp=1)), (q, k, v), 1e-5)
    assert rel_err(got[0], causal_attention(q, k, v)) <= 1e-5
    (att,) = [k for k in exe.kernels if k.kind == "attention"]
    grid = eval(re.search(r"GRID = (.*)", att.source).group(1))
    bq, bk = 384 // grid[-2], 384 // grid[-1]  # (query blocks, key blocks) last on the grid
    want = sum(_needed(_keep(384), bq, bk)) / (grid[-2] * grid[-1])
    assert "def _step" in att.source and want < 1 and att.dot_sites[0][1][0].value == pytest.approx(want), grid
    export_all(exe.kernels)


@pytest.mark.slow
def test_narrowed_kernels_compile_for_hopper():
    """The kernels with narrowed loops (the backward's matmuls, looped row statistics, the flash
    template), f32 and bf16, compile for sm_90 at their GPU configs and at small blocks."""
    import jax.numpy as jnp
    from shardc.models.jax_models import causal_attention
    from shardc.models.jax_models import causal_attention
    kernels = []
    for bf16 in (False, True):
        g, args = _attention(200, bf16=bf16)
        kernels += [k for k, _ in _narrowed(shardc.compile(partition(g, Mesh(dp=1))))]
        q, k, v = args[:3]
        kernels += [k for k, _ in _narrowed(shardc.compile(partition(shardc.from_jax(causal_attention, q, k, v),
                                                                     Mesh(dp=1))))]
    assert len(kernels) >= 6
    for k, r in zip(kernels, compile_for_gpu(kernels)):
        assert ".target sm_90" in r["ptx"] and r["cubin_bytes"] > 0, k.name
