"""A tiny fusion model and seeded tasks shared by the trainer tests (test_train, test_resume, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FusionConfig, FusionModel, FusionOutput, ModalitySpec

SPECS = {"a": ModalitySpec(3, 4), "b": ModalitySpec(2, 5)}


class TinyFusion(FusionModel):
    """Per-modality linear encoder, masked mean pool, dropout, per-modality linear head; logits = sum.

    Shapes: inputs {name: (B, T, D)} -> logits (B, C), modality_logits {name: (B, C)}.
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__(modalities, num_outputs, config)
        self.encoders = nn.ModuleDict({n: nn.Linear(s.dim, config.dim) for n, s in modalities.items()})
        self.heads = nn.ModuleDict({n: nn.Linear(config.dim, num_outputs) for n in modalities})
        self.drop = nn.Dropout(config.dropout)

    def forward(self, inputs: dict[str, Tensor], masks: dict[str, Tensor] | None = None, **_: Any) -> FusionOutput:
        parts = {}
        for name, encoder in self.encoders.items():
            h = torch.tanh(encoder(inputs[name]))
            m = (masks or {}).get(name)
            m = torch.ones(h.shape[:2], dtype=torch.bool) if m is None else m
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
            parts[name] = self.heads[name](self.drop(pooled))
        logits = torch.stack(list(parts.values())).sum(0)
        return FusionOutput(logits, logits, modality_logits=parts)


def tiny(dropout: float = 0.2, outputs: int = 3, seed: int = 0) -> TinyFusion:
    torch.manual_seed(seed)
    return TinyFusion(SPECS, outputs, FusionConfig(dim=8, num_heads=1, dropout=dropout))


def task(n: int = 96, seed: int = 0, regression: bool = False) -> MultimodalDataset:
    g = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(n, s.length, s.dim, generator=g) for name, s in SPECS.items()}
    score = x["a"][:, :, 0].mean(1) + x["b"][:, :, 1].mean(1)
    y = score[:, None] if regression else torch.bucketize(score, torch.tensor([-0.3, 0.3]))
    masks = {"b": torch.rand(n, 5, generator=g) > 0.2}
    return MultimodalDataset(x, y, masks)


class Interrupt(Exception):
    pass


class StopAt:
    """Raises at a given step, like a crash (after some checkpoints were written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        if step == self.step:
            raise Interrupt

    def step_record(self) -> dict[str, float]:
        return {}

    def messages(self) -> list[str]:
        return []
