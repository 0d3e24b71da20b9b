"""Cross-attention fusion: one modality's tokens query another's (three variants).

All three encode each modality with its own `SequenceEncoder` (``encoder_layers`` self-attention
blocks), then fuse with ``num_layers`` layers of:

- ``cross``: `CrossAttentionBlock` (self-attention, cross-attention, MLP; the decoder layer of
  Vaswani et al., 2017). Uni-directional: the query stream is the first modality in dict order
  (``direction="a->b"``) or the second (``"b->a"``); it attends to every other modality in turn,
  one block per (layer, other modality). The other streams are not updated.
- ``gated``: the same fusion with `GatedCrossAttentionBlock` (Flamingo: Alayrac et al., 2022) as
  its block class: cross-attention behind tanh gates initialised at 0, so at initialisation the
  query stream leaves the fusion layers unchanged (the model starts as the query modality's
  encoder plus the other encoders' pooling).
- ``bicross``: `BidirectionalCrossAttentionBlock` (co-attention, ViLBERT: Lu et al., 2019); exactly
  two modalities, both updated from the layer's inputs.

Every stream is then LayerNormed, mean-pooled over its valid tokens and the poolings concatenated
into one linear head, so ``modality_logits[m] = W_m h_m + b / M``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from crossfuse.blocks import BidirectionalCrossAttentionBlock, CrossAttentionBlock, GatedCrossAttentionBlock
from crossfuse.fusion.base import FusionConfig, FusionModel, FusionOutput, ModalitySpec, register_fusion
from crossfuse.fusion.head import ConcatPoolHead

DIRECTIONS = ("a->b", "b->a")


@register_fusion("cross")
class CrossAttentionFusion(FusionModel):
    """Uni-directional cross-attention fusion: the query modality attends to the others.

    ``block`` is the fusion layer's class, called as ``block(x, context, mask=, context_mask=,
    return_attention=)``; `GatedCrossAttentionFusion` differs only by it.

    Shapes:
        inputs: {name: (B, N_m, D_m)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, M * D), modality_logits {name: (B, C)},
            tokens {name: (B, N_m, D)}, weights {layer: {"query->other": (B, H, N_q, N_other)}}
            for the selected layers)
    """

    block: ClassVar[type[CrossAttentionBlock] | type[GatedCrossAttentionBlock]] = CrossAttentionBlock

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__(modalities, num_outputs, config)
        names = list(modalities)
        if len(names) < 2:
            raise ValueError(f"modalities: cross-attention fusion needs at least 2 modalities, got {names}")
        if config.direction not in DIRECTIONS:
            raise ValueError(f"config.direction: expected one of {list(DIRECTIONS)}, got {config.direction!r}")
        self.query_name = names[0] if config.direction == "a->b" else names[1]
        self.context_names = [n for n in names if n != self.query_name]
        self.encoders = self.default_encoders(config.encoder_layers)
        c = config
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {n: self.block(c.dim, c.dim, c.num_heads, c.mlp_ratio, c.dropout) for n in self.context_names}
            )
            for _ in range(c.num_layers)
        )
        self.head = ConcatPoolHead(names, config.dim, num_outputs)
        self.attention_depth = config.num_layers

    def fuse(self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]) -> FusionOutput:
        """Shapes: as the class; the query stream passes every layer's block for every other modality."""
        streams = self.encode(inputs, masks)
        q = self.query_name
        x = streams[q]
        weights: dict[int, dict[str, Tensor]] = {}
        for i, layer in enumerate(self.layers):
            for c in self.context_names:
                x, w = layer[c](x, streams[c], mask=masks[q], context_mask=masks[c], return_attention=i in layers)
                if w is not None:
                    weights.setdefault(i, {})[f"{q}->{c}"] = w
        streams[q] = x
        return self.readout(streams, masks, weights)


@register_fusion("gated")
class GatedCrossAttentionFusion(CrossAttentionFusion):
    """Flamingo-style tanh-gated cross-attention fusion; the query stream is unchanged at init.

    Shapes: as `CrossAttentionFusion`.
    """

    block = GatedCrossAttentionBlock


@register_fusion("bicross")
class BidirectionalCrossAttentionFusion(FusionModel):
    """Co-attention fusion of exactly two modalities: each stream queries the other in every layer.

    Shapes:
        inputs: {a: (B, N_a, D_a), b: (B, N_b, D_b)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, 2 D), modality_logits {name: (B, C)},
            tokens {name: (B, N_m, D)}, weights {layer: {"a->b": (B, H, N_a, N_b), "b->a": (B, H, N_b, N_a)}}
            (with the real modality names) for the selected layers)
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__(modalities, num_outputs, config)
        if len(modalities) != 2:
            raise ValueError(f"modalities: bicross fusion needs exactly 2 modalities, got {list(modalities)}")
        self.encoders = self.default_encoders(config.encoder_layers)
        self.layers = nn.ModuleList(
            BidirectionalCrossAttentionBlock(config.dim, config.dim, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.num_layers)
        )
        self.head = ConcatPoolHead(modalities, config.dim, num_outputs)
        self.attention_depth = config.num_layers

    def fuse(self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]) -> FusionOutput:
        """Shapes: as the class; both streams are updated in every layer from the layer's inputs."""
        streams = self.encode(inputs, masks)
        name_a, name_b = self.modalities
        a, b = streams[name_a], streams[name_b]
        weights: dict[int, dict[str, Tensor]] = {}
        for i, layer in enumerate(self.layers):
            a, b, a_to_b, b_to_a = layer(a, b, masks[name_a], masks[name_b], return_attention=i in layers)
            if a_to_b is not None and b_to_a is not None:
                weights[i] = {f"{name_a}->{name_b}": a_to_b, f"{name_b}->{name_a}": b_to_a}
        return self.readout({name_a: a, name_b: b}, masks, weights)
