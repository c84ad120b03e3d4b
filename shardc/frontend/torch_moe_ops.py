"""Torch rules for mixture-of-experts layers as Hugging Face writes them: torch._grouped_mm
(torch.nn.functional.grouped_mm) onto the IR's ragged_dot, histc counts of expert ids (bincount's
length comes from the data under torch.export: refused with the static spelling),
and the capture-time pieces: grouped_mm in any float dtype (torch's fake kernel only admits bf16,
the CUDA kernel's restriction; its CPU kernel computes f32 too) and the one-line refusal of
data-dependent expert loops (transformers' `eager` experts)."""
from __future__ import annotations

import contextlib

from ..ir import DType, Op


def _sizes_from_offsets(e, offs):
    """Group sizes from cumulative end offsets (torch's `offs`): offs - [0, offs[:-1]]."""
    offs = e.cast(offs, DType.i32)
    n = offs.shape[0]
    before = e.add(Op.PAD, [e.slice(offs, 0, 0, n - 1)], low=[1], high=[0], value=0) if n > 1 else e.const(0, DType.i32, (1,))
    return e.binary(Op.SUB, offs, before)


def _grouped_mm(e, mat_a, mat_b, offs=None, bias=None, out_dtype=None):
    """2d x 3d: rows of mat_a in groups (the forward); 2d x 2d: the contraction in groups (a
    weight gradient, [g, m, n]); 3d x 2d: the columns of mat_b in groups; 3d x 3d: a batched mm."""
    if bias is not None:
        raise e.unsupported("_grouped_mm with a bias (add it after the grouped matmul)")
    dt = e.out_dtype()
    a, b = e.cast(mat_a, dt), e.cast(mat_b, dt)
    if a.rank == 3 and b.rank == 3:
        return e.add(Op.DOT_GENERAL, [a, b], lhs_batch=[0], rhs_batch=[0], lhs_contract=[2], rhs_contract=[1])
    if offs is None:
        raise e.unsupported(f"_grouped_mm of {a.rank}-d and {b.rank}-d operands without offs")
    sizes = _sizes_from_offsets(e, offs)
    if a.rank == 2 and b.rank == 3:
        return e.add(Op.RAGGED_DOT, [a, b, sizes])
    if a.rank == 2 and b.rank == 2:
        return e.add(Op.RAGGED_DOT, [a, b, sizes], mode="contract")
    if a.rank == 3 and b.rank == 2:  # out[:, group g cols] = a[g] @ b[:, group g cols]: the transpose of rows mode
        out = e.add(Op.RAGGED_DOT, [e.transpose(b, [1, 0]), e.transpose(a, [0, 2, 1]), sizes])
        return e.transpose(out, [1, 0])
    raise e.unsupported(f"_grouped_mm of {a.rank}-d and {b.rank}-d operands")


def _histc(e, x, bins=100, min=0, max=0):
    """Counts of x in `bins` equal bins over [min, max] (values outside are not counted), as
    torch's CPU kernel bins them: floor((x - min) * bins / (max - min)), max in the last bin."""
    if not min < max:
        raise e.unsupported("histc without an explicit range min < max (the range would come from the data)")
    dt = e.out_dtype()
    xf = e.reshape(e.cast(x, DType.f32), (x.size,))
    pos = e.unary(Op.FLOOR, e.binary(Op.DIV, e.binary(Op.MUL, e.binary(Op.SUB, xf, float(min)), float(bins)),
                                      float(max - min)))
    pos = e.binary(Op.MIN, e.cast(pos, DType.i32), bins - 1)
    inside = e.binary(Op.AND, e.binary(Op.GE, xf, float(min)), e.binary(Op.LE, xf, float(max)))
    pos = e.select(inside, pos, e.const(-1, DType.i32))
    hit = e.binary(Op.EQ, e.broadcast_to(e.expand_dims(pos, 1), (x.size, bins)), e.iota((x.size, bins), 1, DType.i32))
    return e.cast(e.reduce(Op.REDUCE_SUM, e.cast(hit, DType.i64), 0), dt)


def static_value(n, limit: int = 1 << 20):
    """The value of a node computed from constants and iotas alone (no inputs), else None."""
    import numpy as np

    from ..ir.evaluate import eval_node
    memo, stack = {}, [n]
    while stack:
        x = stack[-1]
        if x in memo:
            stack.pop()
            continue
        if x.op is Op.PARAMETER or x.size > limit:
            return None
        todo = [i for i in x.inputs if i not in memo]
        if todo:
            stack += todo
            continue
        memo[x] = np.asarray(eval_node(x, [memo[i] for i in x.inputs]))
        stack.pop()
    return memo[n]


def repeated_rows(e, x, idx, axis: int):
    """x indexed along `axis` by a static index that repeats each position k times in order
    (transformers' token_idx = arange(T).unsqueeze(1).expand(-1, k).reshape(-1)): a broadcast and
    a reshape, which the partitioner splits with the tokens (a gather by data it cannot)."""
    import numpy as np
    if idx.rank != 1 or idx.size % max(x.shape[axis], 1) or idx.size == x.shape[axis]:
        return None
    v = static_value(idx)
    k = idx.size // x.shape[axis]
    if v is None or not np.array_equal(v, np.repeat(np.arange(x.shape[axis]), k)):
        return None
    shape = x.shape[:axis + 1] + (k,) + x.shape[axis + 1:]
    wide = e.add(Op.BROADCAST, [x], shape=shape, dims=[d for d in range(len(shape)) if d != axis + 1])
    return e.reshape(wide, x.shape[:axis] + (idx.size,) + x.shape[axis + 1:])


# ops whose result shape comes from the data, and the static way MoE code writes them
STATIC_INSTEAD = {
    "bincount": "; count expert ids with torch.histc(ids.float(), bins=E, min=0, max=E - 1) as transformers "
                "does, or F.one_hot(ids, E).sum(0)",
    "nonzero": "; keep a static shape: a mask with torch.where(mask, x, 0), or sort by the mask",
}


def rules(A) -> dict:
    out = {A._grouped_mm: _grouped_mm, A.histc: _histc}
    if hasattr(A, "grouped_mm"):
        out[A.grouped_mm] = _grouped_mm
    return out


@contextlib.contextmanager
def grouped_mm_any_float():
    """While capturing, let torch's fake _grouped_mm take any float dtype (its dtype check is the
    CUDA kernel's; shardc computes the op in the model's own dtype)."""
    try:
        from torch import _meta_registrations as meta
    except ImportError:  # pragma: no cover
        yield
        return
    common = getattr(meta, "_meta_grouped_mm_common", None)
    make = getattr(meta, "_create_grouped_mm_output_tensor", None)
    if common is None or make is None:
        yield
        return

    def any_float(mat_a, mat_b, scale_a=None, scale_b=None, offs=None, bias=None, scale_result=None,
                  out_dtype=None, use_fast_accum=False):
        if scale_a is None and mat_a.dtype.is_floating_point and mat_a.dtype == mat_b.dtype:
            return make(mat_a, mat_b, offs, out_dtype)
        return common(mat_a, mat_b, scale_a, scale_b, offs, bias, scale_result, out_dtype, use_fast_accum)

    meta._meta_grouped_mm_common = any_float
    try:
        yield
    finally:
        meta._meta_grouped_mm_common = common


def data_dependent_refusal(name: str, errors: list[BaseException]) -> str | None:
    """A one-line refusal when capture failed on Python control flow over tensor values (torch's
    data-dependent guard), at the model's line; it names the MoE switch when that line walks the
    experts (transformers' `eager` experts: a loop over nonzero())."""
    import traceback
    hits = [e for e in errors if type(e).__name__ == "GuardOnDataDependentSymNode" or "data-dependent" in str(e)[:300]]
    if not hits:
        return None
    user = [f for f in traceback.extract_tb(hits[0].__traceback__)
            if "/torch/" not in f.filename and "/shardc/" not in f.filename]
    at = f" at {user[-1].filename.rsplit('/', 1)[-1]}:{user[-1].lineno} ({(user[-1].line or '').strip()})" if user else ""
    if user and any("expert" in f"{f.name} {f.line}" for f in user[-2:]):
        return (f"{name} loops over the experts its tokens hit{at}: a Python loop over nonzero() values "
                "(transformers' `eager` experts) cannot be captured; use the 'grouped_mm' or 'batched_mm' "
                "experts implementation (transformers: experts_implementation=\"grouped_mm\")")
    return (f"{name} branches or loops on tensor values{at}, which cannot be captured; compute both sides "
            "and select (torch.where), or make the loop bound static")
