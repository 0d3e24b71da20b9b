"""Per-modality sequence encoder and the stream plumbing every fusion strategy shares.

- `SequenceEncoder`: linear projection ``D_m -> D``, a learned absolute positional embedding
  (as in BERT/ViT: Devlin et al., 2019; Dosovitskiy et al., 2021) and optional pre-norm
  `SelfAttentionBlock`s. Masked (invalid) positions are zeroed on entry, so their values never
  reach the output, and they are excluded as keys of every attention.
- `masked_mean`: mean over valid positions; an all-masked row pools to zeros, never NaN.
- `ConcatPoolHead`: per-stream LayerNorm, masked mean pooling, concatenation and one linear head
  that also reports each modality's additive share of the logits (``W_m h_m + b / M``).
- `check_fusion_args` / `check_modality_inputs`: the boundary checks of the fusion models.

This module does not import ``crossfuse.fusion`` (the fusion strategies import it); modality specs
and configs are read by attribute (``spec.dim``, ``spec.length``, ``config.dim`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from crossfuse.blocks import SelfAttentionBlock
from crossfuse.validation import check_tensor

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
        ->  (B, N, D)  (with ``return_attention``: also the last block's weights (B, H, N, N),
        or None when ``num_layers == 0``)
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

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        length = x.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"x: sequence length {length} exceeds the encoder's max_length={self.max_length} "
                f"(shape {tuple(x.shape)}); set ModalitySpec.length to the longest sequence"
            )
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        h = self.proj(x) + self.position[:length]
        weights = None
        for i, block in enumerate(self.blocks):
            if return_attention and i == len(self.blocks) - 1:
                h, weights = block(h, mask, return_attention=True)
            else:
                h = block(h, mask)
        return (h, weights) if return_attention else h


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over valid positions; rows with no valid position give zeros.

    Shapes: x: (B, N, D)  mask: (B, N) bool, True = valid, or None  ->  (B, D)
    """
    if mask is None:
        return x.mean(dim=1)
    weight = mask.to(x.dtype)[..., None]
    return (x * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class ConcatPoolHead(nn.Module):
    """LayerNorm each stream, masked-mean pool, concatenate in ``names`` order, one linear head.

    Because the head is linear in the concatenation, logits split exactly into per-modality
    contributions ``W_m h_m + b / M`` (the OGM-GE decomposition, Peng et al., 2022), which sum
    to the logits.

    Shapes:
        streams: {name: (B, N_m, D)}  masks: {name: (B, N_m) bool or None}
        ->  logits (B, C), pooled (B, M * D), modality_logits {name: (B, C)}
    """

    def __init__(self, names: Iterable[str], dim: int, num_outputs: int) -> None:
        super().__init__()
        self.names = list(names)
        self.dim = dim
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim) for name in self.names})
        self.head = nn.Linear(dim * len(self.names), num_outputs)

    def forward(
        self, streams: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        parts = [masked_mean(self.norms[name](streams[name]), masks.get(name)) for name in self.names]
        pooled = torch.cat(parts, dim=-1)
        logits = self.head(pooled)
        weights = self.head.weight.split(self.dim, dim=1)
        bias = self.head.bias / len(self.names)
        modality_logits = {name: part @ w.T + bias for name, part, w in zip(self.names, parts, weights, strict=True)}
        return logits, pooled, modality_logits


_RESERVED_NAMES = frozenset(dir(nn.ModuleDict()))


def check_fusion_args(modalities: Any, num_outputs: Any, config: Any) -> None:
    """Validate what every strategy is built from; raise ValueError naming the argument.

    ``modalities`` is a non-empty ``{name: ModalitySpec}`` (names usable as module keys: no ".");
    ``num_outputs`` a positive int; ``config`` a `FusionConfig` with positive sizes.
    """
    if not isinstance(modalities, Mapping) or not modalities:
        raise ValueError(f"modalities: expected a non-empty dict {{name: ModalitySpec}}, got {modalities!r}")
    for name, spec in modalities.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"modalities: names must be non-empty strings without '.', got {name!r}")
        if name in _RESERVED_NAMES:  # they would clash with nn.ModuleDict's own attributes
            raise ValueError(
                f"modalities: the name {name!r} is reserved by torch.nn.ModuleDict; rename that modality "
                f"(e.g. {name + '_'!r})"
            )
        dim, length = getattr(spec, "dim", None), getattr(spec, "length", "missing")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"modalities[{name!r}]: expected ModalitySpec with a positive int dim, got {spec!r}")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
            raise ValueError(f"modalities[{name!r}]: expected ModalitySpec.length None or a positive int, got {spec!r}")
    if not isinstance(num_outputs, int) or isinstance(num_outputs, bool) or num_outputs < 1:
        raise ValueError(f"num_outputs: expected a positive int, got {num_outputs!r}")
    for field_name, minimum in (("dim", 1), ("num_heads", 1), ("num_layers", 0), ("encoder_layers", 0)):
        value = getattr(config, field_name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"config.{field_name}: expected an int >= {minimum}, got {value!r}")
    if config.dim % config.num_heads:
        raise ValueError(f"config.num_heads: dim={config.dim} is not divisible by num_heads={config.num_heads}")


def sequence_encoders(modalities: Mapping[str, Any], config: Any, num_layers: int) -> nn.ModuleDict:
    """One `SequenceEncoder` per modality, positions sized by ``spec.length`` or `DEFAULT_MAX_LENGTH`.

    Shapes: see `SequenceEncoder`; the dict is keyed by modality name in the given order.
    """
    return nn.ModuleDict(
        {
            name: SequenceEncoder(
                spec.dim,
                config.dim,
                spec.length or DEFAULT_MAX_LENGTH,
                num_layers,
                config.num_heads,
                config.mlp_ratio,
                config.dropout,
            )
            for name, spec in modalities.items()
        }
    )


def check_modality_inputs(modalities: Mapping[str, Any], inputs: Any, masks: Any) -> dict[str, Tensor | None]:
    """Check a fusion model's inputs and masks; return ``{name: mask or None}`` for every modality.

    Shapes: inputs: {name: (B, N_m, D_m) float}  masks: {name: (B, N_m) bool} or None (a missing
    modality means all valid)  ->  {name: (B, N_m) bool or None}
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(f"inputs: expected a dict {{name: (B, N, D) tensor}}, got {type(inputs).__name__}")
    if set(inputs) != set(modalities):
        raise ValueError(f"inputs: expected modalities {list(modalities)}, got {list(inputs)}")
    masks = {} if masks is None else masks
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict {{name: (B, N) bool tensor}} or None, got {type(masks).__name__}")
    unknown = [name for name in masks if name not in modalities]
    if unknown:
        raise ValueError(f"masks: unknown modalities {unknown}; expected a subset of {list(modalities)}")
    sizes: dict[str, int] = {}
    checked: dict[str, Tensor | None] = {}
    for name, spec in modalities.items():
        x = check_tensor(f"inputs[{name!r}]", inputs[name], ("B", None, spec.dim), sizes, dtype="float")
        mask = masks.get(name)
        if mask is not None:
            check_tensor(f"masks[{name!r}]", mask, ("B", x.shape[1]), sizes, dtype="bool")
        checked[name] = mask
    return checked
