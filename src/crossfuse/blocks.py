"""Pre-norm transformer blocks built from `CrossAttention`.

- `SelfAttentionBlock`: self-attention + MLP (a stream looks at itself).
- `CrossAttentionBlock`: self-attention, cross-attention into another stream, MLP
  (the decoder layer of Vaswani et al., 2017).
- `BidirectionalCrossAttentionBlock`: stream A queries B and B queries A in the same layer,
  both from the layer's inputs (co-attention, ViLBERT: Lu et al., 2019).
- `GatedCrossAttentionBlock`: cross-attention and MLP behind tanh gates initialised at 0,
  so the query stream leaves the block unchanged at initialisation (Flamingo: Alayrac et al., 2022).

Every block returns one type whatever it is asked for: `BlockOutput` (`BidirectionalOutput` for the
two-stream block), whose ``weights`` are None unless ``return_attention=True``. Which layers of a
stack compute weights (the slow explicit path) is chosen once with `select_layers`; `run_blocks`
threads a stream through a stack and keeps the weights of those layers only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from crossfuse.attention import CrossAttention, KVCache

AttentionLayers = bool | str | Collection[int]
"""Which layers' attention weights a model returns: False (none), ``"last"``, ``"all"``, or layer
indices (0-based, negative counts from the end). True keeps each model's historical meaning."""


class BlockOutput(NamedTuple):
    """A block's updated stream and, when asked, its attention weights.

    Shapes: x: (B, N, D)  weights: (B, H, N, M) or None.
    """

    x: Tensor
    weights: Tensor | None = None


class BidirectionalOutput(NamedTuple):
    """Both updated streams of a co-attention block and, when asked, both directions' weights.

    Shapes: a: (B, Na, Da)  b: (B, Nb, Db)  a_to_b: (B, H, Na, Nb) or None  b_to_a: (B, H, Nb, Na) or None.
    """

    a: Tensor
    b: Tensor
    a_to_b: Tensor | None = None
    b_to_a: Tensor | None = None


class StackOutput(NamedTuple):
    """A stack's output stream and the weights of the selected layers, keyed by 0-based layer index.

    Shapes: x: (B, N, D)  weights: {layer: (B, H, N, M)} (empty when no layer was selected).
    """

    x: Tensor
    weights: dict[int, Tensor]


def select_layers(which: AttentionLayers, num_layers: int, true_means: str = "last") -> frozenset[int]:
    """Indices of the layers whose weights the caller asks for, validated once.

    ``which``: False -> none; ``"last"`` -> {num_layers - 1}; ``"all"`` -> every layer; ints (a list,
    tuple or set) -> those layers (negative ones count from the end); True -> ``true_means`` ("last"
    or "all"), so a model keeps the meaning its ``return_attention=True`` always had. A stack of 0 layers has
    no weights to give: "last", "all" and True select nothing there; indices out of range raise.
    """
    if which is True:
        which = true_means
    if which is False or which is None:
        return frozenset()
    if which == "last":
        return frozenset({num_layers - 1}) if num_layers else frozenset()
    if which == "all":
        return frozenset(range(num_layers))
    if isinstance(which, str) or not isinstance(which, Collection):
        raise ValueError(f"return_attention: expected a bool, 'last', 'all' or a list of layer indices, got {which!r}")
    chosen = set()
    for index in which:
        if not isinstance(index, int) or isinstance(index, bool) or not -num_layers <= index < num_layers:
            raise ValueError(
                f"return_attention: layer indices must be ints in [{-num_layers}, {num_layers}), got {which!r}"
            )
        chosen.add(index % num_layers)
    return frozenset(chosen)


def run_blocks(
    blocks: Sequence[nn.Module], x: Tensor, layers: Collection[int], **inputs: Tensor | bool | None
) -> StackOutput:
    """Run ``x`` through ``blocks`` in order; only the layers in ``layers`` compute weights.

    ``inputs`` are passed to every block unchanged (``mask``, ``context``, ``context_mask``, ``causal``).
    Shapes: x: (B, N, D)  ->  StackOutput(x: (B, N, D), weights: {layer: (B, H, N, M)}).
    """
    weights: dict[int, Tensor] = {}
    for i, block in enumerate(blocks):
        x, w = block(x, return_attention=i in layers, **inputs)
        if w is not None:
            weights[i] = w
    return StackOutput(x, weights)


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
        """Shapes: x: (B, N, D)  ->  (B, N, D)."""
        return self.net(x)


class SelfAttentionBlock(nn.Module):
    """Pre-norm self-attention block.

    Shapes: x: (B, N, D)  mask: (B, N) bool, True = valid  ->  BlockOutput(x: (B, N, D),
    weights: (B, H, N, N) with ``return_attention``, else None).
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
    ) -> BlockOutput:
        """Shapes: x: (B, N, D)  mask: (B, N) bool or None  ->  BlockOutput((B, N, D), (B, H, N, N) or None)."""
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
        return BlockOutput(x, weights)


class CrossAttentionBlock(nn.Module):
    """Self-attention, then cross-attention into ``context``, then MLP; all pre-norm residual.

    Shapes:
        x: (B, N, D)  context: (B, M, Dc)  mask: (B, N) bool  context_mask: (B, M) bool
        ->  BlockOutput(x: (B, N, D), weights: cross-attention (B, H, N, M) with ``return_attention``, else None)

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
    ) -> BlockOutput:
        """Shapes: x: (B, N, D)  context: (B, M, Dc) (None when ``cross_cache`` holds it)  ->  BlockOutput."""
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
        return BlockOutput(x, weights)


class BidirectionalCrossAttentionBlock(nn.Module):
    """Co-attention: A attends to B and B attends to A, both computed from the inputs.

    Each direction is its own `CrossAttention` call (two SDPA kernels); no shared
    Na x Nb score matrix is built.

    Shapes:
        a: (B, Na, Da)  b: (B, Nb, Db)  a_mask: (B, Na) bool  b_mask: (B, Nb) bool
        ->  BidirectionalOutput(a', b' with the input shapes, a_to_b: (B, H, Na, Nb),
        b_to_a: (B, H, Nb, Na); the weights are None unless ``return_attention``)
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
    ) -> BidirectionalOutput:
        """Shapes: a: (B, Na, Da)  b: (B, Nb, Db)  masks: (B, N) bool or None  ->  BidirectionalOutput."""
        na, nb = self.norm_a(a), self.norm_b(b)
        ra = self.a_to_b(na, nb, context_mask=b_mask, return_attention=return_attention)
        rb = self.b_to_a(nb, na, context_mask=a_mask, return_attention=return_attention)
        (ua, wa), (ub, wb) = (ra, rb) if return_attention else ((ra, None), (rb, None))
        a, b = a + ua, b + ub
        a = a + self.mlp_a(self.norm_mlp_a(a))
        b = b + self.mlp_b(self.norm_mlp_b(b))
        return BidirectionalOutput(a, b, wa, wb)


class GatedCrossAttentionBlock(nn.Module):
    """Tanh-gated cross-attention + MLP (Flamingo); identity on ``x`` at initialisation.

    ``x + tanh(alpha_attn) * attn(x, context)`` then ``x + tanh(alpha_mlp) * mlp(x)``,
    with both alphas starting at 0, so a pretrained stream starts unchanged.

    Shapes: x: (B, N, D)  context: (B, M, Dc)  context_mask: (B, M) bool  ->  BlockOutput(x: (B, N, D),
    weights: (B, H, N, M) with ``return_attention``, else None).

    ``mask`` (the query stream's) is accepted so every cross block is called alike, and ignored:
    without self-attention the query tokens never see each other.
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
        *,
        mask: Tensor | None = None,
    ) -> BlockOutput:
        """Shapes: x: (B, N, D)  context: (B, M, Dc)  context_mask: (B, M) bool or None  ->  BlockOutput."""
        result = self.cross(
            self.norm_cross(x),
            self.norm_context(context),
            context_mask=context_mask,
            return_attention=return_attention,
        )
        update, weights = result if return_attention else (result, None)
        x = x + self.alpha_attn.tanh() * update
        x = x + self.alpha_mlp.tanh() * self.mlp(self.norm_mlp(x))
        return BlockOutput(x, weights)
