"""crossfuse: multimodal fusion with cross-attention — the mechanism, the alternatives, diagnostics, a lab."""

from crossfuse.attention import CrossAttention, KVCache
from crossfuse.blocks import (
    BidirectionalCrossAttentionBlock,
    CrossAttentionBlock,
    GatedCrossAttentionBlock,
    SelfAttentionBlock,
)

__version__ = "0.1.0"
__all__ = [
    "BidirectionalCrossAttentionBlock",
    "CrossAttention",
    "CrossAttentionBlock",
    "GatedCrossAttentionBlock",
    "KVCache",
    "SelfAttentionBlock",
]
