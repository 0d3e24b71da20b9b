"""Seeded scenario generators and the user-data loader; nothing is downloaded."""

from crossfuse.data.dataset import MultimodalDataset

__all__ = ["MultimodalDataset"]
