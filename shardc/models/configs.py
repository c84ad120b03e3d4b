"""Model configurations: one frozen dataclass per model family, plus named size presets.

A config is the single source of truth for a model's parameters: `param_shapes()` lists every
parameter name (the torch `named_parameters()` FQN, also the key of the JAX flat dict) with its
shape, in definition order. The torch modules, the JAX functions and the numpy initializer all
follow it, so the twins cannot drift apart silently (a test checks the torch module against it).

No framework imports here: `import shardc.models` stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from shardc.errors import Error

# Names of normalization modules: their `.weight` is initialized near 1, not near 0.
NORM_MODULES = frozenset({"ln_1", "ln_2", "ln_f", "input_layernorm", "post_attention_layernorm", "norm"})


class _Config:
    """Shared helpers of the config dataclasses (validation and parameter counting)."""

    family: ClassVar[str]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    def _check(self, cond: bool, msg: str) -> None:
        if not cond:
            raise Error(f"invalid {self.family} config {self}: {msg}")


@dataclasses.dataclass(frozen=True)
class MLPConfig(_Config):
    """Stacked Linear layers with GELU (erf) between them: d_in -> d_hidden ... -> d_out."""

    d_in: int = 16
    d_hidden: int = 32
    d_out: int = 8
    n_layers: int = 3
    init_std: float = 0.02
    family: ClassVar[str] = "mlp"

    def __post_init__(self):
        self._check(self.n_layers >= 1, "n_layers must be >= 1")

    def dims(self) -> list[int]:
        return [self.d_in] + [self.d_hidden] * (self.n_layers - 1) + [self.d_out]

    def param_shapes(self):
        dims = self.dims()
        shapes = {}
        for i in range(self.n_layers):
            shapes[f"layers.{i}.weight"] = (dims[i + 1], dims[i])  # Linear weight is [out, in]
            shapes[f"layers.{i}.bias"] = (dims[i + 1],)
        return shapes


@dataclasses.dataclass(frozen=True)
class GPT2Config(_Config):
    """GPT-2 decoder. The position table `wpe` has `seq_len` rows; the MLP width is 4*d_model."""

    vocab_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 32
    seq_len: int = 16
    ln_eps: float = 1e-5
    init_std: float = 0.02
    family: ClassVar[str] = "gpt2"

    def __post_init__(self):
        self._check(self.d_model % self.n_head == 0, "d_model must be a multiple of n_head")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model

    def param_shapes(self):
        d, f = self.d_model, self.d_ff
        shapes = {"wte.weight": (self.vocab_size, d), "wpe.weight": (self.seq_len, d)}
        for i in range(self.n_layer):
            p = f"h.{i}."
            shapes.update({
                p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (3 * d, d), p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (f, d), p + "mlp.c_fc.bias": (f,),
                p + "mlp.c_proj.weight": (d, f), p + "mlp.c_proj.bias": (d,),
            })
        shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})  # LM head is tied to wte: no weight
        return shapes


@dataclasses.dataclass(frozen=True)
class LlamaConfig(_Config):
    """Llama decoder: RMSNorm, RoPE (rotate-half form), grouped-query attention, SwiGLU, untied head."""

    vocab_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2
    d_model: int = 32
    d_ff: int = 64
    seq_len: int = 16
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    family: ClassVar[str] = "llama"

    def __post_init__(self):
        self._check(self.d_model % self.n_head == 0, "d_model must be a multiple of n_head")
        self._check(self.n_head % self.n_kv_head == 0, "n_head must be a multiple of n_kv_head")
        self._check(self.head_dim % 2 == 0, "head_dim must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def param_shapes(self):
        d, f, hd = self.d_model, self.d_ff, self.head_dim
        kv = self.n_kv_head * hd
        shapes = {"embed_tokens.weight": (self.vocab_size, d)}
        for i in range(self.n_layer):
            p = f"layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (d, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, d),
                p + "post_attention_layernorm.weight": (d,),
                p + "mlp.gate_proj.weight": (f, d),
                p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f),
            })
        shapes.update({"norm.weight": (d,), "lm_head.weight": (self.vocab_size, d)})
        return shapes


@dataclasses.dataclass(frozen=True)
class MixtralConfig(LlamaConfig):
    """Llama's decoder with a sparse mixture of SwiGLU experts in place of each MLP (Mixtral):
    a router picks the top-k experts per token; experts run with fixed capacity (MoEConfig's)."""

    n_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.0
    family: ClassVar[str] = "mixtral"

    def capacity(self, n_tokens: int) -> int:
        return MoEConfig.capacity(self, n_tokens)

    def param_shapes(self):
        d, f, e = self.d_model, self.d_ff, self.n_experts
        shapes = {}
        for name, shape in super().param_shapes().items():
            if ".mlp." not in name:
                shapes[name] = shape
            elif name.endswith("mlp.gate_proj.weight"):   # one MoE block where the MLP was
                p = name[:-len("mlp.gate_proj.weight")] + "block_sparse_moe."
                shapes.update({p + "gate.weight": (e, d),       # the router
                               p + "w1": (e, d, f),             # experts' gate projections, stacked
                               p + "w3": (e, d, f),             # up projections
                               p + "w2": (e, f, d)})            # down projections
        return shapes


@dataclasses.dataclass(frozen=True)
class MoEConfig(_Config):
    """Residual mixture-of-experts blocks on [B, S, d_model] activations (top-k routing, fixed capacity)."""

    d_model: int = 32
    d_ff: int = 64
    n_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.0
    n_layers: int = 1
    seq_len: int = 16
    init_std: float = 0.02
    family: ClassVar[str] = "moe"

    def __post_init__(self):
        self._check(1 <= self.top_k <= self.n_experts, "need 1 <= top_k <= n_experts")
        self._check(self.capacity_factor > 0, "capacity_factor must be > 0")

    def capacity(self, n_tokens: int) -> int:
        """Slots per expert: ceil(tokens * top_k / n_experts * capacity_factor), in [1, tokens].

        A static function of the (static) token count, so dispatch buffers have fixed shapes.
        More than n_tokens slots could never fill: a token picks each expert at most once.
        """
        c = math.ceil(n_tokens * self.top_k * self.capacity_factor / self.n_experts - 1e-9)
        return max(1, min(n_tokens, c))

    def param_shapes(self):
        d, f, e = self.d_model, self.d_ff, self.n_experts
        shapes = {}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes.update({  # torch order: a module's own parameters before its submodules'
                p + "w_in": (e, d, f),   # stacked expert weights: experts run as one batched matmul
                p + "w_out": (e, f, d),
                p + "router.weight": (e, d),
            })
        return shapes


# Size presets. "tiny" is for unit tests (seconds on a CPU); its larger init_std makes attention
# patterns and routing non-uniform so that twin comparisons are meaningful. "mini" is a CPU-sized
# model for e2e tests and benchmarks. "small" is GPT-2 small scale (~124M parameters).
PRESETS: dict[str, dict[str, _Config]] = {
    "mlp": {
        "tiny": MLPConfig(d_in=16, d_hidden=32, d_out=8, n_layers=3, init_std=0.2),
        "mini": MLPConfig(d_in=128, d_hidden=512, d_out=128, n_layers=4, init_std=0.05),
        "small": MLPConfig(d_in=1024, d_hidden=4096, d_out=1024, n_layers=4),
    },
    "gpt2": {
        "tiny": GPT2Config(vocab_size=128, n_layer=2, n_head=4, d_model=32, seq_len=16, init_std=0.15),
        "mini": GPT2Config(vocab_size=512, n_layer=4, n_head=4, d_model=128, seq_len=64, init_std=0.05),
        "small": GPT2Config(vocab_size=50257, n_layer=12, n_head=12, d_model=768, seq_len=1024),
    },
    "llama": {
        "tiny": LlamaConfig(vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64,
                            seq_len=16, init_std=0.15),
        "mini": LlamaConfig(vocab_size=512, n_layer=4, n_head=4, n_kv_head=2, d_model=128, d_ff=384,
                            seq_len=64, init_std=0.05),
        # GPT-2-small scale: ~125M parameters (untied 32000-row embedding and head).
        "small": LlamaConfig(vocab_size=32000, n_layer=12, n_head=12, n_kv_head=4, d_model=768,
                             d_ff=2048, seq_len=1024),
    },
    "moe": {
        "tiny": MoEConfig(d_model=32, d_ff=64, n_experts=4, top_k=2, capacity_factor=1.0, n_layers=1,
                          seq_len=16, init_std=0.15),
        "mini": MoEConfig(d_model=128, d_ff=256, n_experts=8, top_k=2, capacity_factor=1.25,
                          n_layers=2, seq_len=64, init_std=0.05),
        "small": MoEConfig(d_model=768, d_ff=3072, n_experts=8, top_k=2, capacity_factor=1.25,
                           n_layers=2, seq_len=1024),
    },
}

DEFAULT_SIZE = "tiny"

# Production-scale configurations: shape-only by default (captured from jax.ShapeDtypeStruct, no
# values), for `shardc.analyze` and `shardc analyze`. Not in the test zoo (no "tiny" size).
PRODUCTION: dict[str, dict[str, _Config]] = {
    # Llama 3 / 3.1 (Meta, "The Llama 3 Herd of Models", Table 3; the released config.json files):
    # GQA with 8 KV heads, SwiGLU, RoPE theta 500,000, vocabulary 128,256, untied embedding and head.
    # Parameter counts: 8.03 B, 70.55 B, 405.85 B.
    "llama3": {
        "8b": LlamaConfig(vocab_size=128256, n_layer=32, n_head=32, n_kv_head=8, d_model=4096, d_ff=14336,
                          seq_len=8192, rope_theta=500000.0),
        "70b": LlamaConfig(vocab_size=128256, n_layer=80, n_head=64, n_kv_head=8, d_model=8192, d_ff=28672,
                           seq_len=8192, rope_theta=500000.0),
        "405b": LlamaConfig(vocab_size=128256, n_layer=126, n_head=128, n_kv_head=8, d_model=16384,
                            d_ff=53248, seq_len=8192, rope_theta=500000.0),
    },
    # GPT-3 175B (Brown et al. 2020, Table 2.1): 96 layers, d_model 12,288, 96 heads, context 2,048,
    # GPT-2's architecture and BPE vocabulary (50,257), tied embedding: 174.6 B parameters.
    "gpt3": {
        "175b": GPT2Config(vocab_size=50257, n_layer=96, n_head=96, d_model=12288, seq_len=2048),
    },
    # Mixtral 8x7B (Jiang et al. 2024, "Mixtral of Experts", Table 1): 32 layers, d_model 4,096,
    # 32 heads with 8 KV heads, experts of width 14,336, 8 experts and top-2 routing, vocabulary
    # 32,000, RoPE theta 1e6: 46.7 B parameters (12.9 B active per token).
    "mixtral": {
        "8x7b": MixtralConfig(vocab_size=32000, n_layer=32, n_head=32, n_kv_head=8, d_model=4096, d_ff=14336,
                              seq_len=4096, rope_theta=1e6, n_experts=8, top_k=2, capacity_factor=1.0),
    },
}


def override(config: _Config, **fields) -> _Config:
    """`config` with some fields replaced; an unknown field is an Error that lists the valid ones."""
    valid = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise Error(f"unknown config field(s) {unknown} for model {config.family!r}; "
                    f"valid fields: {', '.join(valid)}")
    return dataclasses.replace(config, **fields)
