"""Expert-parallel rows of bench/comm_vs_xla.py: a Mixtral-style dropless MoE layer (top-k router,
SwiGLU experts), forward and SGD step, with the experts split over 'ep' (alone, with dp, with tp
inside the experts).

- shardc: the JAX twin as MaxText writes it (argsort by expert, bincount, lax.ragged_dot, unsort)
  through from_jax → partition: the routed rows travel in two ragged all-to-alls.
- XLA: XLA:CPU has no ragged-all-to-all, so XLA gets the GShard form of the same layer (one-hot
  dispatch/combine einsums into per-expert buffers, dropless: capacity = every slot of a token
  group) with the same input shardings and GShard's sharding annotation on the expert buffers
  (experts over 'ep'); its all-to-alls come from resharding those buffers.
The ledger counts a ragged all-to-all as its buffer padded for any routing, as XLA's HLO shapes do."""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

import shardc
from shardc import Mesh, P

E, D, F, K = 8, 64, 32, 2           # experts, hidden, expert hidden, experts per token
LAYOUTS = {"ep": dict(ep=4), "dp×ep": dict(dp=2, ep=4), "ep×tp": dict(ep=4, tp=2)}


def init(batch: int, seq: int = 8, seed: int = 0):
    r = np.random.default_rng(seed)
    f = lambda *s: (r.standard_normal(s) / math.sqrt(s[-2] if len(s) > 1 else 1)).astype(np.float32)  # noqa: E731
    params = {"router": f(E, D), "w1": f(E, D, F), "w3": f(E, D, F), "w2": f(E, F, D)}
    return params, f(batch, seq, D), f(batch, seq, D)


def _route(params, xt):
    w, ids = lax.top_k(jax.nn.softmax(xt @ params["router"].T, axis=-1), K)
    return ids, w / w.sum(-1, keepdims=True)


def ragged_moe(params, x):
    """Dropless MoE, MaxText's way: sort the token-slots by expert, grouped matmuls, unsort."""
    b, s, d = x.shape
    xt = x.reshape(b * s, d)
    ids, w = _route(params, xt)
    ids, w = ids.reshape(-1), w.reshape(-1)
    order = jnp.argsort(ids)
    sizes = jnp.bincount(ids, length=E)
    xs = jnp.repeat(xt, K, axis=0)[order]
    h = jax.nn.silu(lax.ragged_dot(xs, params["w1"], sizes)) * lax.ragged_dot(xs, params["w3"], sizes)
    y = lax.ragged_dot(h, params["w2"], sizes)[jnp.argsort(order)] * w[:, None]
    return y.reshape(b * s, K, d).sum(1).reshape(b, s, d)


def gshard_moe(params, x, groups: int, tokens, experts):
    """The same layer as GShard writes it: tokens in `groups` groups, one-hot dispatch into
    per-expert buffers of capacity K·(group size) (dropless), annotated expert-sharded."""
    b, s, d = x.shape
    xg = x.reshape(groups, b * s // groups, d)
    sg = xg.shape[1]
    ids, w = _route(params, xg.reshape(-1, d))
    ids, w = ids.reshape(groups, sg * K), w.reshape(groups, sg * K)
    hot = jax.nn.one_hot(ids, E, dtype=x.dtype)                               # [g, sg·k, e]
    slot = (jnp.cumsum(hot, axis=1) - 1) * hot                               # place in the expert's buffer
    disp = hot[..., None] * jax.nn.one_hot(slot.sum(-1), sg * K, dtype=x.dtype)[:, :, None, :]  # [g, sg·k, e, c]
    comb = disp * w[..., None, None]
    rows = jnp.repeat(xg, K, axis=1)                                          # [g, sg·k, d]
    buf = lax.with_sharding_constraint(jnp.einsum("gtec,gtd->egcd", disp, rows), experts)
    h = jax.nn.silu(jnp.einsum("egcd,edf->egcf", buf, params["w1"])) * jnp.einsum("egcd,edf->egcf", buf, params["w3"])
    out = lax.with_sharding_constraint(jnp.einsum("egcf,efd->egcd", h, params["w2"]), experts)
    y = lax.with_sharding_constraint(jnp.einsum("egcd,gtec->gtd", out, comb), tokens)
    return y.reshape(groups, sg, K, d).sum(2).reshape(b, s, d)


def sgd(forward):
    def step(params, x, t):
        loss, grads = jax.value_and_grad(lambda p: ((forward(p, x) - t) ** 2).mean())(params)
        return loss, {k: p - 0.1 * grads[k] for k, p in params.items()}
    return step


def specs(axes: dict) -> tuple[dict, P]:
    tok = P(tuple(a for a in ("dp", "ep") if a in axes), None, None)
    w = {"router": P(), "w1": P("ep", None, None), "w3": P("ep", None, None), "w2": P("ep", None, None)}
    if "tp" in axes:
        w.update(w1=P("ep", None, "tp"), w3=P("ep", None, "tp"), w2=P("ep", "tp", None))
    return w, tok


def rows(steps, batch: int, jax_mesh, hlo_collectives, by_kind) -> list[dict]:
    out = []
    for step in steps:
        train = step == "train"
        params, x, t = init(batch)
        for name, axes in LAYOUTS.items():
            row = dict(model="moe-ep", size="layer", step=step, layout=name, mesh=axes, plan=None, frontend="jax",
                       batch=batch, closed_form=None)
            wspec, tok = specs(axes)
            fn = sgd(ragged_moe) if train else ragged_moe
            args = (params, x, t) if train else (params, x)
            t0 = time.perf_counter()
            g = shardc.from_jax(fn, *args)
            row["capture_ms"] = (time.perf_counter() - t0) * 1e3
            user = {"x": tok, **({"t": tok} if train else {"out": tok}),
                    **{f"params['{k}']": v for k, v in wspec.items()},
                    **({f"out[1]['{k}']": v for k, v in wspec.items()} if train else {})}
            t0 = time.perf_counter()
            prog = shardc.partition(g, Mesh(axes), user)
            row["shardc_partition_ms"] = (time.perf_counter() - t0) * 1e3
            row["shardc_bytes"] = sum(c.bytes for c in prog.collectives)
            row["shardc_wire_bytes"] = sum(c.wire_bytes for c in prog.collectives)
            row["shardc_kinds"] = by_kind((c.kind, c.bytes) for c in prog.collectives)
            row["shardc_ledger"] = [dict(kind=c.kind, axes=list(c.axes), bytes=c.bytes, wire_bytes=c.wire_bytes,
                                         tensor=c.tensor, reason=c.reason) for c in prog.collectives]
            row["routed_all_to_all_bytes"] = sum(c.bytes for c in prog.collectives if c.kind == "ragged_all_to_all")
            try:
                row.update(_xla(params, x, t, axes, train, tok, wspec, jax_mesh, hlo_collectives, by_kind))
            except Exception as e:  # a benchmark reports failures as rows
                row["error"] = f"xla: {type(e).__name__}: {e}"
                out.append(row)
                continue
            row["ratio"] = row["shardc_bytes"] / row["xla_bytes"] if row["xla_bytes"] else math.inf
            row["flags"] = [">XLA"] if row["shardc_bytes"] > row["xla_bytes"] else []
            out.append(row)
    return out


def _xla(params, x, t, axes, train, tok, wspec, jax_mesh, hlo_collectives, by_kind) -> dict:
    mesh = jax_mesh(axes)
    tok_axes = tok[0] if isinstance(tok[0], tuple) else (tok[0],)
    groups = math.prod(axes[a] for a in tok_axes)
    rest = tuple(a for a in tok_axes if a != "ep") or None
    experts = NamedSharding(mesh, PartitionSpec("ep", rest, None, None))
    tokens = NamedSharding(mesh, PartitionSpec(tok_axes, None, None))
    fwd = lambda p, xx: gshard_moe(p, xx, groups, tokens, experts)  # noqa: E731
    fn = sgd(fwd) if train else fwd
    named = lambda s: NamedSharding(mesh, PartitionSpec(*s))  # noqa: E731
    psh = {k: named(v) for k, v in wspec.items()}
    in_sh = (psh, named(tok), named(tok)) if train else (psh, named(tok))
    out_sh = (named(P()), psh) if train else named(tok)
    args = (params, x, t) if train else (params, x)
    t0 = time.perf_counter()
    compiled = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh).lower(*args).compile()
    colls = hlo_collectives(compiled.as_text(), math.prod(axes.values()))
    return dict(xla_bytes=sum(c["bytes"] for c in colls), xla_wire_bytes=sum(c["wire"] for c in colls),
                xla_kinds=by_kind((c["kind"], c["bytes"]) for c in colls), xla_async_ops=sum(c["async"] for c in colls),
                xla_lower_compile_ms=(time.perf_counter() - t0) * 1e3)
