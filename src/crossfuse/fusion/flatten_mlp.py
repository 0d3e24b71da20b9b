"""Flatten + MLP: every feature of every modality in one vector, then a multilayer perceptron.

The baseline without any notion of tokens: ``v = [vec(x_1), ..., vec(x_M)]`` (masked positions
zeroed first), ``h_1 = GELU(W_1 v + b_1)``, then ``L - 1`` more ``GELU(W h + b)`` layers of width D
(``L = max(1, num_layers)``) and a linear head. The first layer is stored as one bias-free
``Linear(N_m * D_m, D)`` per modality (``W_1 v = sum_m W_1^m vec(x_m)``, the same map) so each
modality owns its input weights for gradient monitoring. Its size grows linearly with the
sequence lengths:

    num_parameters = D * sum_m N_m D_m + D + (L - 1) (D^2 + D) + D C + C
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossfuse.fusion.base import FusionConfig, FusionModel, FusionOutput, ModalitySpec, register_fusion


@register_fusion("flatten")
class FlattenMLPFusion(FusionModel):
    """MLP over the concatenation of all flattened modality tensors (needs fixed lengths).

    Shapes:
        inputs: {name: (B, N_m, D_m)} with N_m = ModalitySpec.length  masks: {name: (B, N_m) bool} or None
        ->  FusionOutput(logits (B, C), pooled (B, D) (last hidden layer), no modality_logits,
            tokens or weights)
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__(modalities, num_outputs, config)
        for name, spec in modalities.items():
            if spec.length is None:
                raise ValueError(
                    f"modalities[{name!r}]: flatten fusion needs a fixed sequence length, got ModalitySpec.length=None"
                )
        dim = config.dim
        self.encoders = nn.ModuleDict(
            {name: nn.Linear(spec.length * spec.dim, dim, bias=False) for name, spec in modalities.items()}
        )
        self.input_bias = nn.Parameter(torch.zeros(dim))
        hidden: list[nn.Module] = [nn.GELU(), nn.Dropout(config.dropout)]
        for _ in range(max(1, config.num_layers) - 1):
            hidden += [nn.Linear(dim, dim), nn.GELU(), nn.Dropout(config.dropout)]
        self.mlp = nn.Sequential(*hidden)
        self.head = nn.Linear(dim, num_outputs)

    def fuse(self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]) -> FusionOutput:
        """Shapes: as the class; ``layers`` is always empty (no attention)."""
        h = self.input_bias
        for name, spec in self.modalities.items():
            x = inputs[name]
            if x.shape[1] != spec.length:
                raise ValueError(
                    f"inputs[{name!r}]: flatten fusion was built for length {spec.length}, "
                    f"got shape {tuple(x.shape)} (length {x.shape[1]})"
                )
            if masks[name] is not None:
                x = x.masked_fill(~masks[name][..., None], 0.0)
            h = h + self.encoders[name](x.flatten(1))
        pooled = self.mlp(h)
        return FusionOutput(self.head(pooled), pooled)
