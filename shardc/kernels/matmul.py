"""Tiled matmul (batched dot_general) with hooks: `{load_a}` / `{load_b}` compute the operand tiles
(prologue: casts, scales and layout ops are index arithmetic), `{epilogue}` turns the f32
accumulator into the stored outputs (bias, activation, residual add, cast). Operands go to tl.dot
as DT (bf16/f16 on a GPU: tensor cores, wgmma on Hopper; f32 on the interpreter) with f32
accumulation.

Grid order: one program per output tile on a 1-D grid (times the batch), tiles taken GM rows of
tiles at a time (Triton's grouped ordering): programs running together share GM row-blocks of A
and a band of B in L2. GM=1 is plain row-major order.

A normalized operand (layer norm, RMSNorm of a materialized residual) is computed on the fly: the
`{prologue}` computes each row's statistics before the K loop (each reduction a loop over the row,
RB elements at a time) and `{load_a}` normalizes the tile it loads, so the normalized activations
never reach memory.

The K loop runs over `[{k_start}, {k_end})`: the whole of K, or, where the operands are masked (a
causal dS or P whose K is the keys or the queries), the blocks the program's rows can reach
(codegen/masked_blocks.py), starting at a multiple of BK."""

TEMPLATE = '''
@triton.jit
def {name}({params}BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, GM: tl.constexpr):
    pid_b = tl.program_id(1)
    pid = tl.program_id(0)
    in_group = GM * tl.cdiv({N}, BN)
    first_m = (pid // in_group) * GM
    group_rows = tl.minimum(tl.cdiv({M}, BM) - first_m, GM)
    pid_m = first_m + (pid % in_group) % group_rows
    pid_n = (pid % in_group) // group_rows
    rm = pid_m * BM + tl.arange(0, BM)[:, None]
    rn = pid_n * BN + tl.arange(0, BN)[None, :]
    mask_rm = rm < {M}
    mask_rn = rn < {N}
    acc = tl.zeros((BM, BN), dtype={acc_t})
{prologue}
    for k0 in range({k_start}, {k_end}, BK):
        rka = k0 + tl.arange(0, BK)[None, :]
        rkb = k0 + tl.arange(0, BK)[:, None]
        mask_rka = rka < {K}
        mask_rkb = rkb < {K}
{load_a}
{load_b}
        a = tl.where(mask_rka, {a}, {zero})
        b = tl.where(mask_rkb, {b}, {zero})
        {dot}
{epilogue}


def launch(args, cfg):
{init}    grid = (triton.cdiv({M}, cfg["BM"]) * triton.cdiv({N}, cfg["BN"]), {B})
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], RB=cfg.get("RB", 64), DT=_DT[cfg["DT"]], PREC=cfg["PREC"],
                 GM=cfg.get("GM", 1),
                 num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3))
'''

# tiles (BM, BN, BK), warps, pipeline stages, and the grid order GM (rows of tiles per group)
TUNING = [dict(BM=bm, BN=bn, BK=bk, num_warps=w, num_stages=s, GM=gm) for bm, bn, bk, w, s in
          [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 32, 4, 4),
           (128, 256, 64, 8, 3)] for gm in (8, 1)]


def row_block(k: int, bm: int, interpret: bool) -> int:
    """RB: elements of a row per step of a prologue's row-statistics loop (BM x RB in registers)."""
    from . import next_pow2
    return max(16, min(next_pow2(k), 4096 if interpret else max(16, 8192 // bm)))


def choose(m: int, n: int, k: int, dtype: str, interpret: bool) -> dict:
    """dtype: the operands' storage type ("f32", "bf16", "f16")."""
    from . import next_pow2
    clamp = lambda x, hi: max(16, min(next_pow2(x), hi))
    if interpret:  # one program per output tile as large as practical, f32 dot (exact on CPU)
        if dtype in ("i32", "i64"):
            cfg = dict(BM=clamp(m, 64), BN=clamp(n, 64), BK=clamp(k, 64), DT="fp32", PREC="ieee")
        else:
            cfg = dict(BM=clamp(m, 128), BN=clamp(n, 256), BK=clamp(k, 256), DT="fp32", PREC="ieee")
    elif dtype in ("i32", "i64"):  # broadcast-sum dot: keep the BM x BK x BN product small
        cfg = dict(BM=clamp(m, 32), BN=clamp(n, 32), BK=16, DT="fp32", PREC="ieee", num_warps=4)
    else:
        half = dtype in ("bf16", "f16")
        # Hopper's wgmma works on 64-row warpgroup tiles: never smaller, even for tiny shapes
        cfg = dict(BM=max(64, clamp(m, 128)), BN=max(32, clamp(n, 128)), BK=max(32, clamp(k, 64 if half else 32)),
                   DT={"bf16": "bf16", "f16": "fp16"}.get(dtype, "fp32"), PREC="tf32" if half else "ieee",
                   num_warps=8 if m >= 128 and n >= 128 else 4, num_stages=3)
    cfg["GM"] = 1 if interpret else 8
    cfg["RB"] = row_block(k, cfg["BM"], interpret)
    return cfg
