"""The torch twins: nn.Modules for mlp, gpt2, llama and moe, written out op by op.

Rules these modules follow so that torch.export (and shardc's frontend) can capture them:
- no data-dependent Python control flow, no .item(), no in-place ops (index_add, not index_add_);
- attention is written explicitly (no F.scaled_dot_product_attention), so the captured graph
  shows the matmuls, the mask and the softmax that the partitioner shards;
- no buffers: the causal mask and the RoPE tables are computed in forward from arange, so every
  state tensor is a parameter and `dict(module.named_parameters())` is the whole state;
- activations take their dtype from the parameters/inputs, so `.to(torch.bfloat16)` just works.

The math matches jax_models.py line for line; parameter names and shapes come from configs.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Masked attention scores are set to this (not -inf): exp() of it underflows to exactly 0, it is
# finite in bf16, and it keeps inf out of the graph (padded/sharded rows never produce NaN).
MASK_VALUE = -1e9


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim), causal) v for q, k, v of shape [B, H, S, head_dim]."""
    seq = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale
    mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=q.device))
    scores = torch.where(mask, scores, MASK_VALUE)
    return torch.softmax(scores, dim=-1) @ v


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """[B, S, n_head * hd] -> [B, n_head, S, hd]."""
    b, s, d = x.shape
    return x.reshape(b, s, n_head, d // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, hd] -> [B, S, H * hd]."""
    b, h, s, hd = x.shape
    return x.transpose(1, 2).reshape(b, s, h * hd)


# ----------------------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dims = cfg.dims()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):  # unrolled at trace time: the depth is static
            x = layer(x)
            if i < last:
                x = F.gelu(x)  # erf form
        return x


# ---------------------------------------------------------------------------------------- GPT-2
class GPT2Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # fused QKV: rows are [q; k; v]
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=-1)
        y = causal_attention(split_heads(q, self.n_head), split_heads(k, self.n_head),
                             split_heads(v, self.n_head))
        return self.c_proj(merge_heads(y))


class GPT2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2 uses the tanh form


class GPT2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # pre-norm residual blocks
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied LM head: logits [B, S, vocab]


# ---------------------------------------------------------------------------------------- Llama
class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq: int, head_dim: int, theta: float, dtype, device):
    """cos, sin of shape [S, head_dim] for positions 0..S-1 (computed in float32, then cast)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    pos = torch.arange(seq, dtype=torch.float32, device=device)
    angles = pos[:, None] * inv_freq[None, :]               # [S, hd/2]
    angles = torch.cat([angles, angles], dim=-1)            # [S, hd]: rotate-half layout
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate pairs (x[i], x[i + hd/2]) of x [B, H, S, hd] by position-dependent angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def repeat_kv(x, n_rep: int):
    """[B, KV, S, hd] -> [B, KV * n_rep, S, hd]; query head h reads kv head h // n_rep."""
    b, kv, s, hd = x.shape
    return x[:, :, None].expand(b, kv, n_rep, s, hd).reshape(b, kv * n_rep, s, hd)


class LlamaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        kv_dim = cfg.n_kv_head * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin):
        q = apply_rope(split_heads(self.q_proj(x), self.n_head), cos, sin)
        k = apply_rope(split_heads(self.k_proj(x), self.n_kv_head), cos, sin)
        v = split_heads(self.v_proj(x), self.n_kv_head)
        n_rep = self.n_head // self.n_kv_head
        y = causal_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep))
        return self.o_proj(merge_heads(y))


class LlamaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        cos, sin = rope_tables(ids.shape[1], self.cfg.head_dim, self.cfg.rope_theta, x.dtype, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


# ------------------------------------------------------------------------------------------ MoE
class MoEBlock(nn.Module):
    """x + MoE(x): top-k routing into fixed-capacity expert buffers; overflow tokens are dropped.

    Every shape is static (capacity comes from the static token count), so the graph has no
    data-dependent shapes: routing decisions only change index *values*.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        e, d, f = cfg.n_experts, cfg.d_model, cfg.d_ff
        self.router = nn.Linear(d, e, bias=False)
        self.w_in = nn.Parameter(torch.empty(e, d, f))
        self.w_out = nn.Parameter(torch.empty(e, f, d))

    def forward(self, x):
        b, s, d = x.shape
        n_tok, n_exp, k = b * s, self.cfg.n_experts, self.cfg.top_k
        cap = self.cfg.capacity(n_tok)
        xt = x.reshape(n_tok, d)

        # Route: softmax over experts, keep the top k, renormalize their weights to sum to 1.
        probs = torch.softmax(self.router(xt), dim=-1)                    # [T, E]
        gate, expert = torch.topk(probs, k, dim=-1)                       # [T, k]
        gate = gate / gate.sum(-1, keepdim=True)

        # Flatten the T*k assignments choice-major (all first choices, then all second choices),
        # so first choices get capacity before any second choice.
        expert = expert.transpose(0, 1).reshape(k * n_tok)
        gate = gate.transpose(0, 1).reshape(k * n_tok)
        token = torch.arange(k * n_tok, device=x.device) % n_tok

        # Slot of each assignment in its expert's buffer = number of earlier assignments to it.
        onehot = (expert[:, None] == torch.arange(n_exp, device=x.device)[None, :]).to(torch.int64)
        slot = ((torch.cumsum(onehot, dim=0) - 1) * onehot).sum(-1)      # [T*k]
        keep = slot < cap                                                # over capacity: dropped
        dest = torch.where(keep, expert * cap + slot, 0)                 # row in the [E*C, D] buffer

        # Dispatch: scatter-add token rows into the buffer (dropped ones add zeros to row 0).
        src = xt.index_select(0, token) * keep[:, None].to(x.dtype)
        buf = torch.zeros(n_exp * cap, d, dtype=x.dtype, device=x.device).index_add(0, dest, src)

        # All experts at once: batched matmuls over stacked weights [E, D, F] and [E, F, D].
        h = F.gelu(torch.einsum("ecd,edf->ecf", buf.reshape(n_exp, cap, d), self.w_in))
        out = torch.einsum("ecf,efd->ecd", h, self.w_out).reshape(n_exp * cap, d)

        # Combine: gather each assignment's result, weight it, sum a token's k choices.
        y = out.index_select(0, dest) * (gate * keep.to(x.dtype))[:, None]
        y = y.reshape(k, n_tok, d).sum(0)
        return x + y.reshape(b, s, d)


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(MoEBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


MODULES = {"mlp": MLP, "gpt2": GPT2, "llama": Llama, "moe": MoE}
LOSS_KIND = {"mlp": "mse", "gpt2": "xent", "llama": "xent", "moe": "mse"}


# ------------------------------------------------------------------------------------- helpers
def build(cfg, device="meta") -> nn.Module:
    """An uninitialized module of cfg's family (on the meta device by default: no memory)."""
    if cfg.family not in MODULES:
        from shardc.errors import Error
        raise Error(f"model family {cfg.family!r} has a JAX twin only; capture it with frontend='jax'")
    with torch.device(device):
        return MODULES[cfg.family](cfg)


def load_numpy(module: nn.Module, arrays: dict[str, np.ndarray], device="cpu") -> nn.Module:
    """Materialize a (meta) module on `device` with the given float32 arrays as its parameters."""
    module = module.to_empty(device=device)
    params = dict(module.named_parameters())
    if set(params) != set(arrays):
        raise AssertionError(f"parameter names differ from config: {sorted(set(params) ^ set(arrays))}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(arrays[name]))
    return module


def loss(cfg, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error (mlp, moe) or mean next-token cross entropy over all B*S positions."""
    if LOSS_KIND[cfg.family] == "mse":
        return F.mse_loss(out, targets)
    # as the JAX twin: the mean over all positions (F.cross_entropy divides by the count of
    # targets other than ignore_index, a data-dependent sum that a data-parallel step reduces too)
    return -F.log_softmax(out, dim=-1).gather(-1, targets[..., None]).mean()


def to_jax(module: nn.Module) -> dict:
    """Flat {name: jax.Array} of a module's parameters, same names, shapes and dtypes."""
    import jax.numpy as jnp

    out = {}
    for name, p in module.named_parameters():
        t = p.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bf16: go through float32 (exact)
            out[name] = jnp.asarray(t.float().numpy(), dtype=jnp.bfloat16)
        else:
            out[name] = jnp.asarray(t.numpy())
    return out
