"""Issue 11, item 8: torch.compile of a Hugging Face-style GPT-2 with shardc's backend. Dynamo
lifts every parameter into a graph input; shardc names each by its module path, so Megatron
globs such as "*attn.c_attn.weight" find them, and forward and backward both run partitioned.
The model is written here as transformers' GPT2Model is (Conv1D weights [in, out] used through
addmm, a fused c_attn [d, 3d], split heads, SDPA), without depending on the transformers package."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import shardc
import shardc.torch
from shardc import Mesh, P
from shardc.testing import rel_err


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: a linear layer with its weight stored [in, out]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.randn(nf) * 0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2Attention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim, self.split_size = d, n_head, d // n_head, d
        self.c_attn, self.c_proj = Conv1D(3 * d, d), Conv1D(d, d)

    def _split_heads(self, x):
        return x.view(x.size()[:-1] + (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, hidden_states):
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        query, key, value = self._split_heads(query), self._split_heads(key), self._split_heads(value)
        attn = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        attn = attn.transpose(1, 2).contiguous()
        return self.c_proj(attn.view(attn.size()[:-2] + (self.embed_dim,)))


class GPT2MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(4 * d, d), Conv1D(d, 4 * d)

    def forward(self, h):
        return self.c_proj(F.gelu(self.c_fc(h), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), GPT2Attention(d, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(d), GPT2MLP(d)

    def forward(self, hidden_states):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states))
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2Model(nn.Module):
    def __init__(self, vocab=32, d=16, n_head=2, n_layer=2, n_positions=8):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(n_positions, d)
        self.h = nn.ModuleList([GPT2Block(d, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids=None, position_ids=None):
        if position_ids is None:
            position_ids = torch.arange(input_ids.size(-1), dtype=torch.long).unsqueeze(0)
        hidden_states = self.wte(input_ids) + self.wpe(position_ids)
        for i, block in enumerate(self.h):
            hidden_states = block(hidden_states)
        return self.ln_f(hidden_states)


MEGATRON = {"input_ids": P("dp"),
            "*attn.c_attn.weight": P(None, "tp"), "*attn.c_attn.bias": P("tp"), "*attn.c_proj.weight": P("tp", None),
            "*mlp.c_fc.weight": P(None, "tp"), "*mlp.c_fc.bias": P("tp"), "*mlp.c_proj.weight": P("tp", None)}


def test_torch_compile_names_hf_gpt2_parameters_and_trains(torch_pool):
    torch.manual_seed(0)
    model = GPT2Model()
    ids, target = torch.randint(0, 32, (4, 8)), torch.randn(4, 8, 16)
    ref = copy.deepcopy(model)
    want = ref(ids)
    ((want - target) ** 2).mean().backward()

    torch._dynamo.reset()
    inner = shardc.torch.backend(Mesh(dp=2, tp=2), MEGATRON, world=torch_pool)
    made = []

    def backend(gm, example_inputs):
        made.append(inner(gm, example_inputs))
        return made[-1]

    got = torch.compile(model, backend=backend)(input_ids=ids)
    out_err = rel_err(got.detach().numpy(), want.detach().numpy())
    assert out_err < 1e-5
    ((got - target) ** 2).mean().backward()
    errs = {n: rel_err(p.grad.numpy(), dict(ref.named_parameters())[n].grad.numpy())
            for n, p in model.named_parameters()}
    print(f"output rel. error {out_err:.2e}, max gradient rel. error {max(errs.values()):.2e}")
    assert max(errs.values()) < 1e-5, errs

    (compiled,) = made
    fwd = compiled.shardc.forward.prog
    names = fwd.graph.input_names
    want_names = {f"params[{n!r}]" for n, _ in model.named_parameters()}
    assert want_names <= set(names), sorted(want_names - set(names))
    assert "input_ids" in names
    assert fwd.sharding_of("params['h.1.attn.c_attn.weight']").dims[1].axes == ("tp",)
    assert fwd.sharding_of("params['h.0.mlp.c_proj.weight']").spec() == P("tp", None)
    tp = [c for c in fwd.collectives if c.kind == "all_reduce" and c.axes == ("tp",)]
    assert len(tp) == 4  # Megatron: one per attention and one per MLP, per layer
    bwd = compiled.shardc.backward.prog
    assert bwd.sharding_of("grad['h.0.attn.c_proj.weight']").spec() == P("tp", None)


def test_triton_scatter_into_constant_zeros():
    """AOTAutograd keeps embedding_dense_backward whole: a scatter-add into a splat zeros constant,
    which the Triton scatter kernel starts by a fill (it once looked for a zeros buffer)."""
    grad, idx = torch.randn(4, 8, 16), torch.randint(0, 32, (4, 8))
    fn = lambda g, i: torch.ops.aten.embedding_dense_backward(g, i, 32, -1, False)  # noqa: E731
    g = shardc.from_torch(fn, (grad, idx))
    exe = shardc.compile(shardc.partition(g, Mesh(dp=2), {"g": P("dp"), "i": P("dp")}), target="triton")
    assert any(k.kind == "scatter" for k in exe.kernels)
    assert rel_err(exe.run_interpreted(grad, idx)[0], fn(grad, idx).numpy()) < 1e-6


def test_parallelize_hf_gpt2_called_with_keywords(torch_pool):
    torch.manual_seed(0)
    model = GPT2Model()
    ids, target = torch.randint(0, 32, (4, 8)), torch.randn(4, 8, 16)
    ref = copy.deepcopy(model)
    ((ref(input_ids=ids) - target) ** 2).mean().backward()
    par = shardc.torch.parallelize(model, Mesh(dp=2, tp=2), MEGATRON, world=torch_pool)
    got = par(input_ids=ids)
    ((got - target) ** 2).mean().backward()
    grads = dict(ref.named_parameters())
    errs = {n: rel_err(p.grad.numpy(), grads[n].grad.numpy()) for n, p in model.named_parameters()}
    assert max(errs.values()) < 1e-5, errs
    par(input_ids=ids)
    assert len(par._compiled) == 1
    fwd = par.compiled(input_ids=ids).prog
    assert len([c for c in fwd.collectives if c.kind == "all_reduce" and c.axes == ("tp",)]) == 4
