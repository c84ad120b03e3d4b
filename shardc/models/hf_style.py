"""Hugging Face-style GPT-2 and Llama modules, written here so the tests do not depend on the
transformers package (tests/unit/test_partition_hf.py and bench/comm_vs_xla.py --frontend hf use
them): the same op patterns HF's GPT2Model and LlamaModel produce under
torch.export — Conv1D (addmm on a [b*s, d] view, fused c_attn [d, 3d]), heads split by
view + transpose, F.scaled_dot_product_attention(is_causal=True) (whose math decomposition merges
[b, h, s, hd] into [b*h, s, hd]), RMSNorm in float32, rotary embeddings, GQA's repeat_kv and
SwiGLU. Megatron specs and the closed form of their tensor-parallel communication are below."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Cfg:
    vocab: int = 64
    d: int = 64
    n_head: int = 4
    n_kv_head: int = 4
    n_layer: int = 2
    seq: int = 16
    d_ff: int = 128

    @property
    def hd(self) -> int:
        return self.d // self.n_head

    @staticmethod
    def of(zoo) -> "Cfg":
        """The shapes of a zoo config (shardc.models: GPT2Config, LlamaConfig)."""
        return Cfg(vocab=zoo.vocab_size, d=zoo.d_model, n_head=zoo.n_head,
                   n_kv_head=getattr(zoo, "n_kv_head", zoo.n_head), n_layer=zoo.n_layer, seq=zoo.seq_len,
                   d_ff=getattr(zoo, "d_ff", 4 * zoo.d_model))


# ------------------------------------------------------------------------------------- GPT-2
class Conv1D(nn.Module):
    """HF's GPT-2 linear: weight [nx, nf], y = addmm(bias, x.view(-1, nx), weight)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.05)
        self.bias = nn.Parameter(torch.randn(nf) * 0.05)

    def forward(self, x):
        out = x.size()[:-1] + (self.weight.size(-1),)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(out)


class GPT2Attention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.c_attn = Conv1D(3 * c.d, c.d)
        self.c_proj = Conv1D(c.d, c.d)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.c_attn(x).split(self.c.d, dim=2)
        shape = (b, s, -1, self.c.hd)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, s, -1).contiguous()
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c_fc = Conv1D(c.d_ff, c.d)
        self.c_proj = Conv1D(c.d, c.d_ff)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.d)
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c.d)
        self.mlp = GPT2MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.wte = nn.Embedding(c.vocab, c.d)
        self.wpe = nn.Embedding(c.seq, c.d)
        self.h = nn.ModuleList(GPT2Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


# ------------------------------------------------------------------------------------- Llama
class LlamaRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep: int):
    b, kv, s, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, s, hd).reshape(b, kv * n_rep, s, hd)


class LlamaAttention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.d, c.n_head * c.hd, bias=False)
        self.k_proj = nn.Linear(c.d, c.n_kv_head * c.hd, bias=False)
        self.v_proj = nn.Linear(c.d, c.n_kv_head * c.hd, bias=False)
        self.o_proj = nn.Linear(c.n_head * c.hd, c.d, bias=False)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        shape = (b, s, -1, self.c.hd)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        n_rep = self.c.n_head // self.c.n_kv_head
        y = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True)
        y = y.transpose(1, 2).reshape(b, s, -1).contiguous()
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.gate_proj = nn.Linear(c.d, c.d_ff, bias=False)
        self.up_proj = nn.Linear(c.d, c.d_ff, bias=False)
        self.down_proj = nn.Linear(c.d_ff, c.d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(c.d)
        self.self_attn = LlamaAttention(c)
        self.post_attention_layernorm = LlamaRMSNorm(c.d)
        self.mlp = LlamaMLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.d)
        self.layers = nn.ModuleList(LlamaDecoderLayer(c) for _ in range(c.n_layer))
        self.norm = LlamaRMSNorm(c.d)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).float()  # [1, s]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.c.hd, 2, device=ids.device).float() / self.c.hd))
        freqs = pos[..., None] * inv_freq[None, None, :]                         # [1, s, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


# ------------------------------------------------------------------------------ specs, closed form
def megatron_specs(family: str, tp: str = "tp") -> dict:
    from shardc import P, Strided
    if family == "gpt2":  # Conv1D weights are [in, out]: column-parallel splits dim 1 (q, k, v each)
        return {"*.attn.c_attn.weight": P(None, Strided(tp, 3)), "*.attn.c_attn.bias": P(Strided(tp, 3)),
                "*.attn.c_proj.weight": P(tp, None),
                "*.mlp.c_fc.weight": P(None, tp), "*.mlp.c_fc.bias": P(tp),
                "*.mlp.c_proj.weight": P(tp, None)}
    col, row = P(tp, None), P(None, tp)
    return {"*.self_attn.q_proj.weight": col, "*.self_attn.k_proj.weight": col,
            "*.self_attn.v_proj.weight": col, "*.self_attn.o_proj.weight": row,
            "*.mlp.gate_proj.weight": col, "*.mlp.up_proj.weight": col, "*.mlp.down_proj.weight": row}


def build(family: str, c: Cfg, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (GPT2Model if family == "gpt2" else LlamaModel)(c).eval()


def ids(c: Cfg, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c.vocab, (batch, c.seq), generator=g)


def forward_closed_form(c: Cfg, batch: int, dp: int, itemsize: int = 4) -> int:
    """Megatron forward: 2 all-reduces of (b/dp)·s·h elements per layer."""
    return 2 * c.n_layer * (batch // dp) * c.seq * c.d * itemsize


# ----------------------------------------------------------------------------------- training
class LMHead(nn.Module):
    """The model with a language-model head (GPT-2's tied to wte, Llama's its own)."""

    def __init__(self, family: str, c: Cfg):
        super().__init__()
        self.family = family
        self.model = (GPT2Model if family == "gpt2" else LlamaModel)(c)
        if family != "gpt2":
            self.lm_head = nn.Linear(c.d, c.vocab, bias=False)

    def forward(self, ids):
        x = self.model(ids)
        if self.family == "gpt2":
            return x @ self.model.wte.weight.T
        return self.lm_head(x)


def sgd_step(family: str, c: Cfg, batch: int, lr: float = 0.1, seed: int = 0, loss: str = "cross_entropy",
             shape_only: bool = False):
    """(fn, args): fn(params, ids, targets) -> (loss, new_params), one SGD step of next-token
    cross entropy, to capture with from_torch(..., capture="make_fx"). loss="cross_entropy" is
    HF's F.cross_entropy (the mean over targets other than ignore_index: a data-dependent count);
    "mean" the mean over all positions, as the zoo's JAX twins compute it. shape_only: meta
    tensors (no values: a real-size step captured on a CPU)."""
    if loss not in ("cross_entropy", "mean"):
        raise ValueError(f"loss {loss!r}: 'cross_entropy' or 'mean'")
    from torch.func import functional_call, grad_and_value

    torch.manual_seed(seed)
    module = None if shape_only else LMHead(family, c).eval()
    with torch.device("meta"):  # (no values: the weights travel as `params`)
        skeleton = LMHead(family, c)
    module = module or skeleton

    def loss_fn(params, x, y):
        logits = functional_call(skeleton, params, (x,))
        if loss == "mean":
            return -F.log_softmax(logits, dim=-1).gather(-1, y[..., None]).mean()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def step(params, x, y):
        grads, loss = grad_and_value(loss_fn)(params, x, y)
        return loss, {n: p - lr * grads[n] for n, p in params.items()}

    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    if shape_only:
        x = torch.zeros((batch, c.seq), dtype=torch.long, device="meta")
        return step, (params, x, x.clone())
    return step, (params, ids(c, batch), ids(c, batch, seed=2))
