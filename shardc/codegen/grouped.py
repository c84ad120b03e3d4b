"""Grouped-matmul kernels (ragged_dot), Triton and Pallas: a fusion group of kind
"grouped_matmul" is one ragged_dot whose operands (lhs, rhs, group sizes, group offset) are
materialized; the kernels/grouped_matmul.py templates are filled with its static shapes."""
from __future__ import annotations

from ..errors import UnsupportedOpError
from ..ir import DType
from ..kernels import grouped_matmul as gm_t
from ..kernels import next_pow2
from .emitted import EmittedKernel
from .fusion import FusionGroup

_FLOAT = (DType.f32, DType.bf16, DType.f16)


def _parts(grp: FusionGroup):
    d = grp.anchor
    if d.dtype not in _FLOAT:
        raise UnsupportedOpError(f"{d.describe()}: a grouped matmul of {d.dtype} has no kernel")
    lhs, rhs, sizes = d.inputs[:3]
    rows = d.attrs["mode"] == "rows"
    M, K = lhs.shape
    N = rhs.shape[2] if rows else rhs.shape[1]
    G = rhs.shape[0] if rows else d.shape[0]
    return d, rows, M, K, N, G, sizes.shape[0]


def emit_triton(grp: FusionGroup, name: str) -> EmittedKernel:
    from . import autotune
    from .triton import PRELUDE, PTR_TYPE
    d, rows, M, K, N, G, GT = _parts(grp)
    has_off = len(d.inputs) == 4
    assert list(grp.inputs) == list(d.inputs), "a grouped matmul reads its materialized operands"
    rnd = "        acc = _round_bf16(acc)" if d.dtype is DType.bf16 else ""
    tmpl = gm_t.TRITON_ROWS if rows else gm_t.TRITON_CONTRACT
    body = tmpl.format(name=name, off_param="off, " if has_off else "", offset="tl.load(off)" if has_off else "0",
                       GP=next_pow2(GT), GT=GT, M=M, N=N, K=K, G=G, KN=K * N, MN=M * N,
                       round=rnd if rows else rnd[4:])
    ops = f"%ragged_dot {d.name!r}" if d.name else "%ragged_dot"
    source = PRELUDE.format(kind="grouped_matmul", name=name, reason=grp.reason, ops=ops) + body
    names = ["lhs", "rhs", "sizes"] + (["off"] if has_off else [])
    signature = {**{a: PTR_TYPE[x.dtype] for a, x in zip(names, d.inputs)}, "out": PTR_TYPE[d.dtype]}
    dtype = d.inputs[0].dtype.value
    choose = lambda interpret: gm_t.choose(M, N, K, dtype, interpret)
    if name != "probe":
        choose = autotune.tuned_choose(choose, source, grp.inputs, grp.roots)
    return EmittedKernel(name, "grouped_matmul", source, list(grp.inputs), [d], [], signature, choose,
                         gm_t.TUNING, dims=dict(B=G, M=M, N=N, K=K, dtype=dtype))


def emit_pallas(grp: FusionGroup, name: str) -> EmittedKernel:
    from ..kernels import pallas_templates as tpl
    from . import vmem
    from .pallas_expr import JNP_STORAGE
    d, rows, M, K, N, G, GT = _parts(grp)
    in_shapes = [tuple(x.shape) if x.rank else (1,) for x in d.inputs]
    a, o = d.inputs[0].dtype.itemsize, d.dtype.itemsize
    if rows:  # tiled: (column tile, visit) steps, see kernels/grouped_matmul.py
        BM, BN = gm_t.pallas_rows_tiles(M, N)
        use = vmem.VmemUse((((BM, K), a), ((1, K, BN), a), ((BM, BN), o)))
    else:  # tiled over the groups' K tiles, see kernels/grouped_matmul.py
        BM, BN, BK = gm_t.pallas_contract_tiles(M, N, K)
        use = vmem.VmemUse((((BM, BK), a), ((BK, BN), a), ((1, BM, BN), o)), (((BM, BN), 4),))
    limit = vmem.limit_bytes(use)
    common = dict(name=name, G=G, in_shapes=", ".join(map(str, in_shapes)), out_shape=tuple(d.shape),
                  out_dtype=JNP_STORAGE[d.dtype], limit="" if limit is None else f", vmem_limit_bytes={limit}")
    if rows:
        NB = -(-M // BM)
        grid = (-(-N // BN), NB + G)
        src = gm_t.PALLAS_ROWS.format(**common, M=M, K=K, BM=BM, BN=BN, NB=NB, NT=grid[0], T=grid[1])
    else:
        NK = -(-K // BK)
        grid = (-(-M // BM), -(-N // BN), NK + G)
        src = gm_t.PALLAS_CONTRACT.format(**common, M=M, N=N, K=K, BM=BM, BN=BN, BK=BK, NK=NK, MT=grid[0],
                                          NT=grid[1], T=grid[2])
    ops = f"%ragged_dot {d.name!r}" if d.name else "%ragged_dot"
    head = tpl.PRELUDE.format(kind="grouped_matmul", name=name, reason=grp.reason, ops=ops)
    return EmittedKernel(name, "grouped_matmul", head + src, list(grp.inputs), [d], [], grid=grid, vmem=use)
