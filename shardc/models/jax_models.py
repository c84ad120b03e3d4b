"""The JAX twins: pure functions `forward(cfg, params, *inputs)` over a FLAT params dict.

Keys, shapes and layouts are exactly torch's `named_parameters()` (Linear weights are [out, in],
so a linear layer is `x @ W.T + b`), and each function mirrors its module in torch_models.py op
for op. Token ids are int32 here (JAX's default with x64 off); torch uses int64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MASK_VALUE = -1e9  # same finite mask value as torch_models.MASK_VALUE


def linear(params, name, x, bias=True):
    y = x @ params[name + ".weight"].T
    return y + params[name + ".bias"] if bias else y


def layer_norm(params, name, x, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)  # biased, as torch
    return (x - mean) * jax.lax.rsqrt(var + eps) * params[name + ".weight"] + params[name + ".bias"]


def rms_norm(params, name, x, eps):
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * params[name + ".weight"]


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(head_dim), causal) v for q, k, v of shape [B, H, S, head_dim]."""
    seq = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ jnp.swapaxes(k, -2, -1)) * scale
    mask = jnp.tril(jnp.ones((seq, seq), dtype=jnp.bool_))
    scores = jnp.where(mask, scores, MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1) @ v


def split_heads(x, n_head):
    b, s, d = x.shape
    return x.reshape(b, s, n_head, d // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    b, h, s, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * hd)


# ----------------------------------------------------------------------------------------- MLP
def mlp_forward(cfg, params, x):
    for i in range(cfg.n_layers):
        x = linear(params, f"layers.{i}", x)
        if i < cfg.n_layers - 1:
            x = jax.nn.gelu(x, approximate=False)  # erf form, as torch's F.gelu default
    return x


# ---------------------------------------------------------------------------------------- GPT-2
def gpt2_forward(cfg, params, ids):
    wte = params["wte.weight"]
    pos = jnp.arange(ids.shape[1])
    x = jnp.take(wte, ids, axis=0) + jnp.take(params["wpe.weight"], pos, axis=0)
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        # attention
        qkv = linear(params, p + "attn.c_attn", layer_norm(params, p + "ln_1", x, cfg.ln_eps))
        q, k, v = jnp.split(qkv, 3, axis=-1)
        y = causal_attention(split_heads(q, cfg.n_head), split_heads(k, cfg.n_head),
                             split_heads(v, cfg.n_head))
        x = x + linear(params, p + "attn.c_proj", merge_heads(y))
        # MLP
        h = linear(params, p + "mlp.c_fc", layer_norm(params, p + "ln_2", x, cfg.ln_eps))
        x = x + linear(params, p + "mlp.c_proj", jax.nn.gelu(h, approximate=True))
    return layer_norm(params, "ln_f", x, cfg.ln_eps) @ wte.T  # tied LM head


# ---------------------------------------------------------------------------------------- Llama
def rope_tables(seq, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    pos = jnp.arange(seq, dtype=jnp.float32)
    angles = pos[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def repeat_kv(x, n_rep):
    b, kv, s, hd = x.shape
    return jnp.broadcast_to(x[:, :, None], (b, kv, n_rep, s, hd)).reshape(b, kv * n_rep, s, hd)


def llama_forward(cfg, params, ids):
    x = jnp.take(params["embed_tokens.weight"], ids, axis=0)
    cos, sin = rope_tables(ids.shape[1], cfg.head_dim, cfg.rope_theta, x.dtype)
    n_rep = cfg.n_head // cfg.n_kv_head
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        # attention
        h = rms_norm(params, p + "input_layernorm", x, cfg.norm_eps)
        q = apply_rope(split_heads(linear(params, p + "self_attn.q_proj", h, False), cfg.n_head), cos, sin)
        k = apply_rope(split_heads(linear(params, p + "self_attn.k_proj", h, False), cfg.n_kv_head), cos, sin)
        v = split_heads(linear(params, p + "self_attn.v_proj", h, False), cfg.n_kv_head)
        y = causal_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep))
        x = x + linear(params, p + "self_attn.o_proj", merge_heads(y), False)
        # SwiGLU MLP (Mixtral: a mixture of SwiGLU experts)
        h = rms_norm(params, p + "post_attention_layernorm", x, cfg.norm_eps)
        if cfg.family == "mixtral":
            x = x + mixtral_moe(cfg, params, p + "block_sparse_moe.", h)
            continue
        gate = jax.nn.silu(linear(params, p + "mlp.gate_proj", h, False))
        x = x + linear(params, p + "mlp.down_proj", gate * linear(params, p + "mlp.up_proj", h, False), False)
    return linear(params, "lm_head", rms_norm(params, "norm", x, cfg.norm_eps), False)


# ------------------------------------------------------------------------------------------ MoE
def moe_dispatch(cfg, router_weight, xt):
    """Top-k routing of tokens xt [T, D] into fixed-capacity expert buffers; see
    torch_models.MoEBlock for the algorithm (identical here). Returns (buf [E, C, D], combine),
    where combine(out [E, C, D]) -> [T, D] sums each token's weighted expert results."""
    n_tok, d = xt.shape
    n_exp, k = cfg.n_experts, cfg.top_k
    cap = cfg.capacity(n_tok)

    probs = jax.nn.softmax(xt @ router_weight.T, axis=-1)                     # [T, E]
    gate, expert = jax.lax.top_k(probs, k)                                      # [T, k]
    gate = gate / gate.sum(-1, keepdims=True)

    expert = expert.T.reshape(k * n_tok)          # choice-major: first choices fill capacity first
    gate = gate.T.reshape(k * n_tok)
    token = jnp.arange(k * n_tok) % n_tok

    onehot = (expert[:, None] == jnp.arange(n_exp)[None, :]).astype(jnp.int32)
    slot = ((jnp.cumsum(onehot, axis=0) - 1) * onehot).sum(-1)
    keep = slot < cap
    dest = jnp.where(keep, expert * cap + slot, 0)

    src = jnp.take(xt, token, axis=0) * keep[:, None].astype(xt.dtype)
    buf = jnp.zeros((n_exp * cap, d), dtype=xt.dtype).at[dest].add(src)

    def combine(out):
        y = jnp.take(out.reshape(n_exp * cap, d), dest, axis=0) * (gate * keep.astype(xt.dtype))[:, None]
        return y.reshape(k, n_tok, d).sum(0)

    return buf.reshape(n_exp, cap, d), combine


def moe_block(cfg, params, p, x):
    """x + MoE(x) with GELU experts."""
    b, s, d = x.shape
    buf, combine = moe_dispatch(cfg, params[p + "router.weight"], x.reshape(b * s, d))
    h = jax.nn.gelu(jnp.einsum("ecd,edf->ecf", buf, params[p + "w_in"]), approximate=False)
    out = jnp.einsum("ecf,efd->ecd", h, params[p + "w_out"])
    return x + combine(out).reshape(b, s, d)


def mixtral_moe(cfg, params, p, x):
    """Mixtral's sparse MoE block (no residual): top-k routing into SwiGLU experts."""
    b, s, d = x.shape
    buf, combine = moe_dispatch(cfg, params[p + "gate.weight"], x.reshape(b * s, d))
    gate = jax.nn.silu(jnp.einsum("ecd,edf->ecf", buf, params[p + "w1"]))
    h = gate * jnp.einsum("ecd,edf->ecf", buf, params[p + "w3"])
    return combine(jnp.einsum("ecf,efd->ecd", h, params[p + "w2"])).reshape(b, s, d)


def moe_forward(cfg, params, x):
    for i in range(cfg.n_layers):
        x = moe_block(cfg, params, f"layers.{i}.", x)
    return x


FORWARD = {"mlp": mlp_forward, "gpt2": gpt2_forward, "llama": llama_forward, "moe": moe_forward,
           "mixtral": llama_forward}
LOSS_KIND = {"mlp": "mse", "gpt2": "xent", "llama": "xent", "moe": "mse", "mixtral": "xent"}


def forward(cfg, params, *inputs):
    return FORWARD[cfg.family](cfg, params, *inputs)


def loss(cfg, out, targets):
    """Mean squared error (mlp, moe) or mean next-token cross entropy over all B*S positions."""
    if LOSS_KIND[cfg.family] == "mse":
        return jnp.mean(jnp.square(out - targets))
    logp = jax.nn.log_softmax(out, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
