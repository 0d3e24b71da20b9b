"""Cross-attention fusion: one modality's tokens query another's (three variants).

All three encode each modality with its own `SequenceEncoder` (``encoder_layers`` self-attention
blocks), then fuse with ``num_layers`` layers of:

- ``cross``: `CrossAttentionBlock` (self-attention, cross-attention, MLP; the decoder layer of
  Vaswani et al., 2017). Uni-directional: the query stream is the first modality in dict order
  (``direction="a->b"``) or the second (``"b->a"``); it attends to every other modality in turn,
  one block per (layer, other modality). The other streams are not updated.
- ``bicross``: `BidirectionalCrossAttentionBlock` (co-attention, ViLBERT: Lu et al., 2019); exactly
  two modalities, both updated from the layer's inputs.
- ``gated``: `GatedCrossAttentionBlock` (Flamingo: Alayrac et al., 2022), like ``cross`` but behind
  tanh gates initialised at 0, so at initialisation the query stream leaves the fusion layers
  unchanged (the model starts as the query modality's encoder plus the other encoders' pooling).

Every stream is then LayerNormed, mean-pooled over its valid tokens and the poolings concatenated
into one linear head, so ``modality_logits[m] = W_m h_m + b / M``.
"""

from __future__ import annotations

from torch import Tensor, nn

from crossfuse.blocks import BidirectionalCrossAttentionBlock, CrossAttentionBlock, GatedCrossAttentionBlock
from crossfuse.fusion.base import FusionConfig, FusionModel, FusionOutput, ModalitySpec, register_fusion
from crossfuse.models.encoders import ConcatPoolHead, check_fusion_args, check_modality_inputs, sequence_encoders

DIRECTIONS = ("a->b", "b->a")


class _QueryStreamFusion(FusionModel):
    """Shared machinery of ``cross`` and ``gated``: one query stream attending to the others."""

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        check_fusion_args(modalities, num_outputs, config)
        names = list(modalities)
        if len(names) < 2:
            raise ValueError(f"modalities: cross-attention fusion needs at least 2 modalities, got {names}")
        if config.direction not in DIRECTIONS:
            raise ValueError(f"config.direction: expected one of {list(DIRECTIONS)}, got {config.direction!r}")
        super().__init__(modalities, num_outputs, config)
        self.query_name = names[0] if config.direction == "a->b" else names[1]
        self.context_names = [n for n in names if n != self.query_name]
        self.encoders = sequence_encoders(modalities, config, config.encoder_layers)
        self.layers = nn.ModuleList(
            nn.ModuleDict({c: self._make_block(config) for c in self.context_names}) for _ in range(config.num_layers)
        )
        self.head = ConcatPoolHead(names, config.dim, num_outputs)

    def _make_block(self, config: FusionConfig) -> nn.Module:
        raise NotImplementedError

    def _attend(
        self,
        block: nn.Module,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None,
        context_mask: Tensor | None,
        weights: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(
        self,
        inputs: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        return_attention: bool = False,
    ) -> FusionOutput:
        checked = check_modality_inputs(self.modalities, inputs, masks)
        streams = {n: self.encoders[n](inputs[n], checked[n]) for n in self.modalities}
        q = self.query_name
        x = streams[q]
        attention: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            last = return_attention and i == len(self.layers) - 1
            for c in self.context_names:
                out = self._attend(layer[c], x, streams[c], checked[q], checked[c], last)
                if last:
                    x, attention[f"{q}->{c}"] = out
                else:
                    x = out
        streams[q] = x
        logits, pooled, modality_logits = self.head(streams, checked)
        return FusionOutput(logits, pooled, modality_logits, streams, attention or None)


@register_fusion("cross")
class CrossAttentionFusion(_QueryStreamFusion):
    """Uni-directional cross-attention fusion: the query modality attends to the others.

    Shapes:
        inputs: {name: (B, N_m, D_m)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, M * D), modality_logits {name: (B, C)},
            tokens {name: (B, N_m, D)}, attention {"query->other": (B, H, N_q, N_other)} of the
            last layer when ``return_attention``)
    """

    def _make_block(self, config: FusionConfig) -> nn.Module:
        return CrossAttentionBlock(config.dim, config.dim, config.num_heads, config.mlp_ratio, config.dropout)

    def _attend(
        self,
        block: nn.Module,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None,
        context_mask: Tensor | None,
        weights: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return block(x, context, mask=mask, context_mask=context_mask, return_attention=weights)


@register_fusion("gated")
class GatedCrossAttentionFusion(_QueryStreamFusion):
    """Flamingo-style tanh-gated cross-attention fusion; the query stream is unchanged at init.

    Shapes: as `CrossAttentionFusion`.
    """

    def _make_block(self, config: FusionConfig) -> nn.Module:
        return GatedCrossAttentionBlock(config.dim, config.dim, config.num_heads, config.mlp_ratio, config.dropout)

    def _attend(
        self,
        block: nn.Module,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None,
        context_mask: Tensor | None,
        weights: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        # The gated block has no self-attention, so the query mask is not needed: tokens are independent.
        return block(x, context, context_mask=context_mask, return_attention=weights)


@register_fusion("bicross")
class BidirectionalCrossAttentionFusion(FusionModel):
    """Co-attention fusion of exactly two modalities: each stream queries the other in every layer.

    Shapes:
        inputs: {a: (B, N_a, D_a), b: (B, N_b, D_b)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, 2 D), modality_logits {name: (B, C)},
            tokens {name: (B, N_m, D)}, attention {"a->b": (B, H, N_a, N_b), "b->a": (B, H, N_b, N_a)}
            (with the real modality names) of the last layer when ``return_attention``)
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        check_fusion_args(modalities, num_outputs, config)
        if len(modalities) != 2:
            raise ValueError(f"modalities: bicross fusion needs exactly 2 modalities, got {list(modalities)}")
        super().__init__(modalities, num_outputs, config)
        self.encoders = sequence_encoders(modalities, config, config.encoder_layers)
        self.layers = nn.ModuleList(
            BidirectionalCrossAttentionBlock(config.dim, config.dim, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.num_layers)
        )
        self.head = ConcatPoolHead(modalities, config.dim, num_outputs)

    def forward(
        self,
        inputs: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        return_attention: bool = False,
    ) -> FusionOutput:
        checked = check_modality_inputs(self.modalities, inputs, masks)
        name_a, name_b = self.modalities
        a = self.encoders[name_a](inputs[name_a], checked[name_a])
        b = self.encoders[name_b](inputs[name_b], checked[name_b])
        attention = None
        for i, layer in enumerate(self.layers):
            if return_attention and i == len(self.layers) - 1:
                a, b, weights = layer(a, b, checked[name_a], checked[name_b], return_attention=True)
                attention = {f"{name_a}->{name_b}": weights["a->b"], f"{name_b}->{name_a}": weights["b->a"]}
            else:
                a, b = layer(a, b, checked[name_a], checked[name_b])
        streams = {name_a: a, name_b: b}
        logits, pooled, modality_logits = self.head(streams, checked)
        return FusionOutput(logits, pooled, modality_logits, streams, attention)
