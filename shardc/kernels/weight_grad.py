"""Weight kernels (codegen/fused_weights.py): a weight's input gradient dX = dY·Wᵀ, its gradient
dW = Xᵀ·dY and the update in dW's epilogue, one pass over W.

Each program owns BF of W's rows (F: W's dims that dX keeps) and every token (T, one tile) and
loops over W's other dims (C: dX's contraction) BC at a time (`PASS`). Per step it loads the W
tile [BF, BC] and dY's [T, BC] once, adds W·dYᵀ to its dXᵀ block [BF, T], computes dW's tile
Xᵀ·dY = [BF, T]·[T, BC] from the X block it loaded before the loop, and stores what dW's
epilogue computes (the updated weight). A kernel over several weights feeding one dX (summed
projections: dgate·Wg + dup·Wu) runs one such pass per weight. dX is complete after the passes
and stored with its own epilogue. No atomics: a program's dX block is summed by that program alone.

Grid: one program per BF rows of W (times the batch: MoE experts). A GPU wants every SM busy, and
every program streams all of dY's [T, C] through L2 (T/BF bytes of dY per byte of W), so `choose`
takes the largest BF (64, 32, 16) that fits shared memory and still gives one program per SM:
the pass is memory-bound on W, and W's rows are what spreads it over the machine. (Splitting W's
columns over more programs would need atomic f32 adds of dX partials into a zeroed buffer and
would forbid dX's epilogue: not taken.)"""

TEMPLATE = '''
@triton.jit
def {name}({params}BF: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    pid_b = tl.program_id(1)
    rf = tl.program_id(0) * BF + tl.arange(0, BF)[:, None]
    rt = tl.arange(0, BT)[:, None]
    rtx = tl.arange(0, BT)[None, :]
    mask_rf = rf < {F}
    mask_rt = rt < {T}
    mask_rtx = rtx < {T}
{prologue}
{passes}
{epilogue}


def launch(args, cfg):
    grid = (triton.cdiv({F}, cfg["BF"]), {B})
    {name}[grid](*args, BF=cfg["BF"], BC=cfg["BC"], BT=cfg["BT"], DT=_DT[cfg["DT"]], PREC=cfg["PREC"],
                 num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
'''

# one weight's pass (the kernel has one per weight it updates, all adding to the same dX)
PASS = '''    dxt{i} = tl.zeros((BF, BT), dtype=tl.float32)
    xt = tl.where(mask_rf & mask_rtx, {x}, 0.0).to(DT)
    for c0 in range(0, {C}, BC):
        rc = c0 + tl.arange(0, BC)[None, :]
        mask_rc = rc < {C}
{loads}
        w = tl.where(mask_rf & mask_rc, {w}, 0.0).to(DT)
        g = tl.where(mask_rt & mask_rc, {g}, 0.0).to(DT)
        dy = tl.where(mask_rt & mask_rc, {dy}, 0.0).to(DT)
        dxt{i} += tl.dot(w, tl.trans(g), input_precision=PREC)
        dw = tl.dot(xt, dy, input_precision=PREC)
{update}
'''

# rows of W per program, W's columns per step, warps, pipeline stages (BT is the token tile)
TUNING = [dict(BF=bf, BC=bc, num_warps=w, num_stages=s) for bf, bc, w, s in
          [(16, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 3), (16, 128, 4, 2), (32, 32, 8, 2), (16, 32, 8, 2)]]

SMS = 132                 # an H100's streaming multiprocessors: the programs one wave fills
SHARED_BUDGET = 208 << 10  # of the 227 KiB a block may have: X's tile and the pipelined W and dY tiles


def shared_bytes(bf: int, bc: int, bt: int, itemsize: int, stages: int) -> int:
    """Shared memory of the dot operands: X's [BF, BT] tile, and per stage the [BT, BC] dY and
    [BF, BC] W tiles (what the sm_90 compile reports, within a few KiB)."""
    return (bf * bt + stages * bc * (bt + bf)) * itemsize


def choose(b: int, f: int, c: int, t: int, dtype: str, interpret: bool) -> dict:
    """b: batch (experts), f: W's rows per batch, c: W's columns looped over, t: tokens."""
    from . import next_pow2
    clamp = lambda x, hi: max(16, min(next_pow2(x), hi))
    bt = clamp(t, 1 << 30)
    if interpret:  # few, large programs (interpreter cost: grid size x loop trips), f32 dots
        return dict(BF=clamp(f, 128), BC=clamp(c, 256), BT=bt, DT="fp32", PREC="ieee")
    half = dtype in ("bf16", "f16")
    size, stages = (2 if half else 4), 2
    bc = 64 if bt <= 128 else 32  # [BT, BC] dY tile and the [BF, BT] X and dX blocks in registers
    fits = [x for x in (64, 32, 16) if shared_bytes(x, bc, bt, size, stages) <= SHARED_BUDGET] or [16]
    bf = next((x for x in fits if b * -(-f // x) >= SMS), fits[-1])
    return dict(BF=bf, BC=bc, BT=bt, DT={"bf16": "bf16", "f16": "fp16"}.get(dtype, "fp32"),
                PREC="tf32" if half else "ieee", num_warps=4 if bt <= 128 else 8, num_stages=stages)


# Pallas: grid (batch and F blocks: parallel, C blocks: arbitrary, last); each dX in VMEM scratch
# (`update`: the dX accumulations, then each dW and what its epilogue stores)
PALLAS = '''
def {name}({params}):
    @pl.when({first})
    def _init():
{init}

{prologue}
{update}

    @pl.when({last})
    def _epilogue():
{epilogue}
'''
