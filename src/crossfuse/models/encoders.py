"""Per-modality sequence encoder: the default encoder of every fusion strategy.

`SequenceEncoder`: linear projection ``D_m -> D``, a learned absolute positional embedding
(as in BERT/ViT: Devlin et al., 2019; Dosovitskiy et al., 2021) and optional pre-norm
`SelfAttentionBlock`s. Masked (invalid) positions are zeroed on entry, so their values never
reach the output, and they are excluded as keys of every attention.

The fusion plumbing that used to live here (`masked_mean`, `ConcatPoolHead`, `check_fusion_args`,
`check_modality_inputs`, `sequence_encoders`) is in ``crossfuse.fusion``; the old import path
still resolves to it.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor, nn

from crossfuse.blocks import AttentionLayers, SelfAttentionBlock, StackOutput, run_blocks, select_layers

DEFAULT_MAX_LENGTH = 1024
"""Positional-embedding size of a modality whose `ModalitySpec.length` is None."""


class SequenceEncoder(nn.Module):
    """Project one modality's tokens to width ``dim``, add positions, run self-attention blocks.

    Args:
        in_dim: feature size D_m of the modality.
        dim: model width D.
        max_length: number of learned positions; longer inputs raise ValueError.
        num_layers: number of `SelfAttentionBlock`s (0 = projection + positions only).
        num_heads, mlp_ratio, dropout: passed to the blocks.

    Shapes:
        x: (B, N, D_m) with N <= max_length  mask: (B, N) bool, True = valid, or None
        ->  StackOutput(x: (B, N, D), weights: {layer: (B, H, N, N)} for the layers selected by
        ``return_attention`` (True = the last block; empty when ``num_layers == 0``))
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        max_length: int = DEFAULT_MAX_LENGTH,
        num_layers: int = 0,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for arg, value in (("in_dim", in_dim), ("dim", dim), ("max_length", max_length)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}: expected a positive int, got {value!r}")
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers: expected an int >= 0, got {num_layers!r}")
        self.in_dim, self.dim, self.max_length = in_dim, dim, max_length
        self.proj = nn.Linear(in_dim, dim)
        self.position = nn.Parameter(torch.empty(max_length, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers))

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attention: AttentionLayers = False) -> StackOutput:
        """Shapes: x: (B, N, D_m)  mask: (B, N) bool or None  ->  StackOutput((B, N, D), {layer: (B, H, N, N)})."""
        length = x.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"x: sequence length {length} exceeds the encoder's max_length={self.max_length} "
                f"(shape {tuple(x.shape)}); set ModalitySpec.length to the longest sequence"
            )
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        h = self.proj(x) + self.position[:length]
        return run_blocks(self.blocks, h, select_layers(return_attention, len(self.blocks)), mask=mask)


_MOVED_TO_FUSION = {
    "masked_mean": "crossfuse.fusion.head",
    "ConcatPoolHead": "crossfuse.fusion.head",
    "check_fusion_args": "crossfuse.fusion.base",
    "check_modality_inputs": "crossfuse.fusion.base",
    "sequence_encoders": "crossfuse.fusion.base",
}


def __getattr__(name: str) -> object:
    # Lazy, so that crossfuse.fusion (which imports this module) is not imported in a cycle.
    if name in _MOVED_TO_FUSION:
        return getattr(importlib.import_module(_MOVED_TO_FUSION[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
