"""Fusion strategies behind one interface: early, late, flatten+MLP, cross-attention.

Importing this package fills the registry: ``build_fusion(name, ...)`` with ``name`` one of
``early``, ``late``, ``flatten``, ``cross``, ``bicross``, ``gated``.
"""

from crossfuse.fusion.base import (
    FUSIONS,
    FusionConfig,
    FusionModel,
    FusionOutput,
    ModalitySpec,
    build_fusion,
    register_fusion,
)
from crossfuse.fusion.cross import BidirectionalCrossAttentionFusion, CrossAttentionFusion, GatedCrossAttentionFusion
from crossfuse.fusion.early import EarlyFusion
from crossfuse.fusion.flatten_mlp import FlattenMLPFusion
from crossfuse.fusion.late import LateFusion

__all__ = [
    "FUSIONS",
    "BidirectionalCrossAttentionFusion",
    "CrossAttentionFusion",
    "EarlyFusion",
    "FlattenMLPFusion",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "GatedCrossAttentionFusion",
    "LateFusion",
    "ModalitySpec",
    "build_fusion",
    "register_fusion",
]
