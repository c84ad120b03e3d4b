"""Scatter-add (embedding gradients, MoE combine): the result starts as a copy of the operand (or
filled with it, when the operand is a constant splat such as the zeros of an embedding gradient), then
one program per tile of updates adds each update at its computed index with an atomic add.
Out-of-range indices are dropped, as XLA's scatter. Half-float results accumulate in an f32
scratch buffer (atomics on bf16 round every add, and the interpreter cannot do them)."""

TEMPLATE = '''
@triton.jit
def {name}({params}BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    rn = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    mask_rm = rm < {rows}
    mask_rn = rn < {cols}
{body}


def launch(args, cfg):
    out = args[{out_pos}]
    acc = out.float() if {half} else out
    acc.{init}
    args = list(args)
    args[{out_pos}] = acc
    grid = (triton.cdiv({rows}, cfg["BM"]), triton.cdiv({cols}, cfg["BN"]))
    {name}[grid](*args, BM=cfg["BM"], BN=cfg["BN"], num_warps=cfg.get("num_warps", 4))
    if {half}:
        out.copy_(acc)
'''

TUNING = [dict(BM=bm, BN=bn, num_warps=4) for bm, bn in [(4, 128), (16, 64), (1, 512)]]


def choose(rows: int, cols: int, interpret: bool) -> dict:
    from . import rows as _rows
    return _rows.choose(rows, cols, False, interpret)
