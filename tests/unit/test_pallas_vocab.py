"""Pallas kernels over a whole vocabulary at real sizes: a dim that no legal TPU block divides
(GPT-2's 50,257 = 29·1733) is tiled in padded blocks (a cdiv grid whose last block overhangs the
array: reads past the end are garbage, masked where the kernel reduces over the dim; writes past
the end are dropped). Each kernel equals numpy of its IR nodes in interpret mode and lowers for TPU."""

import numpy as np
import pytest

from shardc import DType, Op
from shardc.ir import GraphBuilder
from shardc.kernels import pallas_templates
from test_codegen_pallas import _check


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))
    monkeypatch.delenv("SHARDC_PALLAS_TPU", raising=False)


def test_padded_blocks_are_aligned_powers_of_two_below_the_size():
    assert pallas_templates.legal_blocks(2053, [(1, 4)]) == [2053]
    assert pallas_templates.padded_blocks(2053, [(1, 4), (0, 2)]) == [2048, 1024, 512, 256, 128]
    assert pallas_templates.padded_blocks(50257, [(1, 2)])[:2] == [32768, 16384]


def test_parallel_dim_no_block_divides_is_tiled_with_an_overhanging_edge_block(rng, monkeypatch):
    """A weight gradient [V, d] (V = 2053, prime) with an SGD epilogue, and a pointwise kernel on
    [V, 128]: V in padded blocks, the last one past the end; equal to numpy, lowering for TPU."""
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 256 * 1024)
    v, t, d = 2053, 64, 128
    b = GraphBuilder()
    w = b.parameter("w", (v, d), DType.f32)
    dy, x = b.parameter("dy", (t, v), DType.f32), b.parameter("x", (t, d), DType.f32)
    dw = b.add(Op.DOT_GENERAL, [b.add(Op.TANH, [dy]), x], lhs_contract=(0,), rhs_contract=(0,))
    upd = b.add(Op.SUB, [w, b.add(Op.MUL, [dw, b.constant(0.1, DType.f32, (v, d))])])
    g = b.build([upd, b.add(Op.EXP, [b.add(Op.TANH, [w])])])
    exe = _check(g, rng.standard_normal((v, d)).astype(np.float32), rng.standard_normal((t, v)).astype(np.float32),
                 rng.standard_normal((t, d)).astype(np.float32), tol=1e-5)
    for k in exe.kernels:  # V tiled: a cdiv grid, the last block overhanging the array
        blk = _vocab_block(k, v)
        assert v % blk and k.module(True).GRID[0] == -(-v // blk) >= 2, (k.name, k.module(True).GRID)


def _vocab_block(k, v):
    """The block of the vocabulary dim in kernel k: the first dim of a [V, ...] input's BlockSpec."""
    import re
    (i,) = [i for i, x in enumerate(k.inputs) if x.shape[0] == v][:1]
    specs = re.findall(r"pl\.BlockSpec\(\((\d+)", k.source.split("in_specs=")[1])
    return int(specs[i])


def test_contraction_no_block_divides_accumulates_over_padded_blocks_masked(rng, monkeypatch):
    """The LM head's dX = dlogits·W over a vocabulary of 1,000 (no multiple of 128 divides it):
    K in padded blocks on an "arbitrary" axis, the overhang of both operands masked to 0 (the
    garbage read past the end may be NaN: here the rebuilt operand is exp of it), equal to numpy."""
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 256 * 1024)
    v, t, d = 1000, 64, 128
    b = GraphBuilder()
    p, w = b.parameter("p", (t, v), DType.f32), b.parameter("w", (v, d), DType.f32)
    s = b.parameter("s", (t,), DType.f32)
    a = b.add(Op.MUL, [b.add(Op.EXP, [p]), b.add(Op.BROADCAST, [s], shape=(t, v), dims=(0,))])
    g = b.build([b.add(Op.DOT_GENERAL, [a, w], lhs_contract=(1,), rhs_contract=(0,))])
    exe = _check(g, rng.standard_normal((t, v)).astype(np.float32), rng.standard_normal((v, d)).astype(np.float32),
                 rng.standard_normal(t).astype(np.float32), tol=1e-5)
    (k,) = exe.kernels
    blk = _vocab_block(k, v)
    assert v % blk and "'arbitrary'" in k.source and k.module(True).GRID[-1] == -(-v // blk) >= 2
    assert "jnp.where(" in k.source


def test_loss_statistics_are_an_online_log_sum_exp_over_padded_vocabulary_blocks(rng, monkeypatch):
    """max y and Σexp(y - max y) over a vocabulary of 1,000 (y = x·Wᵀ), and the log-sum-exp
    from them: the vocabulary on an "arbitrary" axis of padded blocks (the overhang masked to -inf
    for the max, 0 for the sum), a running max and a rescaled running sum in VMEM; equal to numpy."""
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 48 * 1024)
    v, t, d = 1000, 64, 128
    b = GraphBuilder()
    x, w = b.parameter("x", (t, d), DType.f32), b.parameter("w", (v, d), DType.f32)
    y = b.add(Op.DOT_GENERAL, [x, w], lhs_contract=(1,), rhs_contract=(1,))
    m = b.add(Op.REDUCE_MAX, [y], axes=(1,))
    e = b.add(Op.EXP, [b.add(Op.SUB, [y, b.add(Op.BROADCAST, [m], shape=(t, v), dims=(0,))])])
    s = b.add(Op.REDUCE_SUM, [e], axes=(1,))
    g = b.build([m, s, b.add(Op.ADD, [m, b.add(Op.LOG, [s])])])
    exe = _check(g, 3 * rng.standard_normal((t, d)).astype(np.float32), rng.standard_normal((v, d)).astype(np.float32),
                 tol=1e-5)
    (k,) = [k for k in exe.kernels if "jnp.max(" in k.source]  # (the logits here stored by their matmul)
    blk = int(k.source.split("in_specs=[pl.BlockSpec((")[1].split(")")[0].split(", ")[1])
    assert v % blk and k.module(True).GRID[-1] == -(-v // blk) >= 2 and "-jnp.inf" in k.source, k.source


def test_embedding_gather_adds_up_over_row_blocks_of_its_table(rng, monkeypatch):
    """An embedding lookup whose table (2,053 rows: no legal block divides it) is tiled as an
    "arbitrary" axis: each step adds the rows its block holds (a one-hot over the block's global
    rows); indices out of range clamp as the gather does; equal to numpy."""
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 256 * 1024)
    v, t, d = 2053, 48, 128
    b = GraphBuilder()
    table, idx = b.parameter("table", (v, d), DType.f32), b.parameter("idx", (t,), DType.i32)
    pos = b.parameter("pos", (t, d), DType.f32)
    emb = b.add(Op.GATHER, [table, idx], axis=0)
    g = b.build([b.add(Op.TANH, [b.add(Op.ADD, [emb, pos])])])
    ind = rng.integers(-2, v + 2, t).astype(np.int32)
    ind[:3] = [0, v - 1, 1500]
    exe = _check(g, rng.standard_normal((v, d)).astype(np.float32), ind, rng.standard_normal((t, d)).astype(np.float32))
    (k,) = exe.kernels
    blk = _vocab_block(k, v)
    assert v % blk and k.module(True).GRID[-1] == -(-v // blk) >= 2 and "'arbitrary'" in k.source


def test_table_rows_tiled_beside_a_sum_read_at_the_last_step(rng, monkeypatch):
    """A scatter-add whose updates are summed over row blocks (known at the last step only) into
    table rows tiled in blocks: the last step's one-hot reads its grid place from the body (a
    pl.program_id under pl.when does not run in interpret mode); equal to numpy."""
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 32 * 1024)
    v, r, t, d = 24, 64, 32, 128  # (v·d <= t·d: the sum is read by nothing larger)
    b = GraphBuilder()
    table, x = b.parameter("table", (v, d), DType.f32), b.parameter("x", (r, t, d), DType.f32)
    idx = b.parameter("idx", (t,), DType.i32)
    upd = b.add(Op.REDUCE_SUM, [b.add(Op.TANH, [x])], axes=(0,))
    g = b.build([b.add(Op.SCATTER, [table, idx, upd], axis=0)])
    ind = rng.integers(0, v, t).astype(np.int32)
    exe = _check(g, rng.standard_normal((v, d)).astype(np.float32), rng.standard_normal((r, t, d)).astype(np.float32),
                 ind, tol=1e-5)
    assert any("pid0 = pl.program_id(0)" in k.source and "'arbitrary'" in k.source for k in exe.kernels), \
        [k.source for k in exe.kernels]
