"""Early fusion: every modality's tokens in one sequence, encoded jointly by self-attention.

Each modality is projected to the common width by its `SequenceEncoder`, tagged with a learned
modality embedding (the segment embedding of BERT/VisualBERT: Devlin et al., 2019; Li et al., 2019),
and the sequences are concatenated; ``num_layers`` `SelfAttentionBlock`s attend over all tokens
of all modalities. Each modality's tokens are then pooled separately and the poolings
concatenated into a linear head, so ``modality_logits[m] = W_m h_m + b / M``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossfuse.blocks import SelfAttentionBlock
from crossfuse.fusion.base import FusionConfig, FusionModel, FusionOutput, ModalitySpec, register_fusion
from crossfuse.models.encoders import ConcatPoolHead, check_fusion_args, check_modality_inputs, sequence_encoders


@register_fusion("early")
class EarlyFusion(FusionModel):
    """Concatenate all modalities' tokens and encode them jointly (single-stream fusion).

    Shapes:
        inputs: {name: (B, N_m, D_m)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, M * D), modality_logits {name: (B, C)},
            tokens {name: (B, N_m, D)}, attention {"q->k": (B, H, N_q, N_k)} for every ordered pair of
            modalities (blocks of the last joint layer's weights) when ``return_attention``)
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        check_fusion_args(modalities, num_outputs, config)
        super().__init__(modalities, num_outputs, config)
        self.encoders = sequence_encoders(modalities, config, config.encoder_layers)
        self.modality_embedding = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(config.dim) * 0.02) for name in modalities}
        )
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(config.dim, config.num_heads, config.mlp_ratio, config.dropout)
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
        names = list(self.modalities)
        streams = [self.encoders[n](inputs[n], checked[n]) + self.modality_embedding[n] for n in names]
        lengths = [s.shape[1] for s in streams]
        x = torch.cat(streams, dim=1)
        joint_mask = None
        if any(checked[n] is not None for n in names):
            joint_mask = torch.cat(
                [
                    checked[n] if checked[n] is not None else torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
                    for n, s in zip(names, streams, strict=True)
                ],
                dim=1,
            )
        weights = None
        for i, block in enumerate(self.blocks):
            if return_attention and i == len(self.blocks) - 1:
                x, weights = block(x, joint_mask, return_attention=True)
            else:
                x = block(x, joint_mask)
        tokens = dict(zip(names, x.split(lengths, dim=1), strict=True))
        logits, pooled, modality_logits = self.head(tokens, checked)
        attention = None
        if weights is not None:
            rows = dict(zip(names, weights.split(lengths, dim=2), strict=True))
            attention = {
                f"{q}->{k}": block for q in names for k, block in zip(names, rows[q].split(lengths, dim=3), strict=True)
            }
        return FusionOutput(logits, pooled, modality_logits, tokens, attention)
