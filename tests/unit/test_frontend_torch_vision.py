"""The torch rules for vision and numerics ops (torch_vision_ops, torch_special_ops, torch_decomp):
each case is checked against torch on fresh random inputs through evaluate, and the windowed ones
also through a 2-device simulate with the batch split."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import shardc
from shardc import Mesh, P

RTOL, ATOL = 1e-4, 1e-5


def _check(fn, *args, simulate=False):
    want = fn(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    g = shardc.from_torch(fn, args)
    outs = [("evaluate", g.evaluate(*args))]
    if simulate:
        prog = shardc.partition(g, Mesh({"x": 2}), specs={g.input_names[0]: P("x", *[None] * (args[0].dim() - 1))})
        outs.append(("simulate", prog.simulate(*args)))
    for stage, got in outs:
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            b = b.numpy()
            assert a.shape == b.shape, f"{stage} output {i}: shape {a.shape} != {b.shape}"
            if b.dtype.kind in "biu":
                np.testing.assert_array_equal(a, b, err_msg=f"{stage} output {i}")
            else:
                np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=f"{stage} output {i}")


def _convs(x, w, w1):
    return (F.conv2d(x, w, padding=1, groups=2), F.conv2d(x, w, stride=2, padding=2, dilation=2, groups=2),
            F.conv2d(x, w1, bias=w1[:, 0, 0, 0]), F.conv1d(x[:, :, 0], w[:, :, 0], padding=1, groups=2),
            F.conv_transpose2d(x, w[:4], stride=2, padding=1, output_padding=1, groups=2),
            F.conv3d(x[:, :, None], w[:, :, None], padding=(0, 1, 1), groups=2))


def _pools(x, w, w1):
    v, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    av, ai = F.adaptive_max_pool2d(x, (3, 3), return_indices=True)
    return (v, i, F.max_pool2d(x, 2, ceil_mode=True), F.max_pool1d(x[:, :, 0], 3, 2, dilation=2),
            F.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            F.avg_pool2d(x, 2, divisor_override=3), F.avg_pool1d(x[:, :, 0], 3, 1, 1), av, ai,
            F.adaptive_avg_pool2d(x, (3, 5)), F.adaptive_avg_pool3d(x[:, :, None], (1, 3, 3)))


def _norms_and_resize(x, w, w1):
    return (F.group_norm(x, 2, w1[:4, 0, 0, 0], w1[4:8, 0, 0, 0]), F.batch_norm(x, None, None, training=True),
            F.instance_norm(x), F.interpolate(x, scale_factor=2), F.interpolate(x, size=(5, 7), mode="bilinear"),
            F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), F.unfold(x, 3, padding=1))


@pytest.mark.parametrize("fn", [_convs, _pools, _norms_and_resize], ids=lambda f: f.__name__.strip("_"))
def test_windows(fn):
    x = torch.randn(2, 4, 9, 9)
    _check(fn, x, torch.randn(6, 2, 3, 3), torch.randn(8, 4, 1, 1), simulate=True)


def _scans_and_indexing(x, i):
    v, vi = torch.cummax(x, 1)
    m, mi = torch.cummin(x, 0)
    return (torch.cumprod(x, 1), v, vi, m, mi, torch.logcumsumexp(x, 1), x.prod(1), x.prod(),
            x.unfold(1, 3, 2), torch.diagonal(x, 1), torch.diagonal(x[None], -1, 1, 2), x.index_copy(1, i, x[:, :3]),
            x.index_fill(0, i[:2] % 4, -1.0), torch.searchsorted(torch.sort(x, 1)[0], x[:, :3]),
            torch.bucketize(x, torch.tensor([-1.0, 0.0, 1.0]), right=True),
            x.scatter_reduce(1, i.expand(4, 3), x[:, :3], "amax"), x.scatter_reduce(1, i.expand(4, 3), x[:, :3], "prod"),
            x.scatter_reduce(1, i.expand(4, 3), x[:, :3], "mean", include_self=False),
            x.index_reduce(1, i, x[:, :3], "amin"), x.index_select(0, i[:0]), x.as_strided((3, 2), (2, 3), 1),
            x.put(i, x[0, :3]), x.masked_scatter(x > 0, -x.flip(0)))


def test_scans_and_indexing():
    _check(_scans_and_indexing, torch.randn(4, 6), torch.tensor([0, 5, 2]))


def _math(x, y, p, u):
    f, e = torch.frexp(x)
    return (torch.asin(u), torch.acos(u), torch.atan(x), torch.atan2(x, y), x.sinh(), x.cosh(), x.asinh(),
            (p + 1).acosh(), u.atanh(), x.tan(), torch.lgamma(x), torch.digamma(p), torch.polygamma(2, p),
            torch.special.zeta(p + 1, p), torch.i0(x), torch.special.i0e(x), torch.special.i1e(x),
            torch.special.i1(x), torch.igamma(p, p.flip(0)), torch.igammac(p, p.flip(0)), torch.hypot(x, y),
            torch.copysign(x, y), torch.signbit(y), torch.fmax(x, y), torch.fmin(x, y), torch.erfc(x),
            torch.nextafter(x, y), f, e, torch.cdist(x, y), torch.addbmm(x, x[None], y.T[None]))


def test_math():
    x, y = torch.randn(5, 5), torch.randn(5, 5)
    _check(_math, x, y, torch.rand(5, 5) * 3 + 0.1, torch.rand(5, 5) * 1.8 - 0.9)


def test_index_select_of_a_scalar_is_not_a_crash():
    """OpInfo's index_select sample crashed with a ZeroDivisionError (0-d input)."""
    _check(lambda x, i: x.index_select(0, i), torch.tensor(3.0), torch.tensor([0]))
    _check(lambda x, i: x.index_select(0, i), torch.randn(3), torch.zeros(0, dtype=torch.long))


def test_unsupported_decomposition_names_the_op_and_line():
    def fn(x):
        return torch.nonzero(x)
    with pytest.raises(shardc.UnsupportedOpError, match=r"aten\.nonzero.*test_frontend_torch_vision\.py:\d+"):
        shardc.from_torch(fn, (torch.randn(3),))


def test_chebyshev_and_friends():
    """Degree as a tensor: torch's recurrence up to 6, closed forms beyond, inside and outside [-1, 1]."""
    x = torch.cat([torch.rand(40) * 6 - 3, torch.tensor([1.0, -1.0, 0.0, 0.5])]).repeat(8)
    n = torch.arange(-1, 15, 2).float().repeat_interleave(44)
    sp = torch.special
    _check(lambda x, n: (sp.chebyshev_polynomial_t(x, n), sp.chebyshev_polynomial_u(x, n),
                         sp.chebyshev_polynomial_v(x, n), sp.chebyshev_polynomial_w(x, n),
                         sp.shifted_chebyshev_polynomial_t(x / 2 + 0.5, n), sp.ndtri(torch.sigmoid(x)),
                         sp.erfcx(4 * x), sp.log_ndtr(4 * x),
                         torch.diagonal_scatter(x[:16].reshape(4, 4), x[:3], 1)), x, n)


def test_bessel():
    x = torch.cat([torch.rand(60) * 30 - 5, torch.tensor([0.0, 1e-6, 5.0, 5.0001])])
    sp = torch.special
    _check(lambda x: (sp.bessel_j0(x), sp.bessel_j1(x), sp.bessel_y0(x), sp.bessel_y1(x), sp.modified_bessel_k0(x),
                      sp.modified_bessel_k1(x), sp.scaled_modified_bessel_k0(x), sp.scaled_modified_bessel_k1(x)), x)
