"""Bessel functions of the first and second kind (J, Y) and modified of the second kind (K, and
K·exp(x)), orders 0 and 1, as torch computes them: Cephes' rational and Chebyshev approximations
(coefficients copied from ATen/native/Math.h), in f32."""
from __future__ import annotations

import math

from ..ir import DType, Op

J0_PP = (0.0007969367292973471, 0.08283523921074408, 1.239533716464143, 5.447250030587687, 8.74716500199817,
         5.303240382353949, 1.0,)
J0_PQ = (0.0009244088105588637, 0.08562884743544745, 1.2535274390105895, 5.470977403304171,
         8.761908832370695, 5.306052882353947, 1.0,)
J0_QP = (-0.011366383889846916, -1.2825271867050931, -19.553954425773597, -93.20601521237683,
         -177.68116798048806, -147.07750515495118, -51.41053267665993, -6.050143506007285,)
J0_QQ = (64.3178256118178, 856.4300259769806, 3882.4018360540163, 7240.467741956525, 5930.727011873169,
         2062.0933166032783, 242.0057402402914,)
J0_RP = (-4794432209.782018, 1956174919465.5657, -249248344360967.72, 9708622510473064.0,)
J0_RQ = (499.563147152651, 173785.4016763747, 48440965.83399621, 11185553704.535683, 2112775201154.892,
         310518229857422.56, 3.1812195594320496e+16, 1.7108629408104315e+18,)
J1_PP = (0.0007621256162081731, 0.07313970569409176, 1.1271960812968493, 5.112079511468076,
         8.424045901417724, 5.214515986823615, 1.0,)
J1_PQ = (0.0005713231280725487, 0.06884559087544954, 1.105142326340617, 5.073863861286015,
         8.399855543276042, 5.209828486823619, 1.0,)
J1_QP = (0.05108625947501766, 4.982138729512334, 75.82382841325453, 366.7796093601508, 710.8563049989261,
         597.4896124006136, 211.68875710057213, 25.207020585802372,)
J1_QQ = (74.23732770356752, 1056.4488603826283, 4986.410583376536, 9562.318924047562, 7997.041604473507,
         2826.1927851763908, 336.0936078106983,)
J1_RP = (-899971225.7055594, 452228297998.19403, -72749424522181.83, 3682957328638529.0,)
J1_RQ = (620.8364781180543, 256987.25675774884, 83514679.14319493, 22151159547.97925, 4749141220799.914,
         784369607876235.9, 8.952223361846274e+16, 5.322786203326801e+18,)
Y0_PP = (0.0007969367292973471, 0.08283523921074408, 1.239533716464143, 5.447250030587687, 8.74716500199817,
         5.303240382353949, 1.0,)
Y0_PQ = (0.0009244088105588637, 0.08562884743544745, 1.2535274390105895, 5.470977403304171,
         8.761908832370695, 5.306052882353947, 1.0,)
Y0_QP = (-0.011366383889846916, -1.2825271867050931, -19.553954425773597, -93.20601521237683,
         -177.68116798048806, -147.07750515495118, -51.41053267665993, -6.050143506007285,)
Y0_QQ = (64.3178256118178, 856.4300259769806, 3882.4018360540163, 7240.467741956525, 5930.727011873169,
         2062.0933166032783, 242.0057402402914,)
Y0_YP = (15592.436785523574, -14663929.59039716, 5435264770.518765, -982136065717.9115, 87590639439536.7,
         -3466283033847297.0, 4.4273326857256984e+16, -1.8495080043698668e+16,)
Y0_YQ = (1041.2835366425984, 626107.330137135, 268919633.39381415, 86400248710.3935, 20297961275010.555,
         3171577528429750.5, 2.5059625617265306e+17,)
Y1_PP = (0.0007621256162081731, 0.07313970569409176, 1.1271960812968493, 5.112079511468076,
         8.424045901417724, 5.214515986823615, 1.0,)
Y1_PQ = (0.0005713231280725487, 0.06884559087544954, 1.105142326340617, 5.073863861286015,
         8.399855543276042, 5.209828486823619, 1.0,)
Y1_QP = (0.05108625947501766, 4.982138729512334, 75.82382841325453, 366.7796093601508, 710.8563049989261,
         597.4896124006136, 211.68875710057213, 25.207020585802372,)
Y1_QQ = (74.23732770356752, 1056.4488603826283, 4986.410583376536, 9562.318924047562, 7997.041604473507,
         2826.1927851763908, 336.0936078106983,)
Y1_YP = (1263204747.9017804, -647355876379.1603, 114509511541823.73, -8127702555013251.0,
         2.024394757135949e+17, -7.788771962659501e+17,)
Y1_YQ = (594.3015923461282, 235564.09294306856, 73481194.44597217, 18760131610.870617, 3882312774962.3857,
         620557727146953.8, 6.871410873553005e+16, 3.9727060811656064e+18,)


def _horner(b, coeffs, z):
    p = b.const(coeffs[0], DType.f32, z.shape)
    for c in coeffs[1:]:
        p = b.binary(Op.ADD, b.binary(Op.MUL, p, z), c)
    return p


def _asymptotic(b, a, order: int, second: bool):
    """x > 5: the Hankel-type expansion in z = 25/x^2 (a = |x| or x)."""
    pre = {(0, False): "J0", (1, False): "J1", (0, True): "Y0", (1, True): "Y1"}[(order, second)]
    c = globals()
    safe = b.select(b.binary(Op.LE, a, 5.0), 6.0, a)
    z = b.binary(Op.DIV, 25.0, b.binary(Op.MUL, safe, safe))
    pp, pq = _horner(b, c[pre + "_PP"], z), _horner(b, c[pre + "_PQ"], z)
    qp, qq = _horner(b, c[pre + "_QP"], z), _horner(b, c[pre + "_QQ"], z)
    phase = b.binary(Op.SUB, safe, math.pi / 4 if order == 0 else 3 * math.pi / 4)
    s, co = b.unary(Op.SIN, phase), b.unary(Op.COS, phase)
    p, q = b.binary(Op.DIV, pp, pq), b.binary(Op.MUL, b.binary(Op.DIV, 5.0, safe), b.binary(Op.DIV, qp, qq))
    mix = b.binary(Op.ADD, b.binary(Op.MUL, p, s), b.binary(Op.MUL, q, co)) if second else \
        b.binary(Op.SUB, b.binary(Op.MUL, p, co), b.binary(Op.MUL, q, s))
    return b.binary(Op.DIV, b.binary(Op.MUL, mix, 0.797884560802865355879892119868763737), b.unary(Op.SQRT, safe))


def j0(b, x):
    a = b.unary(Op.ABS, x)
    z = b.binary(Op.MUL, a, a)
    small = b.binary(Op.DIV, b.binary(Op.MUL, b.binary(Op.MUL, b.binary(Op.SUB, z, 5.78318596294678452118),
                                                        b.binary(Op.SUB, z, 30.4712623436620863991)),
                                      _horner(b, J0_RP, z)), _horner(b, J0_RQ, z))
    small = b.select(b.binary(Op.LT, a, 1e-5), b.binary(Op.SUB, 1.0, b.binary(Op.DIV, z, 4.0)), small)
    return b.select(b.binary(Op.LE, a, 5.0), small, _asymptotic(b, a, 0, False))


def j1(b, x):
    a = b.unary(Op.ABS, x)
    z = b.binary(Op.MUL, a, a)
    small = b.binary(Op.MUL, b.binary(Op.MUL, b.binary(Op.MUL, b.binary(Op.DIV, _horner(b, J1_RP, z), _horner(b, J1_RQ, z)), a),
                                      b.binary(Op.SUB, z, 14.6819706421238932572)), b.binary(Op.SUB, z, 49.2184563216946036703))
    out = b.select(b.binary(Op.LE, a, 5.0), small, _asymptotic(b, a, 1, False))
    return b.select(b.binary(Op.LT, x, 0.0), b.unary(Op.NEG, out), out)


def y0(b, x):
    z = b.binary(Op.MUL, x, x)
    logx = b.unary(Op.LOG, b.binary(Op.MAX, x, 1e-38))
    small = b.binary(Op.ADD, b.binary(Op.DIV, _horner(b, Y0_YP, z), _horner(b, Y0_YQ, z)),
                     b.binary(Op.MUL, b.binary(Op.MUL, logx, 0.636619772367581343075535053490057448), j0(b, x)))
    out = b.select(b.binary(Op.LE, x, 5.0), small, _asymptotic(b, x, 0, True))
    return b.select(b.binary(Op.EQ, x, 0.0), -math.inf, b.select(b.binary(Op.LT, x, 0.0), math.nan, out))


def y1(b, x):
    z = b.binary(Op.MUL, x, x)
    safe = b.select(b.binary(Op.LE, x, 0.0), 1.0, x)
    logx = b.unary(Op.LOG, safe)
    small = b.binary(Op.ADD, b.binary(Op.MUL, x, b.binary(Op.DIV, _horner(b, Y1_YP, z), _horner(b, Y1_YQ, z))),
                     b.binary(Op.MUL, b.binary(Op.SUB, b.binary(Op.MUL, j1(b, x), logx), b.binary(Op.DIV, 1.0, safe)),
                              0.636619772367581343075535053490057448))
    out = b.select(b.binary(Op.LE, x, 5.0), small, _asymptotic(b, x, 1, True))
    return b.select(b.binary(Op.EQ, x, 0.0), -math.inf, b.select(b.binary(Op.LT, x, 0.0), math.nan, out))


# ---- modified Bessel functions of the second kind, K0 and K1 (and exp(x)-scaled) -----------------
K0_A = (1.374465435613523e-16, 4.25981614279661e-14, 1.0349695257633842e-11, 1.904516377220209e-09,
        2.5347910790261494e-07, 2.286212103119452e-05, 0.001264615411446926, 0.0359799365153615,
        0.3442898999246285, -0.5353273932339028,)
K0_B = (5.300433772686263e-18, -1.6475804301524212e-17, 5.2103915050390274e-17, -1.678231096805412e-16,
        5.512055978524319e-16, -1.848593377343779e-15, 6.3400764774050706e-15, -2.2275133269916698e-14,
        8.032890775363575e-14, -2.9800969231727303e-13, 1.140340588208475e-12, -4.514597883373944e-12,
        1.8559491149547177e-11, -7.957489244477107e-11, 3.577397281400301e-10, -1.69753450938906e-09,
        8.574034017414225e-09, -4.660489897687948e-08, 2.766813639445015e-07, -1.8317555227191195e-06,
        1.39498137188765e-05, -0.00012849549581627802, 0.0015698838857300533, -0.0314481013119645,
        2.4403030820659555,)
K1_A = (-7.023863479386288e-18, -2.427449850519366e-15, -6.666901694199329e-13, -1.4114883926335278e-10,
        -2.213387630734726e-08, -2.4334061415659684e-06, -0.0001730288957513052, -0.006975723859639864,
        -0.12261118082265715, -0.3531559607765449, 1.5253002273389478,)
K1_B = (-5.756744483665017e-18, 1.7940508731475592e-17, -5.689462558442859e-17, 1.838093544366639e-16,
        -6.057047248373319e-16, 2.038703165624334e-15, -7.019837090418314e-15, 2.4771544244813043e-14,
        -8.976705182324994e-14, 3.3484196660784293e-13, -1.2891739609510289e-12, 5.13963967348173e-12,
        -2.1299678384275683e-11, 9.218315187605006e-11, -4.1903547593418965e-10, 2.015049755197033e-09,
        -1.0345762465678097e-08, 5.7410841254500495e-08, -3.5019606030878126e-07, 2.406484947837217e-06,
        -1.936197974166083e-05, 0.00019521551847135162, -0.002857816859622779, 0.10392373657681724,
        2.7206261904844427,)


def _chebyshev_sum(b, coeffs, t):
    """torch's loop: a_k = t·a_{k-1} - a_{k-2} + c_k; the value is (a_n - a_{n-2}) / 2."""
    p = b.const(0.0, DType.f32, t.shape)
    q = p
    a = b.const(coeffs[0], DType.f32, t.shape)
    for c in coeffs[1:]:
        p, q = q, a
        a = b.binary(Op.ADD, b.binary(Op.SUB, b.binary(Op.MUL, t, q), p), c)
    return b.binary(Op.MUL, b.binary(Op.SUB, a, p), 0.5)


def k(b, x, order: int, scaled: bool, i_scaled):
    """K0/K1 (scaled: times exp(x)); i_scaled(b, x) is exp(-|x|)·I_order(x)."""
    A, B = (K0_A, K0_B) if order == 0 else (K1_A, K1_B)
    small_x = b.select(b.binary(Op.LE, x, 0.0), 1.0, b.binary(Op.MIN, x, 2.0))
    big_x = b.select(b.binary(Op.LE, x, 2.0), 3.0, x)
    s = _chebyshev_sum(b, A, b.binary(Op.SUB, b.binary(Op.MUL, small_x, small_x), 2.0))
    i = b.binary(Op.MUL, i_scaled(b, small_x), b.unary(Op.EXP, small_x))
    lg = b.unary(Op.LOG, b.binary(Op.MUL, small_x, 0.5))
    small = b.binary(Op.SUB, s, b.binary(Op.MUL, lg, i)) if order == 0 else \
        b.binary(Op.ADD, b.binary(Op.MUL, lg, i), b.binary(Op.DIV, s, small_x))
    if scaled:
        small = b.binary(Op.MUL, small, b.unary(Op.EXP, small_x))
    large = b.binary(Op.DIV, _chebyshev_sum(b, B, b.binary(Op.SUB, b.binary(Op.DIV, 8.0, big_x), 2.0)),
                     b.unary(Op.SQRT, big_x))
    if not scaled:
        large = b.binary(Op.MUL, b.unary(Op.EXP, b.unary(Op.NEG, big_x)), large)
    out = b.select(b.binary(Op.LE, x, 2.0), small, large)
    return b.select(b.binary(Op.EQ, x, 0.0), math.inf, b.select(b.binary(Op.LT, x, 0.0), math.nan, out))
