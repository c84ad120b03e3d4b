"""Row kernels: a 2-D tile over (rows, cols) of a fused elementwise chain, or a row reduction
(softmax, layer norm, RMSNorm, cross-entropy) with its prologue and epilogue.

Rows of up to `MAX_ROW_TILE` elements: one tile holds whole rows (cols = the reduced elements), so
every reduction of the group is computed on chip from one load. Longer rows (large vocabularies)
use `LOOPED_TEMPLATE`: each program owns BM rows; every reduction is its own loop over the row in
BN-element chunks (a reduction that needs another's result, as a variance needs the mean, loops
after it), then one more loop computes and stores the outputs chunk by chunk.

Rows that rebuild a recomputed dot with batch dims (attention scores per batch·head) put those
dims on the grid's last axis (`pid_b`): every program's rows then share one batch index, so the
scores tile is one `tl.dot` of a query block and a key block."""

# the longest row one tile holds (elements); longer rows loop. Tests lower it to force the loop.
MAX_ROW_TILE = 8192

# One program's tile: rows rm and columns rn, at grid place (pid_m, pid_n, pid_b). The kernels
# below take the place from their own grid; a multi-tensor launch (codegen/fused_multi.py) calls
# the tile as a function (MEMBER) with the place its program-id range gives it.
TILE = '''    rm = pid_m * BM + tl.arange(0, BM)[:, None]
    rn = pid_n * BN + tl.arange(0, BN)[None, :]
    mask_rm = rm < {rows}
    mask_rn = rn < {cols}
{body}
'''

LOOPED_TILE = '''    rm = pid_m * BM + tl.arange(0, BM)[:, None]
    mask_rm = rm < {rows}
{pre}
    for rn0 in range(0, {cols}, BN):
        rn = rn0 + tl.arange(0, BN)[None, :]
        mask_rn = rn < {cols}
{body}
{post}
'''

_KERNEL = '''
@triton.jit
def {name}({params}BM: tl.constexpr, BN: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
{pid_b}'''

TEMPLATE = _KERNEL + TILE + '''

def launch(args, cfg):
{init}    grid = (triton.cdiv({rows}, cfg["BM"]), triton.cdiv({cols}, cfg["BN"]){grid_b})
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], num_warps=cfg.get("num_warps", 4))
'''

LOOPED_TEMPLATE = _KERNEL + LOOPED_TILE + '''

def launch(args, cfg):
    grid = (triton.cdiv({rows}, cfg["BM"]),{grid_b})
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], num_warps=cfg.get("num_warps", 4))
'''

MEMBER = '''
@triton.jit
def {name}(pid_m, pid_n, pid_b, {params}BM: tl.constexpr, BN: tl.constexpr):
'''


# (rows per program, elements per row-tile, warps): a reduction's BN must cover the whole row;
# a looped reduction's BN is its chunk
TUNING = {
    "pointwise": [dict(BM=bm, BN=bn, num_warps=w) for bm, bn, w in
                  [(8, 128, 4), (16, 128, 4), (32, 64, 4), (4, 256, 4), (1, 1024, 4)]],
    "reduction": [dict(BM=bm, num_warps=w) for bm, w in [(1, 4), (2, 4), (4, 8), (8, 8)]],
    "looped": [dict(BM=bm, BN=bn, num_warps=w) for bm, bn, w in
               [(1, 2048, 8), (1, 4096, 8), (2, 1024, 4), (4, 512, 4), (1, 1024, 4)]],
}


def fits_one_tile(cols: int) -> bool:
    from . import next_pow2
    return next_pow2(cols) <= MAX_ROW_TILE


def choose(rows: int, cols: int, reduction: bool, interpret: bool) -> dict:
    from . import next_pow2
    if reduction:
        bn = next_pow2(cols)
        budget = 1 << 15 if interpret else 4096
        return dict(BM=max(1, min(next_pow2(rows), budget // bn)), BN=bn, num_warps=4 if bn <= 1024 else 8)
    bn = min(next_pow2(cols), 4096 if interpret else 128)
    budget = 1 << 15 if interpret else 1024
    return dict(BM=max(1, min(next_pow2(rows), budget // bn)), BN=bn, num_warps=4)


def choose_looped(rows: int, cols: int, interpret: bool) -> dict:
    """Rows longer than one tile: the largest chunk that fits under MAX_ROW_TILE (the interpreter
    wants few loop trips) or 2048 elements (a GPU wants registers for several rows' chunks)."""
    from . import next_pow2
    bn = min(next_pow2(cols), MAX_ROW_TILE if interpret else min(2048, MAX_ROW_TILE))
    budget = 1 << 15 if interpret else 2048
    return dict(BM=max(1, min(next_pow2(rows), budget // bn)), BN=bn, num_warps=8 if bn >= 1024 else 4)
