"""Rules for torch's numerics and special functions beyond torch_vision_ops: erfc, fmax/fmin,
hypot, copysign/signbit, i0/i1, igamma, nextafter, frexp, polygamma/zeta, spherical_bessel_j0,
native_group_norm, adaptive 3-D average pooling, index_reduce, as_strided of a contiguous tensor,
addbmm, cdist, bilinear's _trilinear and put. Part of torch_ops.RULES; plain IR ops."""
from __future__ import annotations

import math

import numpy as np

from ..ir import DType, Node, Op
from . import bessel
from . import math_ops as M


def _f(e, *xs):
    """Operands as the op's (floating) result dtype."""
    dt = e.out_dtype()
    return [e.cast(x, dt) if isinstance(x, Node) else e.const(x, dt) for x in xs]


def _isnan(e, x):
    return e.binary(Op.NE, x, x)


def _fmax(largest: bool):
    def rule(e, a, b):
        a, b = _f(e, a, b)
        m = e.binary(Op.MAX if largest else Op.MIN, a, b)
        if not a.dtype.is_float:
            return m
        return e.select(_isnan(e, a), b, e.select(_isnan(e, b), a, m))
    return rule


def _hypot(e, a, b):
    a, b = _f(e, a, b)
    return e.unary(Op.SQRT, e.binary(Op.ADD, e.binary(Op.MUL, a, a), e.binary(Op.MUL, b, b)))


def _signbit(e, x):
    if not x.dtype.is_float:
        return e.binary(Op.LT, x, e.const(0, x.dtype))
    neg_zero = e.binary(Op.AND, e.binary(Op.EQ, x, 0.0), e.binary(Op.LT, e.binary(Op.DIV, 1.0, x), 0.0))
    return e.binary(Op.OR, e.binary(Op.LT, x, 0.0), neg_zero)


def _copysign(e, a, b):
    a, b = _f(e, a, b)
    mag = e.unary(Op.ABS, a)
    return e.select(_signbit(e, b), e.unary(Op.NEG, mag), mag)


def _erfc(e, x):
    (x,) = _f(e, x)
    return e.binary(Op.SUB, 1.0, e.unary(Op.ERF, x))


def _scaled_bessel(fn):
    """i0, i1: the exp(-|x|)-scaled functions times exp(|x|)."""
    def rule(e, x):
        (x,) = _f(e, x)
        return e.binary(Op.MUL, fn(e, x), e.unary(Op.EXP, e.unary(Op.ABS, x)))
    return rule


def _bessel(fn):
    def rule(e, x):
        (x,) = _f(e, x)
        return e.cast(fn(e, e.cast(x, DType.f32)), x.dtype)
    return rule


def _spherical_j0(e, x):
    (x,) = _f(e, x)
    safe = e.select(e.binary(Op.EQ, x, 0.0), 1.0, x)
    return e.select(e.binary(Op.EQ, x, 0.0), 1.0, e.binary(Op.DIV, e.unary(Op.SIN, safe), safe))


def _nextafter(e, x, y):
    x, y = _f(e, x, y)
    if x.dtype is not DType.f32:
        raise e.unsupported(f"nextafter on {x.dtype}")
    return M.nextafter(e, x, y)


def _frexp(e, x):
    """(mantissa in [0.5, 1), int32 exponent) with x = mantissa · 2^exponent; 0 → (0, 0)."""
    a = e.unary(Op.ABS, x)
    ex = e.unary(Op.FLOOR, e.binary(Op.DIV, e.unary(Op.LOG, e.binary(Op.MAX, a, 1e-38)), math.log(2.0)))
    p = e.binary(Op.POW, e.const(2.0, x.dtype), ex)
    ex = e.select(e.binary(Op.GT, p, a), e.binary(Op.SUB, ex, 1.0), ex)
    p = e.binary(Op.POW, e.const(2.0, x.dtype), ex)
    ex = e.select(e.binary(Op.LE, e.binary(Op.MUL, p, 2.0), a), e.binary(Op.ADD, ex, 1.0), ex)
    ex = e.binary(Op.ADD, ex, 1.0)
    zero = e.binary(Op.EQ, x, 0.0)
    mant = e.binary(Op.DIV, x, e.binary(Op.POW, e.const(2.0, x.dtype), ex))
    finite = e.binary(Op.LT, a, math.inf)
    mant = e.select(zero, x, e.select(finite, mant, x))
    ex = e.select(e.binary(Op.OR, zero, e.unary(Op.NOT, finite)), 0.0, ex)
    return mant, e.cast(ex, DType.i32)


_ZETA_A = (12.0, -720.0, 30240.0, -1209600.0, 47900160.0, -1.8924375803183791606e9, 7.47242496e10,
           -2.950130727918164224e12, 1.1646782814350067249e14, -4.5979787224074726105e15,
           1.8152105401943546773e17, -7.1661652561756670113e18)


def zeta(e, x, q, terms: int = 24):
    """Hurwitz ζ(x, q) by Euler–Maclaurin summation (Cephes' zeta): direct terms until q + k > 9
    (a fixed 24: exact to f32 for q > -15, where Cephes would loop longer), then 12 corrections."""
    s = e.binary(Op.POW, q, e.unary(Op.NEG, x))
    a, b = q, None
    for _ in range(terms):
        a = e.binary(Op.ADD, a, 1.0)
        b = e.binary(Op.POW, a, e.unary(Op.NEG, x))
        s = e.binary(Op.ADD, s, b)
    w = a
    s = e.binary(Op.ADD, s, e.binary(Op.DIV, e.binary(Op.MUL, b, w), e.binary(Op.SUB, x, 1.0)))
    s = e.binary(Op.SUB, s, e.binary(Op.MUL, b, 0.5))
    fac, k = e.const(1.0, x.dtype, x.shape), 0.0
    for coeff in _ZETA_A:
        fac = e.binary(Op.MUL, fac, e.binary(Op.ADD, x, k))
        b = e.binary(Op.DIV, b, w)
        s = e.binary(Op.ADD, s, e.binary(Op.DIV, e.binary(Op.MUL, fac, b), coeff))
        k += 1.0
        fac = e.binary(Op.MUL, fac, e.binary(Op.ADD, x, k))
        b = e.binary(Op.DIV, b, w)
        k += 1.0
    s = e.select(e.binary(Op.EQ, x, 1.0), math.inf, s)
    bad = e.binary(Op.OR, e.binary(Op.LT, x, 1.0),
                   e.binary(Op.AND, e.binary(Op.LE, q, 0.0), e.binary(Op.EQ, q, e.unary(Op.FLOOR, q))))
    return e.select(bad, e.select(e.binary(Op.LT, x, 1.0), math.nan, math.inf), s)


def _zeta(e, x, q):
    x, q = _f(e, x, q)
    return zeta(e, x, q)


def _polygamma(e, n, x):
    (x,) = _f(e, x)
    if n == 0:
        return M.digamma(e, x)
    z = zeta(e, e.const(float(n + 1), x.dtype, x.shape), x)
    return e.binary(Op.MUL, z, float((-1) ** (n + 1) * math.factorial(n)))


def _igamma(upper: bool):
    def rule(e, a, x):
        a, x = _f(e, a, x)
        return (M.igammac if upper else M.igamma)(e, a, x)
    return rule


# ---------------------------------------------------------------------------- norms and pooling
def _native_group_norm(e, x, weight, bias, n, c, hw, group, eps):
    dt = x.dtype
    xc = e.upcast(x)
    g = e.reshape(xc, (n, group, -1))
    mean = e.mean(g, -1, keepdims=True)
    d = e.binary(Op.SUB, g, mean)
    var = e.mean(e.binary(Op.MUL, d, d), -1, keepdims=True)
    rstd = e.unary(Op.RSQRT, e.binary(Op.ADD, var, float(eps)))
    out = e.reshape(e.binary(Op.MUL, d, rstd), x.shape)
    shape = (1, c) + (1,) * (x.rank - 2)
    if weight is not None:
        out = e.binary(Op.MUL, out, e.reshape(e.upcast(weight), shape))
    if bias is not None:
        out = e.binary(Op.ADD, out, e.reshape(e.upcast(bias), shape))
    return e.cast(out, dt), e.cast(e.reshape(mean, (n, group)), dt), e.cast(e.reshape(rstd, (n, group)), dt)


def _adaptive_avg_pool(e, x, output_size):
    """Each spatial dim contracted with its averaging matrix (a dot: shards like a linear layer)."""
    dt, out = x.dtype, e.upcast(x)
    nsp = len(output_size)
    for i, o in enumerate(output_size):
        d = x.rank - nsp + i
        n = x.shape[d]
        mat = np.zeros((n, o), np.float32)
        for j in range(o):
            lo, hi = (j * n) // o, -((-(j + 1) * n) // o)
            mat[lo:hi, j] = 1.0 / (hi - lo)
        red = e.add(Op.DOT_GENERAL, [out, e.constant(mat, DType.f32) if out.dtype is DType.f32 else
                                     e.cast(e.constant(mat, DType.f32), out.dtype)], lhs_contract=[d], rhs_contract=[0])
        perm = list(range(d)) + [out.rank - 1] + list(range(d, out.rank - 1))
        out = e.transpose(red, perm)
    return e.cast(out, dt)


# ------------------------------------------------------------------------------ indexing, matmul
def _index_reduce(scatter_reduce):
    def rule(e, x, dim, index, source, reduce, include_self=True):
        dim %= max(x.rank, 1)
        if source.rank == 0:
            source = e.reshape(source, [1])
        shape = [1] * source.rank
        shape[dim] = source.shape[dim]
        idx = e.broadcast_to(e.reshape(index, shape), source.shape)
        return scatter_reduce(e, x, dim, idx, source, reduce, include_self)
    return rule


def _as_strided(e, x, size, stride, storage_offset=None):
    """A view of a contiguous tensor's storage: a gather of the flattened tensor at constant
    positions (a non-contiguous input would read other memory in torch: refused)."""
    val = (getattr(e, "in_vals", None) or [None])[0]
    if val is not None and (not val.is_contiguous() or val.storage_offset() != 0):
        raise e.unsupported("as_strided of a non-contiguous tensor (it reads the tensor's storage)")
    flat_n = x.size
    pos = np.full(tuple(size), int(storage_offset or 0), np.int64)
    for d, (n, s) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[d] = n
        pos = pos + (np.arange(n, dtype=np.int64) * s).reshape(shape)
    if pos.size and (pos.min() < 0 or pos.max() >= flat_n):
        raise e.unsupported(f"as_strided reading outside the tensor (size {list(size)}, stride {list(stride)})")
    flat = e.reshape(x, [flat_n])
    if pos.size == 0:
        return e.const(0, x.dtype, tuple(size))
    return e.reshape(e.add(Op.GATHER, [flat, e.constant(pos.reshape(-1), DType.i64)], axis=0), tuple(size))


def _addbmm(e, bias, a, b, beta=1, alpha=1):
    dt = e.out_dtype()
    prod = e.reduce(Op.REDUCE_SUM, e.matmul(e.upcast(a), e.upcast(b)), 0)
    if alpha != 1:
        prod = e.binary(Op.MUL, prod, alpha)
    out = prod if beta == 0 else e.binary(Op.ADD, e.binary(Op.MUL, e.upcast(bias), beta) if beta != 1
                                          else e.upcast(bias), prod)
    return e.cast(e.broadcast_to(out, e.out_shape()), dt)


def _cdist(e, x1, x2, p, compute_mode=None):
    d = e.binary(Op.SUB, e.expand_dims(x1, -2), e.expand_dims(x2, -3))   # [.., P, R, M]
    a = e.unary(Op.ABS, d)
    if p == 0:
        return e.reduce(Op.REDUCE_SUM, e.cast(e.binary(Op.NE, a, 0.0), x1.dtype), -1)
    if p == math.inf:
        return e.reduce(Op.REDUCE_MAX, a, -1)
    if p == 1:
        return e.reduce(Op.REDUCE_SUM, a, -1)
    if p == 2:
        return e.unary(Op.SQRT, e.reduce(Op.REDUCE_SUM, e.binary(Op.MUL, a, a), -1))
    return e.binary(Op.POW, e.reduce(Op.REDUCE_SUM, e.binary(Op.POW, a, float(p)), -1), 1.0 / p)


def _trilinear(e, i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    ts = []
    for t, dims in ((i1, expand1), (i2, expand2), (i3, expand3)):
        for d in sorted(dims):
            t = e.expand_dims(t, d)
        ts.append(t)
    out = e.binary(Op.MUL, e.binary(Op.MUL, ts[0], ts[1]), ts[2])
    return e.reduce(Op.REDUCE_SUM, out, list(sumdim)) if sumdim else out


def _put(index_put):
    def rule(e, x, index, source, accumulate=False):
        flat = e.reshape(x, [x.size])
        idx = e.reshape(index, [-1])
        idx = e.select(e.binary(Op.LT, idx, 0), e.binary(Op.ADD, idx, x.size), idx)
        out = index_put(e, flat, [idx], e.reshape(source, [-1]), accumulate)
        return e.reshape(out, x.shape)
    return rule


def _diagonal_scatter(e, x, src, offset=0, dim1=0, dim2=1):
    """x with its diagonal replaced by src: a constant map from each flat position of the two dims
    to its diagonal entry (or none), then a gather and a select."""
    dim1, dim2 = dim1 % x.rank, dim2 % x.rank
    rest = [d for d in range(x.rank) if d not in (dim1, dim2)]
    perm = rest + [dim1, dim2]
    xt = e.transpose(x, perm)
    a, b = xt.shape[-2:]
    r0, c0 = max(-offset, 0), max(offset, 0)
    n = max(min(a - r0, b - c0), 0)
    where = np.full(a * b, -1, np.int64)
    for i in range(n):
        where[(r0 + i) * b + c0 + i] = i
    flat = e.reshape(xt, xt.shape[:-2] + (a * b,))
    if n:
        vals = e.add(Op.GATHER, [e.cast(src, x.dtype), e.constant(np.maximum(where, 0), DType.i64)], axis=src.rank - 1)
        flat = e.select(e.constant(where >= 0, DType.bool), vals, flat)
    return e.transpose(e.reshape(flat, xt.shape), list(np.argsort(perm)))


def erfcx(e, x):
    """exp(x²)·erfc(x): directly below 1.5, Laplace's continued fraction (20 terms) above."""
    direct = e.binary(Op.MUL, e.unary(Op.EXP, e.binary(Op.MUL, x, x)), e.binary(Op.SUB, 1.0, e.unary(Op.ERF, x)))
    safe = e.binary(Op.MAX, x, 1.5)
    t = e.const(0.0, x.dtype, x.shape)
    for k in range(20, 0, -1):
        t = e.binary(Op.DIV, k / 2, e.binary(Op.ADD, safe, t))
    frac = e.binary(Op.DIV, 1 / math.sqrt(math.pi), e.binary(Op.ADD, safe, t))
    return e.select(e.binary(Op.LT, x, 1.5), direct, frac)


def _erfcx(e, x):
    (x,) = _f(e, x)
    return erfcx(e, x)


def _log_ndtr(e, x):
    """log Φ(x): through erfcx in the lower tail (no underflow), log1p(-Φ(-x)) above."""
    (x,) = _f(e, x)
    t = e.binary(Op.MUL, x, -1 / math.sqrt(2.0))
    lower = e.binary(Op.SUB, e.unary(Op.LOG, e.binary(Op.MUL, erfcx(e, t), 0.5)), e.binary(Op.MUL, t, t))
    upper = e.unary(Op.LOG1P, e.binary(Op.MUL, e.binary(Op.SUB, 1.0, e.unary(Op.ERF, e.unary(Op.NEG, t))), -0.5))
    return e.select(e.binary(Op.LT, x, -1.0), lower, upper)


def _ndtri(e, p):
    (p,) = _f(e, p)
    return e.binary(Op.MUL, e.erf_inv(e.binary(Op.SUB, e.binary(Op.MUL, p, 2.0), 1.0)), math.sqrt(2.0))


def _chebyshev(kind: str, shifted: bool = False):
    """Chebyshev polynomials T, U, V, W of a tensor degree n (truncated to an integer, as torch):
    torch's recurrence for n <= 6, beyond it the closed forms in θ = acos(y) for |y| < 1 (torch's
    own) and in t = acosh|y| for |y| > 1 (the recurrence's values, by parity for y < -1)."""
    def rule(e, x, n):
        x, n = _f(e, x, n)
        n = e.select(e.binary(Op.LT, n, 0.0), e.unary(Op.CEIL, n), e.unary(Op.FLOOR, n))
        y = e.binary(Op.SUB, e.binary(Op.ADD, x, x), 1.0) if shifted else x
        first = {"t": y, "u": e.binary(Op.ADD, y, y), "v": e.binary(Op.SUB, e.binary(Op.ADD, y, y), 1.0),
                 "w": e.binary(Op.ADD, e.binary(Op.ADD, y, y), 1.0)}[kind]
        terms = [e.const(1.0, y.dtype, y.shape), first]
        for _ in range(2, 7):
            terms.append(e.binary(Op.SUB, e.binary(Op.MUL, e.binary(Op.ADD, y, y), terms[-1]), terms[-2]))
        out = e.const(0.0, y.dtype, y.shape)
        for k, t in enumerate(terms):
            out = e.select(e.binary(Op.EQ, n, float(k)), t, out)
        odd = e.binary(Op.NE, e.binary(Op.SUB, n, e.binary(Op.MUL, e.unary(Op.FLOOR, e.binary(Op.MUL, n, 0.5)), 2.0)), 0.0)
        parity = e.select(odd, -1.0, 1.0)
        half = e.binary(Op.ADD, n, 0.5)
        # |y| < 1
        th = M.acos(e, e.binary(Op.MAX, e.binary(Op.MIN, y, 1.0), -1.0))
        trig = {"t": e.unary(Op.COS, e.binary(Op.MUL, n, th)),
                "u": e.binary(Op.DIV, e.unary(Op.SIN, e.binary(Op.MUL, e.binary(Op.ADD, n, 1.0), th)), e.unary(Op.SIN, th)),
                "v": e.binary(Op.DIV, e.unary(Op.COS, e.binary(Op.MUL, half, th)), e.unary(Op.COS, e.binary(Op.MUL, th, 0.5))),
                "w": e.binary(Op.DIV, e.unary(Op.SIN, e.binary(Op.MUL, half, th)), e.unary(Op.SIN, e.binary(Op.MUL, th, 0.5)))}[kind]
        # |y| > 1: y = ±cosh t
        t = M.acosh(e, e.binary(Op.MAX, e.unary(Op.ABS, y), 1.0))
        ch = lambda v: M.cosh(e, v)
        sh = lambda v: M.sinh(e, v)
        hyp = {"t": ch(e.binary(Op.MUL, n, t)),
               "u": e.binary(Op.DIV, sh(e.binary(Op.MUL, e.binary(Op.ADD, n, 1.0), t)), sh(t)),
               "v": e.binary(Op.DIV, ch(e.binary(Op.MUL, half, t)), ch(e.binary(Op.MUL, t, 0.5))),
               "w": e.binary(Op.DIV, sh(e.binary(Op.MUL, half, t)), sh(e.binary(Op.MUL, t, 0.5)))}
        swap = {"t": "t", "u": "u", "v": "w", "w": "v"}[kind]
        neg = e.binary(Op.MUL, parity, hyp[swap])
        big = e.select(e.binary(Op.LT, y, 0.0), neg, hyp[kind])
        two_n1 = e.binary(Op.ADD, e.binary(Op.ADD, n, n), 1.0)
        at_one = {"t": 1.0, "u": e.binary(Op.ADD, n, 1.0), "v": 1.0, "w": two_n1}[kind]
        at_minus = e.binary(Op.MUL, parity, {"t": 1.0, "u": e.binary(Op.ADD, n, 1.0), "v": two_n1, "w": 1.0}[kind])
        a = e.unary(Op.ABS, y)
        out = e.select(e.binary(Op.GT, n, 6.0), e.select(e.binary(Op.LT, a, 1.0), trig, big), out)
        out = e.select(e.binary(Op.EQ, y, 1.0), at_one, e.select(e.binary(Op.EQ, y, -1.0), at_minus, out))
        out = e.select(e.binary(Op.LT, n, 0.0), 0.0, out)
        return e.select(e.binary(Op.NE, x, x), x, out)
    return rule


def _masked_scatter(e, x, mask, source):
    """x with its masked positions, in row-major order, taking source's leading elements: the
    k-th True reads source[k], k from a prefix sum of the mask (static shapes throughout)."""
    m = e.reshape(e.broadcast_to(e.cast(mask, DType.bool), x.shape), [x.size])
    if x.size == 0:
        return x
    k = e.binary(Op.SUB, e.cumsum(e.cast(m, DType.i64), 0), 1)
    k = e.binary(Op.MAX, k, 0)
    vals = e.add(Op.GATHER, [e.reshape(e.cast(source, x.dtype), [source.size]), k], axis=0)
    return e.reshape(e.select(m, vals, e.reshape(x, [x.size])), x.shape)


def rules(A, scatter_reduce, index_put) -> dict:
    return {
        A.fmax: _fmax(True), A.fmin: _fmax(False), A.hypot: _hypot, A.copysign: _copysign,
        A.signbit: _signbit, A.erfc: _erfc, A.i0: _scaled_bessel(M.i0e), A.special_i1: _scaled_bessel(M.i1e),
        A.special_modified_bessel_i0: _scaled_bessel(M.i0e), A.special_modified_bessel_i1: _scaled_bessel(M.i1e),
        A.special_spherical_bessel_j0: _spherical_j0, A.nextafter: _nextafter, A.frexp: _frexp,
        A.special_zeta: _zeta, A.polygamma: _polygamma, A.igamma: _igamma(False), A.igammac: _igamma(True),
        A.native_group_norm: _native_group_norm, A._adaptive_avg_pool3d: _adaptive_avg_pool,
        A.index_reduce: _index_reduce(scatter_reduce), A.as_strided: _as_strided, A.addbmm: _addbmm,
        A._cdist_forward: _cdist, A._trilinear: _trilinear, A.put: _put(index_put),
        A.diagonal_scatter: _diagonal_scatter, A.special_ndtri: _ndtri, A.masked_scatter: _masked_scatter,
        A.special_erfcx: _erfcx, A.special_log_ndtr: _log_ndtr,
        A.special_bessel_j0: _bessel(bessel.j0), A.special_bessel_j1: _bessel(bessel.j1),
        A.special_bessel_y0: _bessel(bessel.y0), A.special_bessel_y1: _bessel(bessel.y1),
        **{getattr(A, f"special_{'scaled_' if scaled else ''}modified_bessel_k{order}"):
           _bessel(lambda b, x, order=order, scaled=scaled: bessel.k(b, x, order, scaled, M.i0e if order == 0 else M.i1e))
           for order in (0, 1) for scaled in (False, True)},
        **{getattr(A, f"special_{pre}chebyshev_polynomial_{k}"): _chebyshev(k, pre == "shifted_")
           for k in "tuvw" for pre in ("", "shifted_")},
    }
