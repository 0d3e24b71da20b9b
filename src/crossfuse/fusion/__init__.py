"""Fusion strategies behind one interface: early, late, flatten+MLP, cross-attention."""

from crossfuse.fusion.base import (
    FUSIONS,
    FusionConfig,
    FusionModel,
    FusionOutput,
    ModalitySpec,
    build_fusion,
    register_fusion,
)

__all__ = [
    "FUSIONS",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "ModalitySpec",
    "build_fusion",
    "register_fusion",
]
