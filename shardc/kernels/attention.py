"""Flash attention (online softmax): per (batch·head, query block), loop over key blocks:
S = Q Kᵀ on chip, `{scores}` applies the graph's score ops (scale, causal or padding mask) to S,
running max / sum rescale the accumulator, acc += P V. Scores and probabilities never reach memory.
The key loop runs over `[{n_start}, {n_end})`: every key block, or only those a masked query block
can see (causal: up to its diagonal; codegen/masked_blocks.py), starting at a multiple of BN."""

TEMPLATE = '''
@triton.jit
def {name}({params}BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    pid_b = tl.program_id(1)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    rd = tl.arange(0, BD)[None, :]
    rdk = tl.arange(0, BD)[:, None]
    rdv = tl.arange(0, BDV)[None, :]
    mask_rm = rm < {NQ}
    mask_rd = rd < {D}
    mask_rdk = rdk < {D}
    mask_rdv = rdv < {DV}
{load_q}
    q = tl.where(mask_rd, {q}, 0.0).to(DT)
    m_i = tl.full((BM, 1), -float("inf"), tl.float32)
    l_i = tl.zeros((BM, 1), dtype=tl.float32)
    acc = tl.zeros((BM, BDV), dtype=tl.float32)
    for n0 in range({n_start}, {n_end}, BN):
        rn = n0 + tl.arange(0, BN)[None, :]
        rnv = n0 + tl.arange(0, BN)[:, None]
        mask_rn = rn < {NKV}
        mask_rnv = rnv < {NKV}
{load_k}
        kt = tl.where(mask_rdk, {k}, 0.0).to(DT)
        s = tl.dot(q, kt, input_precision=PREC)
{scores}
        t = tl.where(mask_rn, {t}, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(t, axis=1)[:, None])
        m_use = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_use)
        p = tl.exp(t - m_use)
{p_round}
        l_i = l_i * alpha + tl.sum(p, axis=1)[:, None]
{load_v}
        v = tl.where(mask_rnv, {v}, 0.0).to(DT)
        acc = acc * alpha + tl.dot(p.to(DT), v, input_precision=PREC)
        m_i = m_new
    o = acc / l_i
{epilogue}


def launch(args, cfg):
    grid = (triton.cdiv({NQ}, cfg["BM"]), {B})
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], BD=cfg["BD"], BDV=cfg["BDV"], DT=_DT[cfg["DT"]],
                 PREC=cfg["PREC"], num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
'''

TUNING = [dict(BM=bm, BN=bn, num_warps=w, num_stages=s) for bm, bn, w, s in
          [(128, 64, 8, 2), (64, 64, 4, 2), (128, 128, 8, 2), (64, 32, 4, 3)]]


def choose(nq: int, nkv: int, d: int, dv: int, dtype: str, interpret: bool) -> dict:
    from . import next_pow2
    clamp = lambda x, hi: max(16, min(next_pow2(x), hi))
    bd, bdv = clamp(d, 256), clamp(dv, 256)
    if interpret:
        return dict(BM=clamp(nq, 128), BN=clamp(nkv, 128), BD=bd, BDV=bdv, DT="fp32", PREC="ieee")
    half = dtype in ("bf16", "f16")
    return dict(BM=max(64, clamp(nq, 128)), BN=max(32, clamp(nkv, 64)), BD=bd, BDV=bdv,
                DT={"bf16": "bf16", "f16": "fp16"}.get(dtype, "fp32"), PREC="tf32" if half else "ieee",
                num_warps=8 if nq >= 128 else 4, num_stages=2)
