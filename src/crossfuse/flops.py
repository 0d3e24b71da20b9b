"""Analytic FLOP counts of the fusion strategies' matrix multiplications, per example.

Convention (the one of ``torch.utils.flop_counter``): a matrix product of an (m, k) by a (k, n)
matrix costs ``2 m k n`` FLOPs (one multiply and one add per term). Only matrix products are
counted: projections, the attention products ``Q K^T`` and ``A V``, MLP layers and heads.
Elementwise work (softmax, LayerNorm, GELU, residual adds, pooling) is left out; at the widths of
this library it is a few percent of the total.

For a layer with N_q query tokens, N_k keys, width D and MLP hidden size F = int(D * mlp_ratio)
(Vaswani et al., 2017; Kaplan et al., 2020, Table 1, count the same terms):

- projections of a cross-attention: ``2 N_q D_q D + 2 * 2 N_k D_k D + 2 N_q D D_out``;
- attention core: ``Q K^T`` and ``A V`` each ``2 N_q N_k D`` (summed over heads), so ``4 N_q N_k D``;
- MLP: ``2 * 2 N D F``.

`fusion_flops` mirrors each strategy in ``crossfuse.fusion`` (encoders, fusion layers, head) and
`measured_flops` counts the real model with ``FlopCounterMode`` for comparison (tests check the
two agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

STRATEGIES = ("early", "late", "flatten", "cross", "bicross", "gated")


def linear_flops(tokens: int, in_features: int, out_features: int) -> int:
    """``nn.Linear`` applied to ``tokens`` vectors: ``2 * tokens * in * out``."""
    return 2 * tokens * in_features * out_features


def attention_core_flops(n_query: int, n_key: int, inner_dim: int) -> int:
    """``Q K^T`` plus ``A V`` over all heads: ``4 * Nq * Nk * (H * d_head)``."""
    return 4 * n_query * n_key * inner_dim


def attention_flops(n_query: int, n_key: int, query_dim: int, context_dim: int, inner_dim: int, out_dim: int) -> int:
    """One `CrossAttention` call: Q, K, V and output projections plus the attention core."""
    projections = (
        linear_flops(n_query, query_dim, inner_dim)
        + 2 * linear_flops(n_key, context_dim, inner_dim)
        + linear_flops(n_query, inner_dim, out_dim)
    )
    return projections + attention_core_flops(n_query, n_key, inner_dim)


def feedforward_flops(tokens: int, dim: int, mlp_ratio: float) -> int:
    """`FeedForward`: ``D -> int(D * mlp_ratio) -> D`` on every token."""
    hidden = int(dim * mlp_ratio)
    return linear_flops(tokens, dim, hidden) + linear_flops(tokens, hidden, dim)


def self_attention_block_flops(tokens: int, dim: int, mlp_ratio: float) -> int:
    """`SelfAttentionBlock` on ``tokens`` tokens of width ``dim``: ``8 N D^2 + 4 N^2 D + 4 N D F``."""
    return attention_flops(tokens, tokens, dim, dim, dim, dim) + feedforward_flops(tokens, dim, mlp_ratio)


def cross_attention_block_flops(
    n_query: int, n_context: int, dim: int, mlp_ratio: float, self_attention: bool = True
) -> int:
    """`CrossAttentionBlock`: (self-attention over the queries), cross-attention into the context, MLP."""
    total = attention_flops(n_query, n_context, dim, dim, dim, dim) + feedforward_flops(n_query, dim, mlp_ratio)
    if self_attention:
        total += attention_flops(n_query, n_query, dim, dim, dim, dim)
    return total


def bidirectional_block_flops(n_a: int, n_b: int, dim: int, mlp_ratio: float) -> int:
    """`BidirectionalCrossAttentionBlock`: A queries B, B queries A, an MLP on each stream."""
    return (
        attention_flops(n_a, n_b, dim, dim, dim, dim)
        + attention_flops(n_b, n_a, dim, dim, dim, dim)
        + feedforward_flops(n_a, dim, mlp_ratio)
        + feedforward_flops(n_b, dim, mlp_ratio)
    )


def gated_block_flops(n_query: int, n_context: int, dim: int, mlp_ratio: float) -> int:
    """`GatedCrossAttentionBlock`: cross-attention and MLP (the tanh gates are elementwise)."""
    return cross_attention_block_flops(n_query, n_context, dim, mlp_ratio, self_attention=False)


def sequence_encoder_flops(tokens: int, in_dim: int, dim: int, num_layers: int, mlp_ratio: float) -> int:
    """`SequenceEncoder`: input projection then ``num_layers`` self-attention blocks."""
    return linear_flops(tokens, in_dim, dim) + num_layers * self_attention_block_flops(tokens, dim, mlp_ratio)


def concat_pool_head_flops(num_modalities: int, dim: int, num_outputs: int) -> int:
    """`ConcatPoolHead`: the linear head on the M*D pooled vector plus the per-modality logit split."""
    return linear_flops(1, num_modalities * dim, num_outputs) + num_modalities * linear_flops(1, dim, num_outputs)


def flatten_mlp_flops(lengths: Mapping[str, int], dims: Mapping[str, int], num_outputs: int, config: Any) -> int:
    """`FlattenMLPFusion`: ``2 D sum_m N_m D_m + (L - 1) 2 D^2 + 2 D C``, L = max(1, num_layers)."""
    flat = sum(lengths[name] * dims[name] for name in dims)
    dim = config.dim
    return (
        linear_flops(1, flat, dim)
        + (max(1, config.num_layers) - 1) * linear_flops(1, dim, dim)
        + linear_flops(1, dim, num_outputs)
    )


def fusion_flops(
    strategy: str,
    modalities: Mapping[str, Any],
    num_outputs: int,
    config: Any,
    lengths: Mapping[str, int] | None = None,
) -> int:
    """Matmul FLOPs of one example through ``build_fusion(strategy, modalities, num_outputs, config)``.

    ``lengths`` gives each modality's sequence length; by default ``ModalitySpec.length``.
    Cost of the query-stream strategies (``cross``, ``gated``) with query length N_q, context
    lengths N_c and L fusion layers: encoders + ``L * sum_c block(N_q, N_c)`` + head.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {list(STRATEGIES)}, got {strategy!r}")
    names = list(modalities)
    lengths = {name: (lengths or {}).get(name) or modalities[name].length for name in names}
    missing = [name for name, n in lengths.items() if n is None]
    if missing:
        raise ValueError(f"lengths: no length for modalities {missing}; pass lengths or set ModalitySpec.length")
    dims = {name: modalities[name].dim for name in names}
    dim, ratio, layers = config.dim, config.mlp_ratio, config.num_layers
    if strategy == "flatten":
        return flatten_mlp_flops(lengths, dims, num_outputs, config)
    encoder_layers = config.encoder_layers + (layers if strategy == "late" else 0)
    total = sum(sequence_encoder_flops(lengths[n], dims[n], dim, encoder_layers, ratio) for n in names)
    if strategy == "late":
        return total + len(names) * linear_flops(1, dim, num_outputs)
    if strategy == "early":
        total += layers * self_attention_block_flops(sum(lengths.values()), dim, ratio)
    elif strategy == "bicross":
        total += layers * bidirectional_block_flops(lengths[names[0]], lengths[names[1]], dim, ratio)
    else:  # cross, gated: one query stream attends to every other modality in every layer
        query = names[0] if config.direction == "a->b" else names[1]
        block = cross_attention_block_flops if strategy == "cross" else gated_block_flops
        total += layers * sum(block(lengths[query], lengths[c], dim, ratio) for c in names if c != query)
    return total + concat_pool_head_flops(len(names), dim, num_outputs)


def measured_flops(model: nn.Module, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> int:
    """Matmul FLOPs of one forward pass of ``model`` as counted by ``FlopCounterMode`` (whole batch).

    Attention runs on PyTorch's math backend during the count, so its two products appear as
    ``bmm`` calls (the fused CPU kernel is not in FlopCounterMode's table).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(dict(inputs), None if masks is None else dict(masks))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
