"""The one interface every fusion strategy implements, and the registry that names them.

A strategy is an ``nn.Module`` built from per-modality feature sizes and a `FusionConfig`.
It maps ``inputs: dict[str, (B, N_m, D_m)]`` and ``masks: dict[str, (B, N_m) bool]`` (True = valid;
a missing entry means every position is valid) to a `FusionOutput` holding the prediction
``logits (B, num_outputs)`` and the fused representation ``pooled (B, D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass(frozen=True)
class ModalitySpec:
    """What a strategy must know about one modality: feature size and (optional) fixed length."""

    dim: int
    length: int | None = None


@dataclass(frozen=True)
class FusionConfig:
    """Hyper-parameters shared by every strategy; defaults are a sensible small starting point."""

    dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    encoder_layers: int = 1  # self-attention blocks in each per-modality encoder, before fusion
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    direction: str = "a->b"
    late_combine: str = "logits"  # late fusion: average "logits" or "probs"


@dataclass
class FusionOutput:
    """What a strategy returns.

    Shapes:
        logits: (B, num_outputs)  pooled: (B, D)
        modality_logits: {name: (B, num_outputs)}: each modality's own contribution to the logits
            (late fusion: each expert's prediction; linear heads over concatenated per-modality
            features: W_m h_m + b / M, as OGM-GE uses), or None where the strategy has none.
        tokens: {name: (B, N_m, D)} token-level outputs, or None.
        attention: {label: (B, H, Nq, Nk)} weights when requested, else None.
    """

    logits: Tensor
    pooled: Tensor
    modality_logits: dict[str, Tensor] | None = None
    tokens: dict[str, Tensor] | None = None
    attention: dict[str, Tensor] | None = field(default=None)


class FusionModel(nn.Module):
    """Base class: subclasses set ``self.encoders`` (one module per modality) and implement forward.

    Shapes: forward(inputs: {name: (B, N_m, D_m)}, masks: {name: (B, N_m) bool} | None,
    return_attention: bool = False) -> FusionOutput
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        super().__init__()
        self.modalities = dict(modalities)
        self.num_outputs = num_outputs
        self.config = config
        self.encoders = nn.ModuleDict()

    def modality_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """Parameters that belong to one modality's encoder (for gradient monitoring)."""
        return self.encoders[name].parameters()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


FusionBuilder = Callable[[dict[str, ModalitySpec], int, FusionConfig], FusionModel]
FUSIONS: dict[str, FusionBuilder] = {}


def register_fusion(name: str) -> Callable[[FusionBuilder], FusionBuilder]:
    """Decorator adding a strategy (class or factory) to `FUSIONS` under ``name``."""

    def add(builder: FusionBuilder) -> FusionBuilder:
        FUSIONS[name] = builder
        return builder

    return add


def build_fusion(
    name: str, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig | None = None
) -> FusionModel:
    """Construct the strategy registered as ``name``; unknown names list the known ones."""
    if name not in FUSIONS:
        raise ValueError(f"fusion: unknown strategy {name!r}; expected one of {sorted(FUSIONS)}")
    return FUSIONS[name](modalities, num_outputs, config or FusionConfig())
