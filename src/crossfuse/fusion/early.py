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

from crossfuse.blocks import SelfAttentionBlock, run_blocks
from crossfuse.fusion.base import FusionConfig, FusionModel, FusionOutput, ModalitySpec, register_fusion
from crossfuse.fusion.head import ConcatPoolHead


@register_fusion("early")
class EarlyFusion(FusionModel):
    """Concatenate all modalities' tokens and encode them jointly (single-stream fusion).

    Shapes:
        inputs: {name: (B, N_m, D_m)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, M * D), modality_logits {name: (B, C)},
            tokens {name: (B, N_m, D)}, weights {layer: {"q->k": (B, H, N_q, N_k)}} for every ordered pair
            of modalities (blocks of each selected joint layer's weights))
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__(modalities, num_outputs, config)
        self.encoders = self.default_encoders(config.encoder_layers)
        self.modality_embedding = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(config.dim) * 0.02) for name in modalities}
        )
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(config.dim, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.num_layers)
        )
        self.head = ConcatPoolHead(modalities, config.dim, num_outputs)
        self.attention_depth = config.num_layers

    def fuse(self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]) -> FusionOutput:
        """Shapes: as the class; the selected layers' joint weights are cut into per-pair blocks."""
        names = list(self.modalities)
        encoded = self.encode(inputs, masks)
        streams = [encoded[n] + self.modality_embedding[n] for n in names]
        lengths = [s.shape[1] for s in streams]
        x = torch.cat(streams, dim=1)
        joint_mask = None
        if any(masks[n] is not None for n in names):
            joint_mask = torch.cat(
                [
                    masks[n] if masks[n] is not None else torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
                    for n, s in zip(names, streams, strict=True)
                ],
                dim=1,
            )
        x, joint_weights = run_blocks(self.blocks, x, layers, mask=joint_mask)
        tokens = dict(zip(names, x.split(lengths, dim=1), strict=True))
        weights = {}
        for i, w in joint_weights.items():
            rows = dict(zip(names, w.split(lengths, dim=2), strict=True))
            weights[i] = {
                f"{q}->{k}": part for q in names for k, part in zip(names, rows[q].split(lengths, dim=3), strict=True)
            }
        return self.readout(tokens, masks, weights)
