"""Elementwise functions the closed op set lacks, as compositions of its ops, shared by the torch
and JAX tables: inverse and hyperbolic trig, atan2, lgamma/digamma, ... Each takes an Emitter `b`
and float nodes, computes in f32 (half floats round once at the end) and is accurate to a few f32
ulps on the usual ranges (Cephes' single-precision polynomials, as XLA and torch's CPU kernels use
for the same functions)."""
from __future__ import annotations

import functools
import math

from ..ir import DType, Node, Op


def _f32(fn):
    """Compute in f32; a half-float operand rounds once at the end; an int operand goes to f32."""
    @functools.wraps(fn)
    def wrapped(b, *xs, **options):
        dt = xs[0].dtype if xs[0].dtype.is_float else DType.f32
        out = fn(b, *[b.cast(x, DType.f32) for x in xs], **options)
        return b.cast(out, dt)
    return wrapped


def _horner(b, coeffs, t):
    p = b.const(coeffs[0], DType.f32, t.shape)
    for c in coeffs[1:]:
        p = b.binary(Op.ADD, b.binary(Op.MUL, p, t), c)
    return p


def _atan_abs(b, a: Node) -> Node:
    """atan of a >= 0 (Cephes atanf: two range reductions, then an odd polynomial)."""
    big = b.binary(Op.GT, a, 2.414213562373095)
    mid = b.binary(Op.AND, b.binary(Op.GT, a, 0.4142135623730950), b.unary(Op.NOT, big))
    safe = b.select(b.binary(Op.EQ, a, 0.0), 1.0, a)
    x = b.select(big, b.binary(Op.DIV, -1.0, safe),
                 b.select(mid, b.binary(Op.DIV, b.binary(Op.SUB, a, 1.0), b.binary(Op.ADD, a, 1.0)), a))
    y0 = b.select(big, math.pi / 2, b.select(mid, math.pi / 4, 0.0))
    z = b.binary(Op.MUL, x, x)
    p = _horner(b, (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1), z)
    out = b.binary(Op.ADD, y0, b.binary(Op.ADD, b.binary(Op.MUL, b.binary(Op.MUL, p, z), x), x))
    return b.select(b.binary(Op.EQ, a, math.inf), math.pi / 2, out)


def _copysign(b, mag: Node, sign_of: Node) -> Node:
    return b.select(b.binary(Op.LT, sign_of, 0.0), b.unary(Op.NEG, mag), mag)


@_f32
def atan(b, x):
    return _copysign(b, _atan_abs(b, b.unary(Op.ABS, x)), x)


@_f32
def atan2(b, y, x):
    """Quadrant-aware atan(y / x) from atan of min/max, as C's atan2f (NaN in, NaN out)."""
    ay, ax = b.unary(Op.ABS, y), b.unary(Op.ABS, x)
    hi, lo = b.binary(Op.MAX, ay, ax), b.binary(Op.MIN, ay, ax)
    both_inf = b.binary(Op.AND, b.binary(Op.EQ, hi, math.inf), b.binary(Op.EQ, lo, math.inf))
    ratio = b.select(b.binary(Op.EQ, hi, 0.0), 0.0, b.binary(Op.DIV, lo, b.select(b.binary(Op.EQ, hi, 0.0), 1.0, hi)))
    ratio = b.select(both_inf, 1.0, ratio)
    a = _atan_abs(b, ratio)
    a = b.select(b.binary(Op.GT, ay, ax), b.binary(Op.SUB, math.pi / 2, a), a)
    a = b.select(b.binary(Op.LT, x, 0.0), b.binary(Op.SUB, math.pi, a), a)
    a = _copysign(b, a, y)
    nan = b.binary(Op.OR, b.binary(Op.NE, x, x), b.binary(Op.NE, y, y))
    return b.select(nan, math.nan, a)


@_f32
def asin(b, x):
    c = b.unary(Op.SQRT, b.binary(Op.MUL, b.binary(Op.SUB, 1.0, x), b.binary(Op.ADD, 1.0, x)))
    return atan2(b, x, c)


@_f32
def acos(b, x):
    s = b.unary(Op.SQRT, b.binary(Op.MUL, b.binary(Op.SUB, 1.0, x), b.binary(Op.ADD, 1.0, x)))
    return atan2(b, s, x)


@_f32
def tan(b, x):
    return b.binary(Op.DIV, b.unary(Op.SIN, x), b.unary(Op.COS, x))


@_f32
def expm1(b, x):
    """exp(x) - 1 without cancellation near 0: 2t / (1 - t) with t = tanh(x / 2)."""
    t = b.unary(Op.TANH, b.binary(Op.MUL, x, 0.5))
    small = b.binary(Op.DIV, b.binary(Op.MUL, t, 2.0), b.binary(Op.SUB, 1.0, t))
    return b.select(b.binary(Op.LT, b.unary(Op.ABS, x), 0.5), small, b.binary(Op.SUB, b.unary(Op.EXP, x), 1.0))


@_f32
def sinh(b, x):
    a = b.unary(Op.ABS, x)
    e = expm1(b, a)  # sinh|x| = (e^a - 1)(e^a + 1) / (2 e^a) = em1 (em1 + 2) / (2 (em1 + 1))
    s = b.binary(Op.DIV, b.binary(Op.MUL, e, b.binary(Op.ADD, e, 2.0)), b.binary(Op.MUL, b.binary(Op.ADD, e, 1.0), 2.0))
    big = b.binary(Op.MUL, b.unary(Op.EXP, b.binary(Op.SUB, a, math.log(2.0))), 1.0)
    s = b.select(b.binary(Op.GT, a, 20.0), big, s)
    return _copysign(b, s, x)


@_f32
def cosh(b, x):
    a = b.unary(Op.ABS, x)
    half = b.unary(Op.EXP, b.binary(Op.SUB, a, math.log(2.0)))  # e^a / 2, no overflow below 89.4
    return b.binary(Op.ADD, half, b.binary(Op.DIV, 0.25, half))


@_f32
def asinh(b, x):
    a = b.unary(Op.ABS, x)
    a2 = b.binary(Op.MUL, a, a)
    small = b.unary(Op.LOG1P, b.binary(Op.ADD, a, b.binary(Op.DIV, a2, b.binary(Op.ADD, 1.0, b.unary(
        Op.SQRT, b.binary(Op.ADD, a2, 1.0))))))
    large = b.binary(Op.ADD, b.unary(Op.LOG, a), math.log(2.0))
    return _copysign(b, b.select(b.binary(Op.GT, a, 1e4), large, small), x)


@_f32
def acosh(b, x):
    xm1 = b.binary(Op.SUB, x, 1.0)
    small = b.unary(Op.LOG1P, b.binary(Op.ADD, xm1, b.unary(
        Op.SQRT, b.binary(Op.MUL, xm1, b.binary(Op.ADD, x, 1.0)))))
    large = b.binary(Op.ADD, b.unary(Op.LOG, x), math.log(2.0))
    out = b.select(b.binary(Op.GT, x, 1e4), large, small)
    return b.select(b.binary(Op.LT, x, 1.0), math.nan, out)


@_f32
def atanh(b, x):
    a = b.unary(Op.ABS, x)
    v = b.binary(Op.MUL, 0.5, b.unary(Op.LOG1P, b.binary(Op.DIV, b.binary(Op.MUL, a, 2.0), b.binary(Op.SUB, 1.0, a))))
    return _copysign(b, v, x)


@_f32
def cbrt(b, x):
    a = b.unary(Op.ABS, x)
    r = b.binary(Op.POW, a, 1.0 / 3.0)
    # one Newton step: r - (r^3 - a) / (3 r^2)
    r2 = b.binary(Op.MUL, r, r)
    step = b.binary(Op.DIV, b.binary(Op.SUB, b.binary(Op.MUL, r2, r), a), b.binary(Op.MUL, r2, 3.0))
    r = b.select(b.binary(Op.GT, r, 0.0), b.binary(Op.SUB, r, step), r)
    r = b.select(b.binary(Op.EQ, a, math.inf), math.inf, r)
    return _copysign(b, r, x)


_LANCZOS_G = 7.0
_LANCZOS = (0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
            -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6,
            1.5056327351493116e-7)


def _lanczos(b, z):
    """(sum, derivative of sum) of the Lanczos series at z (z >= 0.5 - 1)."""
    s = b.const(_LANCZOS[0], DType.f32, z.shape)
    ds = b.const(0.0, DType.f32, z.shape)
    for i, c in enumerate(_LANCZOS[1:], start=1):
        d = b.binary(Op.ADD, z, float(i))
        s = b.binary(Op.ADD, s, b.binary(Op.DIV, c, d))
        ds = b.binary(Op.SUB, ds, b.binary(Op.DIV, c, b.binary(Op.MUL, d, d)))
    return s, ds


@_f32
def lgamma(b, x):
    """log|Γ(x)| by the Lanczos approximation (g = 7), reflected for x < 0.5, as XLA does."""
    reflect = b.binary(Op.LT, x, 0.5)
    z = b.select(reflect, b.unary(Op.NEG, x), b.binary(Op.SUB, x, 1.0))  # Γ(z + 1) for z = x - 1 or -x
    s, _ = _lanczos(b, z)
    t = b.binary(Op.ADD, z, _LANCZOS_G + 0.5)
    lg = b.binary(Op.ADD, b.binary(Op.ADD, 0.5 * math.log(2 * math.pi),
                                   b.binary(Op.MUL, b.binary(Op.ADD, z, 0.5), b.unary(Op.LOG, t))),
                  b.binary(Op.SUB, b.unary(Op.LOG, s), t))
    # reflection: lgamma(x) = log(pi / |sin(pi x)|) - lgamma(1 - x)
    frac = b.binary(Op.SUB, x, b.unary(Op.FLOOR, x))
    sin = b.unary(Op.ABS, b.unary(Op.SIN, b.binary(Op.MUL, frac, math.pi)))
    refl = b.binary(Op.SUB, b.binary(Op.SUB, math.log(math.pi), b.unary(Op.LOG, sin)), lg)
    out = b.select(reflect, refl, lg)
    pole = b.binary(Op.AND, b.binary(Op.LE, x, 0.0), b.binary(Op.EQ, frac, 0.0))
    out = b.select(pole, math.inf, out)
    return b.select(b.binary(Op.EQ, b.unary(Op.ABS, x), math.inf), math.inf, out)


@_f32
def digamma(b, x):
    """ψ(x): the derivative of the Lanczos lgamma, reflected for x < 0.5 (XLA's formula)."""
    reflect = b.binary(Op.LT, x, 0.5)
    xr = b.select(reflect, b.binary(Op.SUB, 1.0, x), x)
    z = b.binary(Op.SUB, xr, 1.0)
    s, ds = _lanczos(b, z)
    t = b.binary(Op.ADD, z, _LANCZOS_G + 0.5)
    lt = b.unary(Op.LOG1P, b.binary(Op.DIV, z, _LANCZOS_G + 0.5))
    d = b.binary(Op.ADD, b.binary(Op.ADD, math.log(_LANCZOS_G + 0.5), lt),
                 b.binary(Op.SUB, b.binary(Op.DIV, ds, s), b.binary(Op.DIV, _LANCZOS_G, t)))
    # reflection: ψ(1 - x) - ψ(x) = π cot(πx)
    frac = b.binary(Op.SUB, x, b.unary(Op.FLOOR, x))
    px = b.binary(Op.MUL, frac, math.pi)
    cot = b.binary(Op.DIV, b.unary(Op.COS, px), b.unary(Op.SIN, px))
    out = b.select(reflect, b.binary(Op.SUB, d, b.binary(Op.MUL, cot, math.pi)), d)
    pole = b.binary(Op.AND, b.binary(Op.LE, x, 0.0), b.binary(Op.EQ, frac, 0.0))
    return b.select(pole, math.nan, out)


@_f32
def i0e(b, x):
    """exp(-|x|) I0(x) (Cephes' Chebyshev expansions)."""
    return _bessel_e(b, x, order=0)


@_f32
def i1e(b, x):
    """exp(-|x|) I1(x) (Cephes' Chebyshev expansions)."""
    return _bessel_e(b, x, order=1)


_I0_A = (-1.30002500998624804212e-8, 6.04699502254191894932e-8, -2.67079385394061173391e-7,
         1.11738753912010371815e-6, -4.41673835845875056359e-6, 1.64484480707288970893e-5,
         -5.75419501008210370398e-5, 1.88502885095841655729e-4, -5.76375574538582365885e-4,
         1.63947561694133579842e-3, -4.32430999505057594430e-3, 1.05464603945949983183e-2,
         -2.37374148058994688156e-2, 4.93052842396707084878e-2, -9.49010970480476444210e-2,
         1.71620901522208775349e-1, -3.04682672343198398683e-1, 6.76795274409476084995e-1)
_I0_B = (3.39623202570838634515e-9, 2.26666899049817806459e-8, 2.04891858946906374183e-7,
         2.89137052083475648297e-6, 6.88975834691682398426e-5, 3.36911647825569408990e-3,
         8.04490411014108831608e-1)
_I1_A = (9.38153738649577178388e-9, -4.44505912879632808065e-8, 2.00329475355213526229e-7,
         -8.56872026469545474066e-7, 3.47025130813767847674e-6, -1.32731636560394358279e-5,
         4.78156510755005422638e-5, -1.61760815825896745588e-4, 5.12285956168575772895e-4,
         -1.51357245063125314899e-3, 4.15642294431288815669e-3, -1.05640848946261981558e-2,
         2.47264490306265168283e-2, -5.29459812080949914269e-2, 1.02643658689847095384e-1,
         -1.76416518357834055153e-1, 2.52587186443633654823e-1)
_I1_B = (-3.83538038596423702205e-9, -2.63146884688951950684e-8, -2.51223623787020892529e-7,
         -3.88256480887769039346e-6, -1.10588938762623716291e-4, -9.76109749136146840777e-3,
         7.78576235018280120474e-1)


def _chbevl(b, x, coeffs):
    b0 = b.const(coeffs[0], DType.f32, x.shape)
    b1 = b.const(0.0, DType.f32, x.shape)
    b2 = b1
    for c in coeffs[1:]:
        b2 = b1
        b1 = b0
        b0 = b.binary(Op.ADD, b.binary(Op.SUB, b.binary(Op.MUL, x, b1), b2), c)
    return b.binary(Op.MUL, b.binary(Op.SUB, b0, b2), 0.5)


def _bessel_e(b, x, order: int):
    a = b.unary(Op.ABS, x)
    ca, cb = (_I0_A, _I0_B) if order == 0 else (_I1_A, _I1_B)
    small = _chbevl(b, b.binary(Op.SUB, b.binary(Op.MUL, a, 0.5), 2.0), ca)
    safe = b.select(b.binary(Op.LE, a, 8.0), 8.0, a)
    large = b.binary(Op.DIV, _chbevl(b, b.binary(Op.SUB, b.binary(Op.DIV, 32.0, safe), 2.0), cb),
                     b.unary(Op.SQRT, safe))
    out = b.select(b.binary(Op.LE, a, 8.0), small if order == 0 else b.binary(Op.MUL, small, a), large)
    return out if order == 0 else _copysign(b, out, x)


def prod(e, x, axes, keepdim=False):
    """Pairwise products, halving each axis per round (the IR has no product reduction)."""
    one = 1.0 if x.dtype.is_float else 1
    shape = x.shape
    for axis in sorted(axes):
        while x.shape[axis] > 1:
            n = x.shape[axis]
            if n % 2:
                x = e.add(Op.PAD, [x], low=[0] * x.rank, high=[1 if d == axis else 0 for d in range(x.rank)], value=one)
                n += 1
            x = e.binary(Op.MUL, e.slice(x, axis, 0, n, 2), e.slice(x, axis, 1, n, 2))
        if x.shape[axis] == 0:
            x = e.const(one, x.dtype, x.shape[:axis] + (1,) + x.shape[axis + 1:])
    kept = [1 if d in axes else s for d, s in enumerate(shape)] if keepdim else \
        [s for d, s in enumerate(shape) if d not in axes]
    return e.reshape(x, kept)


def _igamma_parts(b, a, x, series_terms: int = 40, cf_terms: int = 20):
    """(P, Q) regularized incomplete gamma: Cephes' power series for P where x <= max(a, 1), its
    continued fraction for Q elsewhere; unrolled a fixed number of times (rescaled against
    overflow), which reaches f32 accuracy for the moderate a, x of practical use."""
    logx = b.unary(Op.LOG, b.binary(Op.MAX, x, 1e-38))
    prefix = b.unary(Op.EXP, b.binary(Op.SUB, b.binary(Op.SUB, b.binary(Op.MUL, a, logx), x), lgamma(b, a)))
    # series
    r, cc, ans = a, b.const(1.0, DType.f32, a.shape), b.const(1.0, DType.f32, a.shape)
    for _ in range(series_terms):
        r = b.binary(Op.ADD, r, 1.0)
        cc = b.binary(Op.MUL, cc, b.binary(Op.DIV, x, r))
        ans = b.binary(Op.ADD, ans, cc)
    p_series = b.binary(Op.DIV, b.binary(Op.MUL, ans, prefix), a)
    # continued fraction
    y = b.binary(Op.SUB, 1.0, a)
    z = b.binary(Op.ADD, b.binary(Op.ADD, x, y), 1.0)
    pkm2, qkm2 = b.const(1.0, DType.f32, a.shape), x
    pkm1, qkm1 = b.binary(Op.ADD, x, 1.0), b.binary(Op.MUL, z, x)
    frac = b.binary(Op.DIV, pkm1, qkm1)
    for i in range(1, cf_terms + 1):
        y = b.binary(Op.ADD, y, 1.0)
        z = b.binary(Op.ADD, z, 2.0)
        yc = b.binary(Op.MUL, y, float(i))
        pk = b.binary(Op.SUB, b.binary(Op.MUL, pkm1, z), b.binary(Op.MUL, pkm2, yc))
        qk = b.binary(Op.SUB, b.binary(Op.MUL, qkm1, z), b.binary(Op.MUL, qkm2, yc))
        frac = b.select(b.binary(Op.NE, qk, 0.0), b.binary(Op.DIV, pk, b.select(b.binary(Op.EQ, qk, 0.0), 1.0, qk)), frac)
        pkm2, pkm1, qkm2, qkm1 = pkm1, pk, qkm1, qk
        big = b.binary(Op.GT, b.unary(Op.ABS, pk), 2.0 ** 40)
        pkm2, pkm1, qkm2, qkm1 = [b.select(big, b.binary(Op.MUL, v, 2.0 ** -40), v) for v in (pkm2, pkm1, qkm2, qkm1)]
    q_cf = b.binary(Op.MUL, frac, prefix)
    use_cf = b.binary(Op.AND, b.binary(Op.GT, x, 1.0), b.binary(Op.GT, x, a))
    p = b.select(use_cf, b.binary(Op.SUB, 1.0, q_cf), p_series)
    q = b.select(use_cf, q_cf, b.binary(Op.SUB, 1.0, p_series))
    bad = b.binary(Op.OR, b.binary(Op.LE, a, 0.0), b.binary(Op.LT, x, 0.0))
    bad = b.binary(Op.OR, bad, b.binary(Op.OR, b.binary(Op.NE, a, a), b.binary(Op.NE, x, x)))
    zero_x = b.binary(Op.EQ, x, 0.0)
    p = b.select(bad, math.nan, b.select(zero_x, 0.0, p))
    q = b.select(bad, math.nan, b.select(zero_x, 1.0, q))
    return p, q


@_f32
def igamma(b, a, x):
    return _igamma_parts(b, a, x)[0]


@_f32
def igammac(b, a, x):
    return _igamma_parts(b, a, x)[1]


def _betacf(b, a, bb, x, terms: int):
    """Numerical Recipes' continued fraction for the incomplete beta (modified Lentz)."""
    tiny = 1e-30
    guard = lambda v: b.select(b.binary(Op.LT, b.unary(Op.ABS, v), tiny), tiny, v)
    qab, qap, qam = b.binary(Op.ADD, a, bb), b.binary(Op.ADD, a, 1.0), b.binary(Op.SUB, a, 1.0)
    c = b.const(1.0, DType.f32, a.shape)
    d = b.binary(Op.DIV, 1.0, guard(b.binary(Op.SUB, 1.0, b.binary(Op.DIV, b.binary(Op.MUL, qab, x), qap))))
    h = d
    for m in range(1, terms + 1):
        m2 = 2.0 * m
        aa = b.binary(Op.DIV, b.binary(Op.MUL, b.binary(Op.MUL, b.binary(Op.SUB, bb, float(m)), x), float(m)),
                      b.binary(Op.MUL, b.binary(Op.ADD, qam, m2), b.binary(Op.ADD, a, m2)))
        d = b.binary(Op.DIV, 1.0, guard(b.binary(Op.ADD, 1.0, b.binary(Op.MUL, aa, d))))
        c = guard(b.binary(Op.ADD, 1.0, b.binary(Op.DIV, aa, c)))
        h = b.binary(Op.MUL, h, b.binary(Op.MUL, d, c))
        aa = b.binary(Op.DIV, b.unary(Op.NEG, b.binary(Op.MUL, b.binary(Op.MUL, b.binary(Op.ADD, a, float(m)),
                                                                        b.binary(Op.ADD, qab, float(m))), x)),
                      b.binary(Op.MUL, b.binary(Op.ADD, a, m2), b.binary(Op.ADD, qap, m2)))
        d = b.binary(Op.DIV, 1.0, guard(b.binary(Op.ADD, 1.0, b.binary(Op.MUL, aa, d))))
        c = guard(b.binary(Op.ADD, 1.0, b.binary(Op.DIV, aa, c)))
        h = b.binary(Op.MUL, h, b.binary(Op.MUL, d, c))
    return h


@_f32
def betainc(b, a, bb, x, terms: int = 16):
    """Regularized incomplete beta I_x(a, b): the continued fraction on the side where it
    converges (x < (a+1)/(a+b+2)), the symmetry 1 - I_{1-x}(b, a) on the other."""
    xs = b.binary(Op.MIN, b.binary(Op.MAX, x, 1e-30), 1.0 - 1e-7)
    lbt = b.binary(Op.ADD, b.binary(Op.SUB, b.binary(Op.SUB, lgamma(b, b.binary(Op.ADD, a, bb)), lgamma(b, a)), lgamma(b, bb)),
                   b.binary(Op.ADD, b.binary(Op.MUL, a, b.unary(Op.LOG, xs)),
                            b.binary(Op.MUL, bb, b.unary(Op.LOG1P, b.unary(Op.NEG, xs)))))
    bt = b.unary(Op.EXP, lbt)
    front = b.binary(Op.LT, x, b.binary(Op.DIV, b.binary(Op.ADD, a, 1.0), b.binary(Op.ADD, b.binary(Op.ADD, a, bb), 2.0)))
    direct = b.binary(Op.DIV, b.binary(Op.MUL, bt, _betacf(b, a, bb, xs, terms)), a)
    mirror = b.binary(Op.SUB, 1.0, b.binary(Op.DIV, b.binary(Op.MUL, bt, _betacf(b, bb, a, b.binary(Op.SUB, 1.0, xs), terms)), bb))
    out = b.select(front, direct, mirror)
    out = b.select(b.binary(Op.EQ, x, 0.0), 0.0, b.select(b.binary(Op.EQ, x, 1.0), 1.0, out))
    bad = b.binary(Op.OR, b.binary(Op.OR, b.binary(Op.LT, x, 0.0), b.binary(Op.GT, x, 1.0)),
                   b.binary(Op.OR, b.binary(Op.LE, a, 0.0), b.binary(Op.LE, bb, 0.0)))
    return b.select(bad, math.nan, out)


def nextafter(b, x, y):
    """The neighbouring f32 of x toward y, from x's magnitude: x + sign·ulp(x), where ulp is
    2^(exponent - 23) for normal numbers (the IR has no bitcast; subnormals take the smallest step)."""
    a = b.unary(Op.ABS, x)
    e = b.unary(Op.FLOOR, b.binary(Op.DIV, b.unary(Op.LOG, b.binary(Op.MAX, a, 1.1754944e-38)), math.log(2.0)))
    # floor(log2) may be off by one next to powers of two: fix with an exact compare
    p = b.binary(Op.POW, b.const(2.0, DType.f32), e)
    e = b.select(b.binary(Op.GT, p, a), b.binary(Op.SUB, e, 1.0), e)
    p = b.binary(Op.POW, b.const(2.0, DType.f32), e)
    e = b.select(b.binary(Op.LE, b.binary(Op.MUL, p, 2.0), a), b.binary(Op.ADD, e, 1.0), e)
    up = b.binary(Op.POW, b.const(2.0, DType.f32), b.binary(Op.SUB, b.binary(Op.MAX, e, -126.0), 23.0))
    # stepping down from an exact power of two: the spacing below is half
    p = b.binary(Op.POW, b.const(2.0, DType.f32), e)
    toward_zero = b.binary(Op.LT, b.binary(Op.MUL, y, b.unary(Op.SIGN, x)), a)
    down = b.select(b.binary(Op.AND, b.binary(Op.EQ, a, p), b.binary(Op.GT, e, -126.0)),
                    b.binary(Op.MUL, up, 0.5), up)
    step = b.select(toward_zero, b.unary(Op.NEG, down), up)
    mag = b.binary(Op.ADD, a, step)
    out = b.select(b.binary(Op.LT, x, 0.0), b.unary(Op.NEG, mag), mag)
    tiny = b.const(1.4e-45, DType.f32)
    out = b.select(b.binary(Op.EQ, x, 0.0), b.select(b.binary(Op.GT, y, 0.0), tiny, b.unary(Op.NEG, tiny)), out)
    out = b.select(b.binary(Op.EQ, x, y), y, out)
    nan = b.binary(Op.OR, b.binary(Op.NE, x, x), b.binary(Op.NE, y, y))
    return b.select(nan, math.nan, out)
