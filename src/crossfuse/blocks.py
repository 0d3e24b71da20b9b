"""Pre-norm transformer blocks built from `CrossAttention`.

- `SelfAttentionBlock`: self-attention + MLP (a stream looks at itself).
- `CrossAttentionBlock`: self-attention, cross-attention into another stream, MLP
  (the decoder layer of Vaswani et al., 2017).
- `BidirectionalCrossAttentionBlock`: stream A queries B and B queries A in the same layer,
  both from the layer's inputs (co-attention, ViLBERT: Lu et al., 2019).
- `GatedCrossAttentionBlock`: cross-attention and MLP behind tanh gates initialised at 0,
  so the query stream leaves the block unchanged at initialisation (Flamingo: Alayrac et al., 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossfuse.attention import CrossAttention, KVCache


class FeedForward(nn.Module):
    """Two-layer GELU MLP applied per token.

    Shapes: x: (B, N, D)  ->  (B, N, D)
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SelfAttentionBlock(nn.Module):
    """Pre-norm self-attention block.

    Shapes: x: (B, N, D)  mask: (B, N) bool, True = valid  ->  (B, N, D)
    (with ``return_attention``: also weights (B, H, N, N)).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, dim, num_heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio, dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        result = self.attn(
            self.norm_attn(x),
            context_mask=mask,
            causal=causal,
            cache=cache,
            return_attention=return_attention,
        )
        update, weights = result if return_attention else (result, None)
        x = x + update
        x = x + self.mlp(self.norm_mlp(x))
        return (x, weights) if return_attention else x


class CrossAttentionBlock(nn.Module):
    """Self-attention, then cross-attention into ``context``, then MLP; all pre-norm residual.

    Shapes:
        x: (B, N, D)  context: (B, M, Dc)  mask: (B, N) bool  context_mask: (B, M) bool
        ->  (B, N, D)  (with ``return_attention``: also cross-attention weights (B, H, N, M))

    ``self_attention=False`` drops the self-attention sub-layer (a pure cross-attention layer).
    For decoding, ``self_cache`` appends keys/values per step and ``cross_cache`` holds the
    projected context once (``KVCache(static=True)``).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        self_attention: bool = True,
    ) -> None:
        super().__init__()
        self.self_block = None
        if self_attention:
            self.norm_self = nn.LayerNorm(dim)
            self.self_block = CrossAttention(dim, dim, num_heads, dropout=dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.cross = CrossAttention(dim, context_dim, num_heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio, dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        causal: bool = False,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if self.self_block is not None:
            x = x + self.self_block(self.norm_self(x), context_mask=mask, causal=causal, cache=self_cache)
        reuse = cross_cache is not None and cross_cache.static and cross_cache.key is not None
        ctx = None if reuse else self.norm_context(context)
        result = self.cross(
            self.norm_cross(x),
            ctx,
            context_mask=context_mask,
            cache=cross_cache,
            return_attention=return_attention,
        )
        update, weights = result if return_attention else (result, None)
        x = x + update
        x = x + self.mlp(self.norm_mlp(x))
        return (x, weights) if return_attention else x


class BidirectionalCrossAttentionBlock(nn.Module):
    """Co-attention: A attends to B and B attends to A, both computed from the inputs.

    Each direction is its own `CrossAttention` call (two SDPA kernels); no shared
    Na x Nb score matrix is built.

    Shapes:
        a: (B, Na, Da)  b: (B, Nb, Db)  a_mask: (B, Na) bool  b_mask: (B, Nb) bool
        ->  (a', b') with the input shapes  (with ``return_attention``: also weights
        {"a->b": (B, H, Na, Nb), "b->a": (B, H, Nb, Na)})
    """

    def __init__(self, dim_a: int, dim_b: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(dim_a), nn.LayerNorm(dim_b)
        self.a_to_b = CrossAttention(dim_a, dim_b, num_heads, dropout=dropout)
        self.b_to_a = CrossAttention(dim_b, dim_a, num_heads, dropout=dropout)
        self.norm_mlp_a, self.norm_mlp_b = nn.LayerNorm(dim_a), nn.LayerNorm(dim_b)
        self.mlp_a, self.mlp_b = (
            FeedForward(dim_a, mlp_ratio, dropout),
            FeedForward(dim_b, mlp_ratio, dropout),
        )

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        a_mask: Tensor | None = None,
        b_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]]:
        na, nb = self.norm_a(a), self.norm_b(b)
        ra = self.a_to_b(na, nb, context_mask=b_mask, return_attention=return_attention)
        rb = self.b_to_a(nb, na, context_mask=a_mask, return_attention=return_attention)
        (ua, wa), (ub, wb) = (ra, rb) if return_attention else ((ra, None), (rb, None))
        a, b = a + ua, b + ub
        a = a + self.mlp_a(self.norm_mlp_a(a))
        b = b + self.mlp_b(self.norm_mlp_b(b))
        if return_attention:
            return a, b, {"a->b": wa, "b->a": wb}
        return a, b


class GatedCrossAttentionBlock(nn.Module):
    """Tanh-gated cross-attention + MLP (Flamingo); identity on ``x`` at initialisation.

    ``x + tanh(alpha_attn) * attn(x, context)`` then ``x + tanh(alpha_mlp) * mlp(x)``,
    with both alphas starting at 0, so a pretrained stream starts unchanged.

    Shapes: x: (B, N, D)  context: (B, M, Dc)  context_mask: (B, M) bool  ->  (B, N, D)
    (with ``return_attention``: also weights (B, H, N, M)).
    """

    def __init__(
        self, dim: int, context_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.cross = CrossAttention(dim, context_dim, num_heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio, dropout)
        self.alpha_attn = nn.Parameter(torch.zeros(1))
        self.alpha_mlp = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        context_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        result = self.cross(
            self.norm_cross(x),
            self.norm_context(context),
            context_mask=context_mask,
            return_attention=return_attention,
        )
        update, weights = result if return_attention else (result, None)
        x = x + self.alpha_attn.tanh() * update
        x = x + self.alpha_mlp.tanh() * self.mlp(self.norm_mlp(x))
        return (x, weights) if return_attention else x
