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
    check_fusion_args,
    check_modality_inputs,
    register_fusion,
    sequence_encoders,
)
from crossfuse.fusion.cross import BidirectionalCrossAttentionFusion, CrossAttentionFusion, GatedCrossAttentionFusion
from crossfuse.fusion.early import EarlyFusion
from crossfuse.fusion.flatten_mlp import FlattenMLPFusion
from crossfuse.fusion.head import ConcatPoolHead, HeadOutput, masked_mean
from crossfuse.fusion.late import LateFusion

__all__ = [
    "FUSIONS",
    "BidirectionalCrossAttentionFusion",
    "ConcatPoolHead",
    "CrossAttentionFusion",
    "EarlyFusion",
    "FlattenMLPFusion",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "GatedCrossAttentionFusion",
    "HeadOutput",
    "LateFusion",
    "ModalitySpec",
    "build_fusion",
    "check_fusion_args",
    "check_modality_inputs",
    "masked_mean",
    "register_fusion",
    "sequence_encoders",
]
