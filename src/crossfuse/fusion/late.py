"""Late fusion: one independent expert per modality, predictions combined at the end.

Each expert is a `SequenceEncoder` with ``encoder_layers + num_layers`` self-attention blocks
(the same depth per stream as the attending strategies), a LayerNorm, masked mean pooling and a
linear classifier. The experts never see each other's tokens; only their outputs are combined
(decision-level fusion, e.g. Snoek et al., 2005):

- ``late_combine="logits"``: ``logits = mean_m z_m``
- ``late_combine="probs"``: ``logits = log(mean_m softmax(z_m))``, the log of the averaged
  probabilities, so ``cross_entropy(logits, y)`` is the NLL of the probability average.

The means run over the experts whose modality is present in the sample (a mask row with any True);
a sample with no modality present gets the mean over all experts (each of which saw only zeros).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crossfuse.fusion.base import FusionConfig, FusionModel, FusionOutput, ModalitySpec, register_fusion
from crossfuse.fusion.head import masked_mean

LATE_COMBINES = ("logits", "probs")


@register_fusion("late")
class LateFusion(FusionModel):
    """Per-modality experts whose logits (or probabilities) are averaged.

    Shapes:
        inputs: {name: (B, N_m, D_m)}  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, M * D) (experts' pooled features, concatenated),
            modality_logits {name: (B, C)} (each expert's own logits), tokens {name: (B, N_m, D)},
            weights {layer: {"m->m": (B, H, N_m, N_m)}} (each expert's self-attention; layers count
            the expert's ``encoder_layers + num_layers`` blocks) for the selected layers)
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__(modalities, num_outputs, config)
        if config.late_combine not in LATE_COMBINES:
            raise ValueError(f"config.late_combine: expected one of {list(LATE_COMBINES)}, got {config.late_combine!r}")
        self.encoders = self.default_encoders(config.encoder_layers + config.num_layers)
        self.norms = nn.ModuleDict({name: nn.LayerNorm(config.dim) for name in modalities})
        self.classifiers = nn.ModuleDict({name: nn.Linear(config.dim, num_outputs) for name in modalities})
        self.attention_depth = config.encoder_layers + config.num_layers

    def fuse(self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]) -> FusionOutput:
        """Shapes: as the class; each expert sees its own modality only."""
        tokens, pooled, expert_logits = {}, [], {}
        weights: dict[int, dict[str, Tensor]] = {}
        for name in self.modalities:
            h, expert_weights = self.encoders[name](inputs[name], masks[name], return_attention=layers)
            for i, w in expert_weights.items():
                weights.setdefault(i, {})[f"{name}->{name}"] = w
            tokens[name] = h
            feature = masked_mean(self.norms[name](h), masks[name])
            pooled.append(feature)
            expert_logits[name] = self.classifiers[name](feature)
        stacked = torch.stack(list(expert_logits.values()))  # (M, B, C)
        if all(masks[name] is None for name in self.modalities):
            if self.config.late_combine == "logits":
                logits = stacked.mean(dim=0)
            else:
                logits = stacked.log_softmax(dim=-1).logsumexp(dim=0) - math.log(len(expert_logits))
        else:
            present = torch.stack(
                [
                    masks[n].any(dim=1) if masks[n] is not None else torch.ones_like(stacked[0, :, 0], dtype=torch.bool)
                    for n in self.modalities
                ]
            )  # (M, B)
            present = present | ~present.any(dim=0, keepdim=True)  # nobody present: average everyone
            weight = present.to(stacked.dtype)[..., None]  # (M, B, 1)
            count = weight.sum(dim=0)
            if self.config.late_combine == "logits":
                logits = (stacked * weight).sum(dim=0) / count
            else:
                log_probs = stacked.log_softmax(dim=-1).masked_fill(~present[..., None], float("-inf"))
                logits = log_probs.logsumexp(dim=0) - count.log()
        return FusionOutput(logits, torch.cat(pooled, dim=-1), expert_logits, tokens, weights or None)
