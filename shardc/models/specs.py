"""Tensor-parallel specs for the zoo (Megatron-LM's layout, as gpt-fast writes it): the first
matmul of each pair split by output features, the second by input features, so a block needs
one all-reduce forward; a fused QKV weight split as Megatron does (`Strided`: q, k and v each over
the axis); MoE experts split over the axis (expert parallelism)."""
from __future__ import annotations


def tensor_parallel_specs(name: str, config, axis: str = "tp") -> dict:
    from shardc.partition import P, Strided

    col, col_bias, row = P(axis, None), P(axis), P(None, axis)
    if name == "gpt2":  # the fused [q; k; v] rows: q, k and v each split (whole heads per device)
        qkv = Strided(axis, 3)
        return {"*.attn.c_attn.weight": P(qkv, None), "*.attn.c_attn.bias": P(qkv), "*.attn.c_proj.weight": row,
                "*.mlp.c_fc.weight": col, "*.mlp.c_fc.bias": col_bias, "*.mlp.c_proj.weight": row}
    if name == "llama":
        return {"*.self_attn.q_proj.weight": col, "*.self_attn.k_proj.weight": col,
                "*.self_attn.v_proj.weight": col, "*.self_attn.o_proj.weight": row,
                "*.mlp.gate_proj.weight": col, "*.mlp.up_proj.weight": col, "*.mlp.down_proj.weight": row}
    if name == "mlp":
        specs = {}
        for i in range(config.n_layers - config.n_layers % 2):
            if i % 2 == 0:
                specs[f"layers.{i}.weight"], specs[f"layers.{i}.bias"] = col, col_bias
            else:
                specs[f"layers.{i}.weight"] = row
        return specs
    if name == "moe":
        return {"*.w_in": P(axis), "*.w_out": P(axis)}
    if name == "mixtral":  # Megatron attention; experts split over the axis (expert parallelism)
        attn = {k: v for k, v in tensor_parallel_specs("llama", config, axis).items() if "self_attn" in k}
        return {**attn, "*.block_sparse_moe.w1": P(axis), "*.block_sparse_moe.w3": P(axis),
                "*.block_sparse_moe.w2": P(axis)}
    raise KeyError(name)
