"""The default fusion head: pool each stream over its valid tokens, concatenate, one linear map.

- `masked_mean`: mean over valid positions; an all-masked row pools to zeros, never NaN.
- `ConcatPoolHead`: per-stream LayerNorm, masked mean pooling, concatenation and one linear head
  that also reports each modality's additive share of the logits (``W_m h_m + b / M``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over valid positions; rows with no valid position give zeros.

    Shapes: x: (B, N, D)  mask: (B, N) bool, True = valid, or None  ->  (B, D)
    """
    if mask is None:
        return x.mean(dim=1)
    weight = mask.to(x.dtype)[..., None]
    return (x * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class HeadOutput(NamedTuple):
    """Logits, the pooled vector they are computed from, and each modality's share of the logits.

    Shapes: logits: (B, C)  pooled: (B, M * D)  modality_logits: {name: (B, C)}
    """

    logits: Tensor
    pooled: Tensor
    modality_logits: dict[str, Tensor]


class ConcatPoolHead(nn.Module):
    """LayerNorm each stream, masked-mean pool, concatenate in ``names`` order, one linear head.

    Because the head is linear in the concatenation, logits split exactly into per-modality
    contributions ``W_m h_m + b / M`` (the OGM-GE decomposition, Peng et al., 2022), which sum
    to the logits.

    Shapes:
        streams: {name: (B, N_m, D)}  masks: {name: (B, N_m) bool or None}
        ->  HeadOutput(logits (B, C), pooled (B, M * D), modality_logits {name: (B, C)})
    """

    def __init__(self, names: Iterable[str], dim: int, num_outputs: int) -> None:
        super().__init__()
        self.names = list(names)
        self.dim = dim
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim) for name in self.names})
        self.head = nn.Linear(dim * len(self.names), num_outputs)

    def forward(self, streams: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]) -> HeadOutput:
        """Shapes: streams: {name: (B, N_m, D)}  masks: {name: (B, N_m) bool or None}  ->  HeadOutput."""
        parts = [masked_mean(self.norms[name](streams[name]), masks.get(name)) for name in self.names]
        pooled = torch.cat(parts, dim=-1)
        logits = self.head(pooled)
        weights = self.head.weight.split(self.dim, dim=1)
        bias = self.head.bias / len(self.names)
        modality_logits = {name: part @ w.T + bias for name, part, w in zip(self.names, parts, weights, strict=True)}
        return HeadOutput(logits, pooled, modality_logits)
