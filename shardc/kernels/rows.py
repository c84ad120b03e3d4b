"""Row kernels: a 2-D tile over (rows, cols) of a fused elementwise chain, or a row reduction
(softmax, layer norm, RMSNorm, cross-entropy) with its prologue and epilogue, where one tile holds
whole rows (cols = the reduced elements) so every reduction of the group is computed on chip."""

TEMPLATE = '''
@triton.jit
def {name}({params}BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    rn = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    mask_rm = rm < {rows}
    mask_rn = rn < {cols}
{body}


def launch(args, cfg):
    grid = (triton.cdiv({rows}, cfg["BM"]), triton.cdiv({cols}, cfg["BN"]))
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], num_warps=cfg.get("num_warps", 4))
'''

# (rows per program, elements per row-tile, warps): a reduction's BN must cover the whole row
TUNING = {
    "pointwise": [dict(BM=bm, BN=bn, num_warps=w) for bm, bn, w in
                  [(8, 128, 4), (16, 128, 4), (32, 64, 4), (4, 256, 4), (1, 1024, 4)]],
    "reduction": [dict(BM=bm, num_warps=w) for bm, w in [(1, 4), (2, 4), (4, 8), (8, 8)]],
}


def choose(rows: int, cols: int, reduction: bool, interpret: bool) -> dict:
    from . import next_pow2
    if reduction:
        bn = next_pow2(cols)
        budget = 1 << 15 if interpret else 4096
        return dict(BM=max(1, min(next_pow2(rows), budget // bn)), BN=bn, num_warps=4 if bn <= 1024 else 8)
    bn = min(next_pow2(cols), 4096 if interpret else 128)
    budget = 1 << 15 if interpret else 1024
    return dict(BM=max(1, min(next_pow2(rows), budget // bn)), BN=bn, num_warps=4)
