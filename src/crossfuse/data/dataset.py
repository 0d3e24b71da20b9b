"""An in-memory multimodal data set: one tensor per modality, masks and targets.

Shapes:
    inputs: {name: (N, T_m, D_m)}  masks: {name: (N, T_m) bool, True = valid}  y: (N,) long or (N, K) float
    item i  ->  {"inputs": {name: (T_m, D_m)}, "masks": {name: (T_m,)}, "y": () or (K,)}
Batches from ``torch.utils.data.DataLoader`` (default collate) add a leading B.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class MultimodalDataset(Dataset):
    """Tensors per modality plus targets; every modality gets a mask (all True if none given)."""

    def __init__(self, inputs: dict[str, Tensor], y: Tensor, masks: dict[str, Tensor] | None = None) -> None:
        if not inputs:
            raise ValueError("inputs: expected at least one modality, got none")
        n = y.shape[0]
        masks = dict(masks or {})
        for name, x in inputs.items():
            if x.dim() == 2:  # (N, D): a single token
                inputs = {**inputs, name: x[:, None, :]}
            elif x.dim() != 3:
                raise ValueError(f"inputs[{name!r}]: expected shape (N, T, D) or (N, D), got {tuple(x.shape)}")
            if inputs[name].shape[0] != n:
                raise ValueError(f"inputs[{name!r}]: expected N={n} samples (as y), got {inputs[name].shape[0]}")
            if name not in masks:
                masks[name] = torch.ones(inputs[name].shape[:2], dtype=torch.bool)
            elif tuple(masks[name].shape) != tuple(inputs[name].shape[:2]):
                raise ValueError(
                    f"masks[{name!r}]: expected shape {tuple(inputs[name].shape[:2])}, got {tuple(masks[name].shape)}"
                )
        self.inputs, self.masks, self.y = inputs, masks, y

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {
            "inputs": {k: v[i] for k, v in self.inputs.items()},
            "masks": {k: v[i] for k, v in self.masks.items()},
            "y": self.y[i],
        }

    def subset(self, index: Tensor) -> MultimodalDataset:
        """Rows ``index`` as a new data set (no copy of unselected rows)."""
        return MultimodalDataset(
            {k: v[index] for k, v in self.inputs.items()},
            self.y[index],
            {k: v[index] for k, v in self.masks.items()},
        )

    @property
    def modality_dims(self) -> dict[str, int]:
        return {k: v.shape[-1] for k, v in self.inputs.items()}
