"""Pallas kernels and a TPU core's VMEM (codegen/vmem.py): each kernel's footprint (its BlockSpec
blocks double-buffered plus scratch, padded to Mosaic's tiles) is what its pallas_call allocates;
a kernel above the generation's default scoped limit carries vmem_limit_bytes and one that fits
nowhere is a shardc.Error naming it; a norm backward's column sums (dγ, dβ and their SGD update)
are added up over row blocks on an "arbitrary" grid axis, equal to numpy of their IR nodes and
lowering for TPU; and at GPT-2-small widths (768 wide, 12 heads, 1,024 tokens) every kernel of
the training step fits TPU v5p and v5e."""

import numpy as np
import pytest

import shardc
from shardc import DType, Mesh, Op, models, partition
from shardc.analysis import hardware
from shardc.codegen import pallas, pallas_fit, vmem
from shardc.codegen.vmem import MiB, VmemUse
from shardc.ir import GraphBuilder
from shardc.kernels import pallas_templates
from test_codegen_pallas import _check, export_all


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))
    monkeypatch.delenv("SHARDC_PALLAS_TPU", raising=False)


def test_tpu_presets_carry_their_vmem_and_default_limit():
    got = {n: (hardware.get(n).vmem_bytes // MiB, hardware.get(n).scoped_vmem_bytes // MiB)
           for n in ("tpu-v5e", "tpu-v5p", "tpu-v6e")}
    assert got == {"tpu-v5e": (128, 16), "tpu-v5p": (64, 16), "tpu-v6e": (128, 32)}
    assert hardware.get("h100").vmem_bytes == 0
    assert vmem.target().name == "tpu-v5p"


def test_footprint_is_double_buffered_blocks_plus_scratch_in_mosaic_tiles():
    # f32 (8, 128) tiles: a (3, 200) block takes (8, 256); bf16 (16, 128): a (1, 128) row takes 16 rows
    assert vmem.padded_bytes((3, 200), 4) == 8 * 256 * 4
    assert vmem.padded_bytes((1, 128), 2) == 16 * 128 * 2
    assert vmem.padded_bytes((2, 5, 8, 128), 4) == 10 * 8 * 128 * 4
    use = VmemUse((((8, 256), 4), ((1, 256), 2)), (((8, 256), 4),))
    assert use.nbytes == 2 * (8 * 256 * 4 + 16 * 256 * 2) + 8 * 256 * 4


def _pallas_call_buffers(k):
    """(block shapes, scratch shapes) as jax's own pallas_call holds them (traced, not read from
    shardc's description)."""
    import jax
    jaxpr = jax.make_jaxpr(pallas._module(k).build(interpret=True))(*pallas.shape_dtype_structs(k))
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "pallas_call"]
    gm = eqn.params["grid_mapping"]
    blocks = [tuple(int(d) for d in pallas_block(bm)) for bm in gm.block_mappings]
    scratch = [tuple(v.aval.shape) for v in eqn.params["jaxpr"].invars[-gm.num_scratch_operands:]] \
        if gm.num_scratch_operands else []
    return blocks, scratch


def pallas_block(bm):
    return [getattr(d, "block_size", d) for d in bm.block_shape]


def _norm_backward(rows: tuple, d: int, dtype=DType.f32):
    """A layer norm's backward over `rows` x d: dx (row sums over d), dγ = Σ_rows dy·x̂ and
    dβ = Σ_rows dy, and SGD updates of γ and β from them (lr 0.1)."""
    b = GraphBuilder()
    shape = (*rows, d)
    nr = len(rows)
    xh, dy = b.parameter("xhat", shape, dtype), b.parameter("dy", shape, dtype)
    g, beta = b.parameter("gamma", (d,), dtype), b.parameter("beta", (d,), dtype)
    dyg = b.add(Op.MUL, [dy, b.add(Op.BROADCAST, [g], dims=(nr,), shape=shape)])
    s = b.add(Op.REDUCE_SUM, [b.add(Op.MUL, [dyg, xh])], axes=(nr,))
    dx = b.add(Op.SUB, [dyg, b.add(Op.MUL, [b.add(Op.BROADCAST, [s], dims=tuple(range(nr)), shape=shape), xh])])
    lr = b.constant(0.1, dtype, (d,))
    dgamma = b.add(Op.REDUCE_SUM, [b.add(Op.MUL, [dy, xh])], axes=tuple(range(nr)))
    dbeta = b.add(Op.REDUCE_SUM, [dy], axes=tuple(range(nr)))
    return b.build([dx, b.add(Op.SUB, [g, b.add(Op.MUL, [lr, dgamma])]),
                    b.add(Op.SUB, [beta, b.add(Op.MUL, [lr, dbeta])])])


@pytest.mark.parametrize("rows,d", [((3, 40), 256)])
def test_column_sums_accumulate_over_row_blocks(rng, monkeypatch, rows, d):
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 48 * 1024)  # forces several row blocks
    shape = (*rows, d)
    exe = _check(_norm_backward(rows, d), *(rng.standard_normal(s).astype(np.float32)
                                             for s in (shape, shape, (d,), (d,))))
    (k,) = exe.kernels  # dx, both column sums and both updates: one kernel
    assert "'arbitrary'" in k.source and "acc0_ref" in k.source and int(np.prod(k.module(True).GRID)) >= 3, k.source
    blocks, scratch = _pallas_call_buffers(k)
    assert blocks == [s for s, _ in k.vmem.blocks] and scratch == [s for s, _ in k.vmem.scratch]


def test_half_column_sums_round_once(rng, monkeypatch):
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 64 * 1024)
    shape = (96, 256)
    args = [rng.standard_normal(s).astype(np.float32) for s in (shape, shape, (256,), (256,))]
    exe = _check(_norm_backward((96,), 256, DType.bf16), *args, tol=1e-2)
    assert any("acc0_ref" in k.source for k in exe.kernels)


def _row_max(cols: int):
    """An int32 row max (a float one is a running max over column blocks: test_pallas_vocab.py)."""
    b = GraphBuilder()
    x = b.parameter("x", (8, cols), DType.i32)
    return partition(b.build([b.add(Op.REDUCE_MAX, [x], axes=(1,))]), Mesh(dp=1))


def test_limit_above_the_default_and_an_error_where_nothing_fits(monkeypatch):
    # an untileable 8 x 2^19 i32 row (16 MiB a block): above v5p's default, within its VMEM
    (k,) = shardc.compile(_row_max(1 << 19), target="pallas").kernels
    assert 32 * MiB < k.vmem.nbytes < vmem.max_bytes(hardware.get("tpu-v5p"))
    assert f"vmem_limit_bytes={43 * MiB}" in k.source, k.source  # 32.01 MiB over 3/4, rounded up to a MiB
    export_all([k])
    # 8 x 2^21 (64 MiB a block) fits no TPU core: refused, naming the kernel, unless unchecked
    with pytest.raises(shardc.Error, match=r"reduction kernel for 'reduction: reduce_max'.*128\.0 MiB.*tpu-v5p"):
        shardc.compile(_row_max(1 << 21), target="pallas")
    monkeypatch.setenv("SHARDC_PALLAS_TPU", "none")
    (k,) = shardc.compile(_row_max(1 << 21), target="pallas").kernels
    assert k.vmem.nbytes > 128 * MiB and "vmem_limit_bytes" not in k.source
    monkeypatch.setenv("SHARDC_PALLAS_TPU", "h100")
    with pytest.raises(shardc.Error, match="not a TPU"):
        shardc.compile(_row_max(64), target="pallas")


def test_gpt2_small_width_training_step_fits_tpu_vmem():
    """GPT-2 small's widths (768, 12 heads, 1,024 tokens, batch 1, bf16), one layer, codegen
    only, written for v5p; v5e has the same default limit and twice the VMEM. The vocabulary is
    GPT-2's own 50,257 (no legal block divides it): the LM head's kernels, the loss statistics
    (an online log-sum-exp) and the embedding lookup tile it in padded blocks
    (test_pallas_vocab.py checks each against numpy)."""
    m = models.get("gpt2:small", n_layer=1, vocab_size=50257)
    g, _ = m.capture(True, "jax", 1, lr=0.1, shape_only=True)
    kernels = {k.name: k for k in shardc.compile(partition(g, Mesh(dp=1)), target="pallas").kernels}.values()
    for hw in (hardware.get("tpu-v5p"), hardware.get("tpu-v5e")):
        assert all(k.vmem.nbytes <= vmem.max_bytes(hw) for k in kernels)
    hw = hardware.get("tpu-v5p")
    for k in kernels:  # above the default limit exactly where the source raises it
        assert ("vmem_limit_bytes" in k.source) is (not vmem.default_fits(k.vmem.nbytes, hw)), k.name
    sums = [k for k in kernels if "acc0_ref" in k.source]  # the norm backwards' dγ/dβ kernels
    assert len(sums) >= 2 and all(vmem.default_fits(k.vmem.nbytes, hw) and "'arbitrary'" in k.source for k in sums)
    vocab = [k for k in kernels if any(50257 in x.shape for x in k.inputs)]
    assert len(vocab) >= 3 and all(k.module(True).GRID != (1,) for k in vocab)  # the vocabulary tiled
    assert any("-jnp.inf" in k.source and "jnp.exp(m" in k.source for k in vocab)  # the online log-sum-exp
    export_all([k for k in kernels if "vmem_limit_bytes" in k.source or k in sums or k in vocab])


def test_scatter_add_tiles_its_table_rows(rng, monkeypatch):
    """An embedding gradient's scatter-add: the table's rows in blocks, each taking the updates
    whose (global) indices fall in it; out-of-range indices dropped, repeated ones summed."""
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 48 * 1024)
    v, t, d = 120, 50, 128
    b = GraphBuilder()
    table, upd = b.parameter("table", (v, d), DType.f32), b.parameter("upd", (t, d), DType.f32)
    idx = b.parameter("idx", (t,), DType.i32)
    g = b.build([b.add(Op.SCATTER, [table, idx, b.add(Op.TANH, [upd])], axis=0)])
    ind = rng.integers(-3, v + 3, t).astype(np.int32)
    ind[:4] = [7, 7, v - 1, 0]
    exe = _check(g, rng.standard_normal((v, d)).astype(np.float32), rng.standard_normal((t, d)).astype(np.float32), ind)
    (k,) = exe.kernels
    assert k.vmem.blocks[-1][0][0] < v and "pl.program_id(0) * " in k.source, k.source


def test_dot_operands_sharing_rope_tables_are_read_apart_where_that_fits_better(rng, monkeypatch):
    """Over the default limit (made 1 KiB here), a matmul kernel whose rebuilt QKᵀ builds Q and K
    from the same RoPE tables (the attention backward's) is emitted again with K's side computing
    its own copies, an input both sides read passed twice: the keys become a grid axis and that
    smaller kernel is kept. Llama tiny's training step, 128 wide, 256 tokens: such a kernel equals
    numpy of its IR nodes on fresh inputs and lowers for TPU."""
    import dataclasses
    monkeypatch.setattr(pallas_templates, "VMEM_BUDGET", 64 * 1024)
    monkeypatch.setenv("SHARDC_PALLAS_TPU", "none")
    monkeypatch.setattr(pallas_fit, "hardware_default", lambda: dataclasses.replace(
        hardware.get("tpu-v5p"), scoped_vmem_bytes=1024))
    m = models.get("llama:tiny", seq_len=256, d_model=128, n_layer=1)
    g, _ = m.capture(True, "jax", 1, lr=0.1, shape_only=True, dtype="f32")
    prog = partition(g, Mesh(dp=1))
    twice = [k for k in shardc.compile(prog, target="pallas").kernels if len(set(k.inputs)) < len(k.inputs)]
    assert twice and all(k.kind == "matmul" for k in twice)
    k = twice[0]
    plain = pallas.EMITTERS[k.kind](k.group, "plain")  # Q's and K's tables computed once
    assert k.vmem.nbytes < plain.vmem.nbytes and np.prod(k.module(True).GRID) > np.prod(plain.grid)
    env = {x: rng.standard_normal(x.shape).astype(np.float32) if x.dtype.is_float
           else rng.integers(0, 16, x.shape).astype(x.dtype.np) for x in k.inputs}
    got = pallas.launch(k, [env[x] for x in k.inputs], [])
    for o, r in zip(got, k.reference(env, prog.mesh.coords(0))):
        assert np.abs(o - r).max() <= 1e-5 * np.abs(r).max(), (k.name, np.abs(o - r).max())
    monkeypatch.delenv("SHARDC_PALLAS_TPU")
    export_all([k])
