"""Grouped matmul (ragged_dot: mixture-of-experts layers) over value-sized groups, Triton and
Pallas. The group sizes are read in the kernel; each group's start is the sum of the sizes
before it.

rows mode (the forward: lhs [M, K] with its rows in groups, rhs [G, K, N]): a 3-D grid of
(row tile, column tile, group); each program multiplies the rows of its group that fall in its
row tile by that group's matrix. A group has at most M rows, so cdiv(M, BM) row tiles per group
cover it; tiles past a group's end do nothing (on a GPU a persistent kernel would schedule only
the live tiles). Rows in no group stay as the launcher zeroed them.

contract mode (a weight gradient: lhs [M, K], rhs [K, N] with K in groups → [G, M, N]): one
program per output tile and group, its K loop over that group's rows only.

An optional group offset (an expert-parallel device's first expert) shifts which of the sizes
the G local groups are.

Pallas (TPU) walks a table of visits made from the sizes (megablox's way, see PALLAS_ROWS and
PALLAS_CONTRACT): one (row tile, group) or (group, K tile) pair per grid step."""

TRITON_ROWS = '''
@triton.jit
def {name}(lhs, rhs, sizes, {off_param}out, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    gi = g + {offset}
    ids = tl.arange(0, {GP})
    sz = tl.maximum(tl.load(sizes + ids, mask=ids < {GT}, other=0).to(tl.int32), 0)
    start = tl.minimum(tl.sum(tl.where(ids < gi, sz, 0)), {M})
    end = tl.minimum(start + tl.sum(tl.where(ids == gi, sz, 0)), {M})
    if start + pid_m * BM < end:
        rm = start + pid_m * BM + tl.arange(0, BM)[:, None]
        rn = pid_n * BN + tl.arange(0, BN)[None, :]
        mask_rm = rm < end
        mask_rn = rn < {N}
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, {K}, BK):
            rka = k0 + tl.arange(0, BK)[None, :]
            rkb = k0 + tl.arange(0, BK)[:, None]
            a = tl.load(lhs + rm * {K} + rka, mask=mask_rm & (rka < {K}), other=0.0).to(tl.float32)
            b = tl.load(rhs + g * {KN} + rkb * {N} + rn, mask=(rkb < {K}) & mask_rn, other=0.0).to(tl.float32)
            acc += tl.dot(a.to(DT), b.to(DT), input_precision=PREC)
{round}
        tl.store(out + rm * {N} + rn, acc.to(out.dtype.element_ty), mask=mask_rm & mask_rn)


def launch(args, cfg):
    args[-1].zero_()  # rows in no group
    grid = (triton.cdiv({M}, cfg["BM"]), triton.cdiv({N}, cfg["BN"]), {G})
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], DT=_DT[cfg["DT"]], PREC=cfg["PREC"],
                 num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3))
'''

TRITON_CONTRACT = '''
@triton.jit
def {name}(lhs, rhs, sizes, {off_param}out, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    gi = g + {offset}
    ids = tl.arange(0, {GP})
    sz = tl.maximum(tl.load(sizes + ids, mask=ids < {GT}, other=0).to(tl.int32), 0)
    start = tl.minimum(tl.sum(tl.where(ids < gi, sz, 0)), {K})
    end = tl.minimum(start + tl.sum(tl.where(ids == gi, sz, 0)), {K})
    rm = pid_m * BM + tl.arange(0, BM)[:, None]
    rn = pid_n * BN + tl.arange(0, BN)[None, :]
    mask_rm = rm < {M}
    mask_rn = rn < {N}
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, {K}, BK):
        if start < end:
            rka = start + k0 + tl.arange(0, BK)[None, :]
            rkb = start + k0 + tl.arange(0, BK)[:, None]
            a = tl.load(lhs + rm * {K} + rka, mask=mask_rm & (rka < end), other=0.0).to(tl.float32)
            b = tl.load(rhs + rkb * {N} + rn, mask=(rkb < end) & mask_rn, other=0.0).to(tl.float32)
            acc += tl.dot(a.to(DT), b.to(DT), input_precision=PREC)
{round}
    tl.store(out + g * {MN} + rm * {N} + rn, acc.to(out.dtype.element_ty), mask=mask_rm & mask_rn)


def launch(args, cfg):
    grid = (triton.cdiv({M}, cfg["BM"]), triton.cdiv({N}, cfg["BN"]), {G})
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], DT=_DT[cfg["DT"]], PREC=cfg["PREC"],
                 num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3))
'''

TUNING = [dict(BM=bm, BN=bn, BK=bk, num_warps=w, num_stages=s) for bm, bn, bk, w, s in
          [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (64, 64, 32, 4, 4)]]


def choose(m: int, n: int, k: int, dtype: str, interpret: bool) -> dict:
    from .matmul import choose as matmul_choose
    cfg = matmul_choose(m, n, k, dtype, interpret)
    return {key: cfg[key] for key in ("BM", "BN", "BK", "DT", "PREC", "num_warps", "num_stages") if key in cfg}


# Pallas (TPU), rows mode, tiled as megablox does: the grid walks (column tile, visit), a visit
# being one (row tile, group) pair that share rows, in row order. The visit table is made from the
# sizes in the wrapper (jnp) and scalar-prefetched: each row tile is visited once per group that
# touches it (once if none: rows in no group are zeroed); consecutive visits of a tile keep its
# output block in VMEM (zeroed at the first, each group's rows written under a mask), so a step
# multiplies one [BM, K] tile by one group's [K, BN] block. At most cdiv(M, BM) + G visits.
PALLAS_ROWS = '''
def {name}_kernel(blk_ref, grp_ref, first_ref, bounds_ref, lhs_ref, rhs_ref, out_ref):
    t = pl.program_id(1)
    g = grp_ref[t]
    start, end = bounds_ref[g], bounds_ref[{G} + g]

    @pl.when(first_ref[t] == 1)
    def _zero():
        out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)
    rows = blk_ref[t] * {BM} + lax.broadcasted_iota(jnp.int32, ({BM}, 1), 0)
    mine = (rows >= start) & (rows < end)
    part = jnp.dot(lhs_ref[...].astype(jnp.float32), rhs_ref[0].astype(jnp.float32), preferred_element_type=jnp.float32)
    out_ref[...] = jnp.where(mine, part.astype(out_ref.dtype), out_ref[...])


VISITS = {T}
GRID = ({NT}, VISITS)
IN_SHAPES = [{in_shapes}]
OUT_SHAPES = [{out_shape}]


def visits(sizes, off):
    """(row tile, group, first visit of its tile?) per visit, and the local groups' starts and ends."""
    sz = jnp.maximum(sizes, 0)
    ends = jnp.cumsum(sz)
    idx = off[0] + jnp.arange({G})
    start = jnp.minimum((ends - sz)[idx], {M})
    end = jnp.minimum(ends[idx], {M})
    lo = jnp.arange({NB}) * {BM}
    hi = jnp.minimum(lo + {BM}, {M})
    empty = start == end  # an empty group touches the tile it sits in: each tile's groups stay contiguous
    touch = (start[None, :] < hi[:, None]) & ((end[None, :] > lo[:, None]) | (empty[None, :] & (start[None, :] >= lo[:, None])))
    count = jnp.maximum(touch.sum(1), 1)
    firsts = jnp.cumsum(count) - count
    t = jnp.arange(VISITS)
    blk = jnp.minimum(jnp.searchsorted(jnp.cumsum(count), t, side="right"), {NB} - 1)
    grp = jnp.minimum(jnp.argmax(touch[blk], axis=1) + t - firsts[blk], {G} - 1)
    first = (t == firsts[blk]) & (t < count.sum())
    # visits past the last (the table is static) revisit the last tile: its rows written again
    return (blk.astype(jnp.int32), grp.astype(jnp.int32), first.astype(jnp.int32),
            jnp.concatenate([start, end]).astype(jnp.int32))


def build(interpret=False):
    """The pallas_call; args: lhs, rhs, group sizes[, group offset] at IN_SHAPES."""
    call = pl.pallas_call(
        {name}_kernel,
        out_shape=jax.ShapeDtypeStruct({out_shape}, {out_dtype}),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4, grid=GRID,
            in_specs=[pl.BlockSpec(({BM}, {K}), lambda n, t, b, g, f, s: (b[t], 0)),
                      pl.BlockSpec((1, {K}, {BN}), lambda n, t, b, g, f, s: (g[t], 0, n))],
            out_specs=pl.BlockSpec(({BM}, {BN}), lambda n, t, b, g, f, s: (b[t], n))),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"){limit}),
        interpret=interpret, name="{name}")

    def run(lhs, rhs, sizes, off=None):
        off = jnp.zeros((1,), jnp.int32) if off is None else off.reshape(1).astype(jnp.int32)
        return [call(*visits(sizes.reshape(-1).astype(jnp.int32), off), lhs, rhs)]
    return run
'''


def pallas_rows_tiles(m: int, n: int) -> tuple[int, int]:
    """(BM, BN): row tiles of 128 (or all rows), column tiles of 512 where N is a multiple of 512
    (TPU blocks: multiples of (8, 128) or whole dims)."""
    return (m if m <= 128 else 128), (512 if n > 512 and n % 512 == 0 else n)


# Pallas (TPU), contract mode (a weight gradient), tiled the same way: a visit is one group and
# one K tile it touches, in group order; consecutive visits of a group accumulate in an f32 VMEM
# scratch, stored at the group's last visit (a group with no rows is visited once: zeros). Both
# operands are masked to the group's rows (a partial last tile reads past the array). At most
# cdiv(K, BK) + G visits; visits past the last do nothing.
PALLAS_CONTRACT = '''
def {name}_kernel(kt_ref, grp_ref, flags_ref, bounds_ref, lhs_ref, rhs_ref, out_ref, acc_ref):
    t = pl.program_id(2)
    g, flags = grp_ref[t], flags_ref[t]
    start, end = bounds_ref[g], bounds_ref[{G} + g]

    @pl.when((flags & 1) == 1)
    def _zero():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(flags >= 4)
    def _add():
        k0 = kt_ref[t] * {BK}
        ka = k0 + lax.broadcasted_iota(jnp.int32, (1, {BK}), 1)
        kb = k0 + lax.broadcasted_iota(jnp.int32, ({BK}, 1), 0)
        a = jnp.where((ka >= start) & (ka < end), lhs_ref[...].astype(jnp.float32), 0.0)
        b = jnp.where((kb >= start) & (kb < end), rhs_ref[...].astype(jnp.float32), 0.0)
        acc_ref[...] += jnp.dot(a, b, preferred_element_type=jnp.float32)

    @pl.when((flags & 2) == 2)
    def _store():
        out_ref[0] = acc_ref[...].astype(out_ref.dtype)


VISITS = {T}
GRID = ({MT}, {NT}, VISITS)
IN_SHAPES = [{in_shapes}]
OUT_SHAPES = [{out_shape}]


def visits(sizes, off):
    """(K tile, group, flags: 1 its group's first visit, 2 its last, 4 a live one) per visit, and
    the local groups' starts and ends."""
    sz = jnp.maximum(sizes, 0)
    ends = jnp.cumsum(sz)
    idx = off[0] + jnp.arange({G})
    start = jnp.minimum((ends - sz)[idx], {K})
    end = jnp.minimum(ends[idx], {K})
    first_tile = start // {BK}
    count = jnp.where(end > start, (end - 1) // {BK} - first_tile + 1, 1)
    firsts = jnp.cumsum(count) - count
    t = jnp.arange(VISITS)
    grp = jnp.minimum(jnp.searchsorted(jnp.cumsum(count), t, side="right"), {G} - 1)
    kt = jnp.minimum(first_tile[grp] + t - firsts[grp], {NK} - 1)
    live = t < count.sum()
    nonempty = end[grp] > start[grp]
    flags = live * ((t == firsts[grp]) + 2 * (t == firsts[grp] + count[grp] - 1) + 4 * nonempty)
    return kt.astype(jnp.int32), grp.astype(jnp.int32), flags.astype(jnp.int32), jnp.concatenate([start, end]).astype(jnp.int32)


def build(interpret=False):
    """The pallas_call; args: lhs, rhs, group sizes[, group offset] at IN_SHAPES."""
    call = pl.pallas_call(
        {name}_kernel,
        out_shape=jax.ShapeDtypeStruct({out_shape}, {out_dtype}),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4, grid=GRID,
            in_specs=[pl.BlockSpec(({BM}, {BK}), lambda m, n, t, k, g, f, s: (m, k[t])),
                      pl.BlockSpec(({BK}, {BN}), lambda m, n, t, k, g, f, s: (k[t], n))],
            out_specs=pl.BlockSpec((1, {BM}, {BN}), lambda m, n, t, k, g, f, s: (g[t], m, n)),
            scratch_shapes=[pltpu.VMEM(({BM}, {BN}), jnp.float32)]),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"){limit}),
        interpret=interpret, name="{name}")

    def run(lhs, rhs, sizes, off=None):
        off = jnp.zeros((1,), jnp.int32) if off is None else off.reshape(1).astype(jnp.int32)
        return [call(*visits(sizes.reshape(-1).astype(jnp.int32), off), lhs, rhs)]
    return run
'''


def pallas_contract_tiles(m: int, n: int, k: int) -> tuple[int, int, int]:
    """(BM, BN, BK): the contraction (the routed rows) in tiles of 512 (or whole), the output in
    tiles of 512 where its dims divide (TPU blocks: multiples of (8, 128) or whole dims)."""
    return ((512 if m > 512 and m % 512 == 0 else m), (512 if n > 512 and n % 512 == 0 else n),
            (512 if k > 512 else k))
