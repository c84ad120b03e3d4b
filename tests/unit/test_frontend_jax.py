"""The JAX frontend: every mapped primitive and every zoo model, checked against JAX itself."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import shardc
from shardc import models
from shardc.frontend.jax_ops import RULES
from shardc.ir import Op, parse_graph, verify
from shardc.testing import assert_close, tolerance
from zoo_cases import ZOO

BF16 = jnp.bfloat16


# ---- helpers --------------------------------------------------------------------------------
def f32(*shape):
    return lambda rng: jnp.asarray(rng.standard_normal(shape), jnp.float32)


def bf16(*shape):
    return lambda rng: jnp.asarray(rng.standard_normal(shape), BF16)


def pos(*shape):  # strictly positive: log, sqrt, pow bases
    return lambda rng: jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)


def ints(*shape, lo=-20, hi=20, nonzero=False):
    def make(rng):
        v = rng.integers(lo, hi, shape)
        if nonzero:
            v = np.where(v == 0, 7, v)
        return jnp.asarray(v, jnp.int32)
    return make


def bools(*shape):
    return lambda rng: jnp.asarray(rng.random(shape) < 0.5)


def compare(got, want, tol=None, what="output"):
    """Relative error within the dtype's tolerance (exact for ints and bools); NaNs must sit
    where JAX has them."""
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    tol = tolerance(want.dtype) if tol is None else tol
    got, want = got.astype(np.float32), want.astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaNs differ")
    assert_close(np.where(nan, 0, got), np.where(nan, 0, want), tol=tol, what=what)


def capture(fn, *args):
    """from_jax plus the checks every graph must pass: verifier and print/parse round trip."""
    g = shardc.from_jax(fn, *args)
    verify(g)
    text = str(g)
    assert str(parse_graph(text)) == text
    return g


def check(fn, *args, tol=None, reference=None):
    g = capture(fn, *args)
    want = jax.tree_util.tree_leaves((reference or fn)(*args))
    got = g.evaluate(*args)
    assert len(got) == len(want) == len(g.output_names)
    for name, a, w in zip(g.output_names, got, want):
        w = np.asarray(w)
        compare(a, w, tol=tol, what=name)
    return g


def primitives(jaxpr) -> set:
    """Every primitive name in a (closed) jaxpr, sub-jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else [v]):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    names |= primitives(sub)
    return names


# ---- primitive cases: (id, fn, input makers, primitives it must contain) ----------------------
def _all_ops(x, p):
    return (-x, jnp.abs(x), jnp.sign(x), jnp.exp(x), jnp.log(p), jnp.log1p(p), jnp.sqrt(p), lax.rsqrt(p),
            jnp.tanh(x), jax.nn.sigmoid(x), lax.erf(x), jnp.sin(x), jnp.cos(x), jnp.floor(x), jnp.ceil(x))


def _binary(x, y, p):
    return (x + y, x - y, x * y, x / y, lax.rem(x, y), jnp.maximum(x, y), jnp.minimum(x, y), p ** y,
            x == y, x != y, x < y, x <= y, x > y, x >= y)


def _int_ops(a, b, s):
    return (lax.div(a, b), lax.rem(a, b), a // b, a % b, a & b, a | b, a ^ b, ~a,
            lax.shift_left(a, s), lax.shift_right_arithmetic(a, s), lax.shift_right_logical(a, s))


def _gather_nd(x, i, j):
    oob = x.at[i % 5 - 1, j % 4].get(mode="fill", fill_value=-1.0)  # rows -1 and 3 are out of range
    return x[i % 3, j % 4], x[:, j % 4], x[i % 3], oob


def _wide_windows(x, i):  # a slice next to an index array: windows at known starts
    return x[1:, i % 4], x[:, 1:3, i % 5], x.at[1:, i % 4].add(1.0), x.at[:, 1:3, i % 5].set(0.0)


def _fill_mode(x, i):  # out-of-range indices read NaN (jnp.take's default mode)
    return jnp.take(x, jnp.array([0, 5, -9, 2]), axis=0), jnp.take(x, i % 3, axis=1, mode="clip")


def _scatters(x, i, u):
    idx = jnp.array([0, 2, 0, 1])  # a repeated index accumulates
    return (x.at[idx].add(u), x.at[idx].subtract(u), x.at[jnp.array([3, 1])].set(u[:2]), x.at[:, 1].set(2.0),
            x.at[jnp.array([5, -1])].add(1.0, mode="clip"), x.at[i, i % 3].add(u[:, 0]),  # x[4, ..] dropped
            x.at[jnp.array([4, 0]), jnp.array([2, 1])].set(u[:2, 0]),
            x.at[idx].set(u), x.at[i].set(u))  # repeated indices: the last update wins


def _dynamic(x, s):
    return (lax.dynamic_slice(x, (1, 2), (2, 3)), lax.dynamic_slice(x, (s, s + 1), (2, 3)),
            lax.dynamic_update_slice(x, jnp.ones((2, 3)), (1, 2)),
            lax.dynamic_update_slice(x, jnp.ones((2, 3)), (s, 9)),
            lax.dynamic_update_slice(x, jnp.ones((2, 3)), (s, s - 1)))


def _pads(x, v):
    return (lax.pad(x, 1.5, ((1, 2, 0), (0, 1, 2))), lax.pad(x, 0.0, ((-1, 1, 0), (2, -2, 1))),
            lax.pad(x, v, ((1, 0, 0), (0, 1, 0))), jnp.pad(x, 1))


def _layout(x, y):
    return (jnp.broadcast_to(x[:, None, :], (3, 2, 4)), x.reshape(4, 3), jnp.squeeze(y[:, :1], 1),
            jnp.expand_dims(x, 1), x.T, jnp.flip(x, (0, 1)), x[1:, ::2], jnp.concatenate([x, y], 1),
            *jnp.split(y, [1, 3], axis=1), lax.iota(jnp.int32, 5), jnp.arange(6).reshape(2, 3), jnp.tile(x, (2, 1)))


def _reductions(x, b):
    return (x.sum(0), x.max(1), x.min(), jnp.all(b, 1), jnp.any(b), jnp.argmax(x, 1), jnp.argmin(x, 0),
            jnp.mean(x, 1, keepdims=True), jnp.prod(x, 1), jnp.prod(x))


def _scans(x):
    return (jnp.cumsum(x, 1), lax.cumsum(x, 0, reverse=True), lax.cummax(x, 1), lax.cummin(x, 0, reverse=True),
            jnp.cumsum(x.astype(jnp.int32), 0), jnp.cumprod(x, 1), lax.cumprod(x, 0, reverse=True))


def _sorts(x):
    v, i = lax.top_k(x, 3)
    return v, i, jnp.sort(x, 1), jnp.argsort(x, 0), jnp.sort(x.at[0, 1].set(jnp.nan), 1)


def _dots(a, b, c):
    return (a @ b, jnp.einsum("bij,bjk->bik", c, c.transpose(0, 2, 1)),
            lax.dot_general(a.astype(BF16), b.astype(BF16), (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32))


def _misc(x, y, k):
    return (lax.integer_pow(x, 3), lax.integer_pow(y, -2), lax.square(x), jnp.exp2(x), jnp.expm1(x),
            jnp.tan(x * 0.5), jnp.cbrt(x), lax.erfc(x), lax.erf_inv(jnp.tanh(x)), jnp.isfinite(x / (x > 0)),
            jnp.round(x * 3), lax.round(x * 2), lax.reduce_precision(x, 8, 7), lax.reduce_precision(x, 5, 10),
            lax.clamp(-0.5, x, 0.5), jnp.where(x > 0, x, y), lax.select_n(k, x, y, x * y),
            x.astype(jnp.int32), x.astype(BF16), (x > 0).astype(jnp.float32), jnp.clip(x, -1, 1))


def _identities(x):
    from jax.ad_checkpoint import checkpoint_name
    jax.debug.print("x = {}", x)
    return (lax.stop_gradient(x), jnp.copy(x), jax.device_put(x) * 2, lax.optimization_barrier(x),
            checkpoint_name(x * 3, "tripled"))


def _calls(x):
    @jax.custom_vjp
    def twice(v):
        return 2 * v
    twice.defvjp(lambda v: (2 * v, None), lambda _, g: (2 * g,))
    return jax.jit(jnp.sin)(x), jax.nn.relu(x), jax.nn.softplus(x), twice(x), jax.checkpoint(jnp.cos)(x)


def _control(x, flag):
    total, ys = lax.scan(lambda c, r: (c + r, c * r), jnp.zeros(4), x)
    back = lax.scan(lambda c, r: (c * 0.5 + r, c), jnp.ones(4), x, reverse=True)
    loop = lax.fori_loop(0, 3, lambda i, c: c * 1.5 + i, x)
    counted = lax.while_loop(lambda c: c[0] < 4, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]
    fixed = lax.cond(True, lambda v: v + 1, lambda v: v - 1, x)
    traced = lax.cond(flag > 0, lambda v: v * 2, lambda v: -v, x)
    switch = lax.switch(flag + 1, [jnp.sin, jnp.cos, jnp.tanh], x)
    return total, ys, back, loop, counted, fixed, traced, switch


def _grads(x, w, ids):
    def loss(w, x):
        h = jnp.take(w, ids, axis=0)                              # gather -> scatter-add
        h = h + lax.dynamic_slice(x, (1, 0), (3, 4))              # dynamic_slice -> pad
        h = jnp.cumsum(h, 1) + jnp.max(h, 1, keepdims=True)
        h = h + jnp.take_along_axis(h, jnp.argsort(h, 1)[:, :2], 1).sum(1, keepdims=True)
        h = h.at[ids % 3].set(h[::-1] * 2)                         # scatter JVP: uint32 ids
        return jnp.sum(jax.nn.log_softmax(h) * x[:3]) + jnp.sum(jnp.sort(h, 0)[0] ** 2)
    return jax.grad(loss, argnums=(0, 1))(w, x)


def _windows(x, w):
    """Convolutions (NHWC/HWIO, groups, dilation, strides, transposed) and pooling windows."""
    dn = ("NHWC", "HWIO", "NHWC")
    return (lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2),
            lax.conv_general_dilated(x, w, (2, 1), ((1, 2), (0, 1)), rhs_dilation=(2, 1), dimension_numbers=dn,
                                     feature_group_count=2),
            lax.conv_transpose(x, jnp.concatenate([w, w], 2), (2, 2), "SAME", dimension_numbers=dn),
            lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
            lax.reduce_window(x, jnp.inf, lax.min, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"),
            lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 2, 2, 1), "SAME") / 9,
            lax.cumlogsumexp(x, axis=1, reverse=True), jax.image.resize(x, (2, 10, 10, 4), "bilinear"))


def _special(x, p, u):
    return (jnp.arctan2(x, x[::-1]), jnp.arcsin(u), jnp.arccos(u), jnp.arctan(x), jnp.sinh(x), jnp.cosh(x),
            jnp.arcsinh(x), jnp.arccosh(p + 1), jnp.arctanh(u), lax.lgamma(p),
            # digamma between its poles, away from them: near a pole (or its roots) f32 results
            # of any summation order differ by more than 1e-5 of the largest value (JAX's too)
            lax.digamma(-0.5 + 0.4 * u), lax.bessel_i0e(x),
            lax.bessel_i1e(x), lax.igamma(p, p[::-1]), lax.igammac(p, p[::-1] * 2), lax.betainc(p, p[::-1], u * u),
            lax.nextafter(x, x[::-1]))


def _bits(a, b):
    return lax.population_count(a), lax.clz(a), lax.mulhi(a, b)


def _combining_scatters(x, i):
    return (x.at[i].multiply(x[:4] + 2), x.at[:, i % 3].min(-x[:, :4]), x.at[i].max(x[:4] * 3),
            lax.sort((jnp.round(x), x, -x), dimension=1, num_keys=2))


CASES = [
    ("windows", _windows, [f32(2, 6, 6, 4), f32(3, 3, 2, 6)], {"conv_general_dilated", "reduce_window_max",
                                                             "reduce_window_min", "reduce_window_sum", "cumlogsumexp"}),
    ("special", _special, [f32(3, 4), pos(3, 4), lambda r: jnp.asarray(r.uniform(-0.9, 0.9, (3, 4)), jnp.float32)],
     {"atan2", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "lgamma", "digamma",
      "bessel_i0e", "bessel_i1e", "igamma", "igammac", "regularized_incomplete_beta", "nextafter"}),
    ("bits", _bits, [ints(3, 4, lo=-2**31, hi=2**31 - 1), ints(3, 4, lo=-2**31, hi=2**31 - 1)],
     {"population_count", "clz", "mulhi"}),
    ("combining_scatters", _combining_scatters, [f32(5, 4), ints(4, lo=0, hi=5)],
     {"scatter-mul", "scatter-min", "scatter-max", "sort"}),
    ("unary", _all_ops, [f32(3, 5), pos(3, 5)], {"neg", "abs", "sign", "exp", "log", "log1p", "sqrt", "rsqrt",
                                                 "tanh", "logistic", "erf", "sin", "cos", "floor", "ceil"}),
    ("unary_bf16", _all_ops, [bf16(3, 5), lambda r: pos(3, 5)(r).astype(BF16)], {"logistic"}),
    ("binary", _binary, [f32(3, 4), f32(3, 4), pos(3, 4)], {"add", "sub", "mul", "div", "rem", "max", "min", "pow",
                                                          "eq", "ne", "lt", "le", "gt", "ge"}),
    ("binary_bcast", lambda x, y: (x + 1.0, 2.0 * y, x * y[0]), [f32(3, 4), bf16(3, 4)], {"mul"}),
    ("int", _int_ops, [ints(4, 5), ints(4, 5, nonzero=True), ints(4, 5, lo=0, hi=31)],
     {"div", "rem", "and", "or", "xor", "not", "shift_left", "shift_right_arithmetic", "shift_right_logical"}),
    ("bool", lambda a, b: (a & b, a | b, a ^ b, ~a), [bools(3, 4), bools(3, 4)], {"and", "or", "xor", "not"}),
    ("misc", _misc, [f32(3, 4), pos(3, 4), ints(3, 4, lo=0, hi=3)],
     {"integer_pow", "square", "exp2", "expm1", "tan", "cbrt", "erfc", "erf_inv", "is_finite", "round",
      "reduce_precision", "clamp", "select_n", "convert_element_type"}),
    ("layout", _layout, [f32(3, 4), f32(3, 5)], {"broadcast_in_dim", "reshape", "squeeze", "transpose", "rev",
                                                "slice", "concatenate", "split", "iota", "tile"}),
    ("pad", _pads, [f32(3, 4), f32()], {"pad"}),
    ("reductions", _reductions, [f32(3, 5), bools(3, 5)], {"reduce_sum", "reduce_max", "reduce_min", "reduce_and",
                                                          "reduce_or", "argmax", "argmin", "reduce_prod"}),
    ("scans", _scans, [f32(4, 5)], {"cumsum", "cummax", "cummin", "cumprod"}),
    ("sorts", _sorts, [f32(4, 6)], {"top_k", "sort"}),
    ("ragged_dot", lambda x, w, gs: jax.grad(lambda x, w: (lax.ragged_dot(x, w, gs) ** 2).sum(), (0, 1))(x, w),
     [f32(7, 4), f32(3, 4, 5), lambda r: np.array([2, 0, 4], np.int32)], {"ragged_dot_general"}),
    ("dots", _dots, [f32(3, 4), f32(4, 5), f32(2, 3, 4)], {"dot_general"}),
    ("dynamic", _dynamic, [f32(4, 6), ints(lo=-2, hi=5)], {"dynamic_slice", "dynamic_update_slice"}),
    ("take", lambda x, i: (jnp.take(x, i, axis=0), x[i], x[:, i % 4], jnp.take(x, -1 - i % 3, axis=0)),
     [f32(3, 4), ints(2, 5, lo=0, hi=3)], {"gather"}),
    ("take_along_axis", lambda x, i: jnp.take_along_axis(x, i, axis=1), [f32(3, 6), ints(3, 2, lo=-6, hi=6)],
     {"gather"}),
    ("gather_nd", _gather_nd, [f32(3, 4), ints(5, lo=0, hi=50), ints(5, lo=0, hi=50)], {"gather"}),
    ("gather_windows", _wide_windows, [f32(3, 4, 5), ints(6, lo=0, hi=20)], {"gather", "scatter-add", "scatter"}),
    ("gather_fill", _fill_mode, [f32(3, 4), ints(2, lo=0, hi=9)], {"gather"}),
    ("scatter", _scatters, [f32(4, 3), ints(4, lo=0, hi=5), f32(4, 3)], {"scatter-add", "scatter-sub", "scatter"}),
    ("identities", _identities, [f32(3)], {"stop_gradient", "copy", "device_put", "optimization_barrier", "name",
                                           "debug_print"}),
    ("calls", _calls, [f32(4)], {"jit", "custom_jvp_call", "custom_vjp_call", "remat2"}),
    ("control", _control, [f32(5, 4), ints(lo=-1, hi=2)], {"scan", "while", "cond"}),
    ("grads", _grads, [f32(4, 4), f32(6, 4), ints(3, lo=0, hi=6)], {"add_any", "scatter-add", "pad"}),
]


@pytest.mark.parametrize("name,fn,makers,prims", CASES, ids=[c[0] for c in CASES])
def test_primitive(name, fn, makers, prims, rng):
    args = [make(rng) for make in makers]
    missing = prims - primitives(jax.make_jaxpr(fn)(*args))
    assert not missing, f"case {name} no longer produces {missing}"
    check(fn, *args)


def test_every_rule_has_a_case():
    """Each primitive in the table appears in some case (aliases of other JAX versions aside)."""
    covered = set().union(*(c[3] for c in CASES)) | {"sharding_constraint"}
    aliases = {"pjit", "checkpoint", "closed_call", "core_call", "custom_vjp_call_jaxpr", "copy_p",
               "scatter_add", "scatter_sub", "debug_callback", "ragged_dot", "scatter_mul", "scatter_min", "scatter_max"}
    assert set(RULES) - covered - aliases == set()


# ---- models written here -----------------------------------------------------------------------
def attention(q, k, v):
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -1e9)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, -1), v)


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) * lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def moe_route(x, w, k=2):
    probs = jax.nn.softmax(x @ w, -1)
    gate, expert = lax.top_k(probs, k)
    onehot = jax.nn.one_hot(expert, w.shape[1], dtype=x.dtype)           # [T, k, E]
    return jnp.einsum("tk,tke->te", gate / gate.sum(-1, keepdims=True), onehot)


def embed_mlp(params, ids):
    h = jnp.take(params["emb"], ids, axis=0)
    return jax.nn.gelu(h @ params["w1"]) @ params["w2"]


def matmul_attention(q, k, v):
    """jnp.matmul attention (as the zoo's): at batch 1 it squeezes the batch dim around each dot."""
    s = (q @ jnp.swapaxes(k, -2, -1)) / math.sqrt(q.shape[-1])
    s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -1e9)
    return jax.nn.softmax(s, -1) @ v


SMALL_MODELS = [
    ("attention", attention, [f32(2, 2, 5, 4), f32(2, 2, 5, 4), f32(2, 2, 5, 4)]),
    ("matmul_attention_batch1", matmul_attention, [f32(1, 2, 5, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 4)]),
    ("layer_norm", layer_norm, [f32(3, 8), f32(8), f32(8)]),
    ("cross_entropy", cross_entropy, [f32(6, 10), ints(6, lo=0, hi=10)]),
    ("moe_route", moe_route, [f32(6, 8), f32(8, 4)]),
    ("embed_mlp", embed_mlp, [lambda r: {"emb": f32(10, 8)(r), "w1": f32(8, 16)(r), "w2": f32(16, 4)(r)},
                              ints(2, 3, lo=0, hi=10)]),
]


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("name,fn,makers", SMALL_MODELS, ids=[m[0] for m in SMALL_MODELS])
def test_small_model(name, fn, makers, grad, rng):
    args = [make(rng) for make in makers]
    if grad:  # value and gradient of a fixed linear form of the output, w.r.t. the first argument
        def scalar(a, *rest, f=fn):
            out = f(a, *rest)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape))
        fn = jax.value_and_grad(scalar)
    check(fn, *args)


def test_matmul_keeps_unit_batch_dims_in_the_dot(rng):
    """jnp.matmul's squeeze → dot → broadcast back (and the backward's sums over the size-1 dim)
    are captured as dots with a unit batch dim, read directly by the softmax: the graph a batch
    of two gives, so the fusion rules that rebuild the scores per tile apply at batch 1 too."""
    args = [f32(1, 2, 5, 4)(rng) for _ in range(3)]
    g = check(jax.grad(lambda q, k, v: matmul_attention(q, k, v).sum(), argnums=(0, 1, 2)), *args)
    dots = [n for n in g.nodes if n.op is Op.DOT_GENERAL]
    assert len(dots) >= 4 and all(n.rank == 4 and n.shape[0] == 1 for n in dots), [n.describe() for n in dots]
    for d in dots:  # no operand squeezed from, and no reader putting back, the unit dim
        assert not any(x.inputs and x.inputs[0].shape == (1,) + x.shape for x in d.inputs), d.describe()
        assert not any(u.op in (Op.RESHAPE, Op.BROADCAST) and u.shape == (1,) + d.shape
                       for u in g.nodes if d in u.inputs), d.describe()


# ---- the zoo ---------------------------------------------------------------------------------
def random_adam_state(args, rng):
    """Adam's first step divides a gradient by its own magnitude, so gradients that are zero up to
    rounding would decide the result; a random state from later in training is well conditioned."""
    params = args[0]
    m = {k: jnp.asarray(rng.standard_normal(p.shape) * 1e-2, p.dtype) for k, p in params.items()}
    v = {k: jnp.asarray(rng.uniform(1e-5, 1e-4, p.shape), p.dtype) for k, p in params.items()}
    return (params, {"step": jnp.float32(3.0), "m": m, "v": v}) + tuple(args[2:])


@pytest.mark.parametrize("dtype", [jnp.float32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("model", ZOO)
def test_zoo_forward(model, dtype):
    m = models.get(f"{model}:tiny")
    params, inputs = m.jax_params(dtype=dtype), m.jax_inputs(dtype=dtype)

    def forward(params, *inputs):
        return m.jax_forward(params, *inputs)

    g = check(forward, params, *inputs)  # eager JAX as reference: rounds after each op, as the IR does
    assert g.input_names == [f"params[{k!r}]" for k in sorted(params)] + [f"inputs[{i}]" for i in range(len(inputs))]
    assert g.output_names == ["out"]


# one step per dtype keeps the file fast: Adam in f32 (its state names included), SGD in bf16
# (XLA reduces bf16 in bf16 where the IR sums in f32 and rounds once; Adam's m and v would
# carry those gradient differences past the bf16 tolerance)
@pytest.mark.parametrize("optimizer,dtype", [("sgd", jnp.float32), ("adam", jnp.float32), ("sgd", BF16)],
                         ids=["sgd-f32", "adam-f32", "sgd-bf16"])
@pytest.mark.parametrize("model", ZOO)
def test_zoo_train_step(model, optimizer, dtype, rng):
    m = models.get(f"{model}:tiny")
    step, build = m.jax_train_step(optimizer)
    args = build(m.jax_params(dtype=dtype), dtype=dtype)
    if optimizer == "adam":
        args = random_adam_state(args, rng)
    g = check(step, *args, reference=jax.jit(step))
    params = sorted(args[0])
    assert g.output_names[0] == "out[0]"
    assert g.output_names[1:1 + len(params)] == [f"out[1][{k!r}]" for k in params]
    assert g.input_names[:len(params)] == [f"params[{k!r}]" for k in params]
    if optimizer == "adam":
        assert "opt_state['step']" in g.input_names and "out[2]['step']" in g.output_names
        assert f"opt_state['m'][{params[0]!r}]" in g.input_names


# ---- names, locations, constraints, errors --------------------------------------------------------
def test_names_follow_arguments_and_pytree_paths(rng):
    def fn(params, x, state, *extra):
        y = x @ params["w1"] + state[0]
        return {"loss": jnp.sum(y), "aux": (y, extra[0] * 2)}

    params = {"w1": f32(4, 3)(rng), "b": f32(3)(rng)}
    args = (params, f32(2, 4)(rng), (f32(3)(rng), f32(3)(rng)), f32(2)(rng))
    g = capture(fn, *args)
    assert g.input_names == ["params['b']", "params['w1']", "x", "state[0]", "state[1]", "extra[0]"]
    assert g.output_names == ["out['aux'][0]", "out['aux'][1]", "out['loss']"]
    for got, want in zip(g.evaluate(*args), jax.tree_util.tree_leaves(fn(*args))):
        compare(got, want)
    with pytest.raises(shardc.Error, match="structure"):
        g.evaluate(params, args[1], args[2])  # *extra missing


def test_single_output_is_out_and_tuple_outputs_are_indexed(rng):
    x = f32(3)(rng)
    assert capture(lambda x: x * 2, x).output_names == ["out"]
    assert capture(lambda x: (x, x + 1), x).output_names == ["out[0]", "out[1]"]
    assert capture(lambda x: [x * 2], x).output_names == ["out[0]"]


def test_nodes_carry_the_user_source_line(rng):
    def fn(x):
        y = jnp.tanh(x)
        return y * 2

    line = fn.__code__.co_firstlineno + 1
    g = capture(fn, f32(3)(rng))
    (tanh,) = [n for n in g.nodes if n.op is Op.TANH]
    path, _, lineno = tanh.source.rpartition(":")
    assert int(lineno) == line and path.endswith("test_frontend_jax.py")
    assert not os.path.isabs(path) or not path.startswith(os.getcwd())  # relative under cwd


def test_sharding_constraints_are_recorded(rng):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((2, 4), ("dp", "tp"), axis_types=(AxisType.Auto,) * 2)

    def fn(x, w):
        x = lax.with_sharding_constraint(x, NamedSharding(mesh, P("dp", None)))
        h = lax.with_sharding_constraint(x @ w, NamedSharding(mesh, P(None, ("dp", "tp"))))
        return lax.with_sharding_constraint(jnp.tanh(h)[None], NamedSharding(mesh, P(None, "dp")))

    args = (f32(4, 8)(rng), f32(8, 8)(rng))
    g = check(fn, *args)
    assert g.sharding_constraints == {"constraint_0": ("dp", None), "constraint_1": (None, ("dp", "tp")),
                                      "constraint_2": (None, "dp", None)}
    assert g.node_by_name("constraint_1").shape == (4, 8)


def test_unsupported_primitive_names_it_and_the_line(rng):
    def fn(x):
        return jnp.fft.fft(x).real

    line = fn.__code__.co_firstlineno + 1
    with pytest.raises(shardc.UnsupportedOpError, match=rf"'fft' at .*test_frontend_jax\.py:{line}\b"):
        shardc.from_jax(fn, f32(8)(rng))


def test_data_dependent_loop_is_unsupported(rng):
    def fn(x):
        return lax.while_loop(lambda v: jnp.sum(v) < 100.0, lambda v: v * 2.0, x)

    with pytest.raises(shardc.UnsupportedOpError, match="'while'.*fori_loop"):
        shardc.from_jax(fn, pos(3)(rng))


def test_unsupported_dtype_is_named(rng):
    with pytest.raises(shardc.UnsupportedOpError, match="uint8"):
        shardc.from_jax(lambda x: x.astype(jnp.uint8), f32(3)(rng))


@pytest.mark.parametrize("bad", ["relu", {"act": "relu", "w": np.ones(2, np.float32)}], ids=["str", "dict_of_str"])
def test_non_array_argument_is_a_shardc_error(bad):
    """A string among the arguments: a shardc.Error naming its path, not JAX's TypeError."""
    def fn(x, cfg):
        return x * 2
    with pytest.raises(shardc.Error, match=r"argument cfg(\['act'\])? is a str"):
        shardc.from_jax(fn, np.ones(3, np.float32), bad)
