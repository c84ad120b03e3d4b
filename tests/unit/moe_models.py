"""Mixture-of-experts layers written the way Hugging Face transformers writes them (Mixtral's
top-k router and experts; DeepSeek-V3's sigmoid router with a correction bias, group-limited
choice and a shared expert), with the three experts implementations transformers offers:
`grouped_mm` (tokens sorted by expert, histc counts, cumsum offsets, torch._grouped_mm),
`batched_mm` (each token-slot gathers its expert's weights, bmm) and `eager` (a Python loop over
the experts hit, nonzero()). Written here so the tests need no transformers package."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MoeConfig:
    hidden_size: int = 16
    intermediate_size: int = 8
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    n_group: int = 2
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    experts_implementation: str = "grouped_mm"


def _grouped_linear(x, weight, offsets):
    return torch._grouped_mm(x, weight.transpose(-2, -1), offs=offsets)


def grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    num_top_k = top_k_index.size(-1)
    num_tokens = hidden_states.size(0)
    hidden_dim = hidden_states.size(-1)
    token_idx = torch.arange(num_tokens).unsqueeze(1).expand(-1, num_top_k).reshape(-1)
    sample_weights = top_k_weights.reshape(-1)
    expert_ids = top_k_index.reshape(-1)
    selected_hidden_states = hidden_states[token_idx]
    perm = torch.argsort(expert_ids)
    inv_perm = torch.argsort(perm)
    expert_ids_g = expert_ids[perm]
    sample_weights_g = sample_weights[perm]
    selected_hidden_states_g = selected_hidden_states[perm]
    num_tokens_per_expert = torch.histc(expert_ids_g.float(), bins=self.num_experts, min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(num_tokens_per_expert, dim=0, dtype=torch.int32)
    gate_up_out = _grouped_linear(selected_hidden_states_g, self.gate_up_proj, offsets)
    gate, up = gate_up_out.chunk(2, dim=-1)
    gated_out = self.act_fn(gate) * up
    out_per_sample_g = _grouped_linear(gated_out, self.down_proj, offsets)
    out_per_sample_g = out_per_sample_g * sample_weights_g.unsqueeze(-1)
    out_per_sample = out_per_sample_g[inv_perm]
    return out_per_sample.view(num_tokens, num_top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


def batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    num_top_k = top_k_index.size(-1)
    num_tokens = hidden_states.size(0)
    hidden_dim = hidden_states.size(-1)
    token_idx = torch.arange(num_tokens).unsqueeze(1).expand(-1, num_top_k).reshape(-1)
    sample_weights = top_k_weights.reshape(-1)
    expert_ids = top_k_index.reshape(-1)
    selected_hidden_states = hidden_states[token_idx]
    selected_gate_up = self.gate_up_proj[expert_ids]
    gate_up_out = torch.bmm(selected_gate_up, selected_hidden_states.unsqueeze(-1)).squeeze(-1)
    gate, up = gate_up_out.chunk(2, dim=-1)
    gated_out = self.act_fn(gate) * up
    selected_down = self.down_proj[expert_ids]
    out_per_sample = torch.bmm(selected_down, gated_out.unsqueeze(-1)).squeeze(-1)
    out_per_sample = out_per_sample * sample_weights.unsqueeze(-1)
    return out_per_sample.view(num_tokens, num_top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


def eager_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    final_hidden_states = torch.zeros_like(hidden_states)
    with torch.no_grad():
        expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit:
        expert_idx = expert_idx[0]
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        current_state = hidden_states[token_idx]
        gate, up = F.linear(current_state, self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
        current = F.linear(self.act_fn(gate) * up, self.down_proj[expert_idx])
        current = current * top_k_weights[token_idx, top_k_pos, None]
        final_hidden_states.index_add_(0, token_idx, current.to(final_hidden_states.dtype))
    return final_hidden_states


EXPERTS = {"grouped_mm": grouped_mm_experts_forward, "batched_mm": batched_mm_experts_forward,
           "eager": eager_experts_forward}


class MixtralExperts(nn.Module):
    def __init__(self, config: MoeConfig):
        super().__init__()
        self.num_experts = config.num_local_experts
        h, i = config.hidden_size, config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.randn(self.num_experts, 2 * i, h) / h ** 0.5)
        self.down_proj = nn.Parameter(torch.randn(self.num_experts, h, i) / i ** 0.5)
        self.act_fn = nn.SiLU()
        self.implementation = config.experts_implementation

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return EXPERTS[self.implementation](self, hidden_states, top_k_index, top_k_weights)


class MixtralTopKRouter(nn.Module):
    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.randn(config.num_local_experts, config.hidden_size) / config.hidden_size ** 0.5)

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight)
        router_probs = F.softmax(router_logits.float(), dim=-1)
        router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
        router_top_value = router_top_value / router_top_value.sum(dim=-1, keepdim=True)
        return router_logits, router_top_value, router_indices


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config: MoeConfig):
        super().__init__()
        self.gate = MixtralTopKRouter(config)
        self.experts = MixtralExperts(config)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        _, top_k_weights, top_k_index = self.gate(hidden_states)
        hidden_states = self.experts(hidden_states, top_k_index, top_k_weights)
        return hidden_states.reshape(batch_size, sequence_length, hidden_dim)


class DeepseekV3MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DeepseekV3TopkRouter(nn.Module):
    def __init__(self, config: MoeConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(config.num_local_experts, config.hidden_size) / config.hidden_size ** 0.5)
        self.register_buffer("e_score_correction_bias", torch.randn(config.num_local_experts) * 0.1)
        self.hidden_dim = config.hidden_size

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, self.hidden_dim)
        return F.linear(hidden_states.float(), self.weight.float())


class DeepseekV3MoE(nn.Module):
    """Routed experts (sigmoid scores, bias-corrected group-limited top-k) plus a shared expert."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.experts = MixtralExperts(config)
        self.gate = DeepseekV3TopkRouter(config)
        self.shared_experts = DeepseekV3MLP(config.hidden_size, config.intermediate_size * config.n_shared_experts)
        self.n_routed_experts = config.num_local_experts
        self.n_group, self.topk_group, self.top_k = config.n_group, config.topk_group, config.num_experts_per_tok

    def route_tokens_to_experts(self, router_logits):
        router_logits = router_logits.sigmoid()
        router_logits_for_choice = router_logits + self.gate.e_score_correction_bias
        group_scores = (router_logits_for_choice.view(-1, self.n_group, self.n_routed_experts // self.n_group)
                        .topk(2, dim=-1)[0].sum(dim=-1))
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = (group_mask.unsqueeze(-1).expand(-1, self.n_group, self.n_routed_experts // self.n_group)
                      .reshape(-1, self.n_routed_experts))
        scores_for_choice = router_logits_for_choice.masked_fill(~score_mask.bool(), 0.0)
        topk_indices = torch.topk(scores_for_choice, k=self.top_k, dim=-1, sorted=False)[1]
        topk_weights = router_logits.gather(1, topk_indices)
        topk_weights = topk_weights / (topk_weights.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_indices, topk_weights * self.config.routed_scaling_factor

    def forward(self, hidden_states):
        residuals = hidden_states
        orig_shape = hidden_states.shape
        router_logits = self.gate(hidden_states)
        topk_indices, topk_weights = self.route_tokens_to_experts(router_logits)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        hidden_states = self.experts(hidden_states, topk_indices, topk_weights).view(*orig_shape)
        return hidden_states + self.shared_experts(residuals)


def sgd_step(model: nn.Module, lr: float = 0.1):
    """(params, x, target) -> (loss, new params): one SGD step on the mean squared error."""
    from torch.func import functional_call, grad_and_value

    def loss_fn(params, x, target):
        return ((functional_call(model, params, (x,)) - target) ** 2).mean()

    def step(params, x, target):
        grads, loss = grad_and_value(loss_fn)(params, x, target)
        return loss, {k: p - lr * grads[k] for k, p in params.items()}
    return step
