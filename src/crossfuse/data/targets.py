"""Targets of a user data set: which task they imply, and their coercion to that task.

Classification wants integer class labels ``y`` of shape (N,); integer-valued float labels are
accepted and become int64. Regression wants float targets of shape (N,) or (N, K); integer targets
become float32. `load_training_data` reads a user file, infers the task, coerces the targets and
draws the 70/15/15 split when the file has none.

Shapes: y (N,) or (N, K) -> the same shape, int64 (classification) or float32 (regression);
split (N,) int, 0 = train, 1 = val, 2 = test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.npz import SPLITS, load_npz, seeded_split


def infer_task(y: Tensor) -> str:
    """The task ``y`` implies: regression for float targets, classification for integer ones."""
    return "regression" if y.is_floating_point() else "classification"


def coerce_targets(data: MultimodalDataset, task: str, argument: str = "task") -> MultimodalDataset:
    """``data`` with targets of the task's dtype; ValueError naming ``argument`` for fractional class labels."""
    if task not in ("classification", "regression"):
        raise ValueError(f"{argument}: expected 'classification' or 'regression', got {task!r}")
    y = data.y
    if task == "classification" and y.is_floating_point():
        if y.dim() != 1 or not torch.equal(y, y.round()):
            raise ValueError(
                f"{argument}: classification needs integer labels 'y' of shape (N,), got {y.dtype} {tuple(y.shape)} "
                "with fractional values"
            )
        y = y.long()
    elif task == "regression" and not y.is_floating_point():
        y = y.float()
    return MultimodalDataset(data.inputs, y, data.masks)


@dataclass
class TrainingData:
    """A user data set ready for training: coerced targets, the task, the split and where it came from."""

    data: MultimodalDataset
    task: str
    split: np.ndarray
    source: str  # "file" or how the split was drawn

    def describe(self, path: str | Path) -> str:
        """One line: samples, modalities with (T, D), rows per split."""
        shapes = ", ".join(f"{n} (T={x.shape[1]}, D={x.shape[2]})" for n, x in self.data.inputs.items())
        counts = " / ".join(f"{name} {int(np.sum(self.split == v))}" for name, v in SPLITS.items())
        return f"data: {path}: {len(self.data)} samples; modalities {shapes}; split {counts} ({self.source})"


def load_training_data(path: str | Path, task: str | None = None, split_seed: int = 0) -> TrainingData:
    """Read ``path`` (see `crossfuse.data.npz.load_npz`), infer or check the task, split 70/15/15 if needed."""
    data, split = load_npz(path)
    task = task or infer_task(data.y)
    data = coerce_targets(data, task)
    source = "file"
    if split is None:
        split, source = seeded_split(len(data), split_seed), f"seeded 70/15/15, split seed {split_seed}"
    for name in ("train", "val"):
        if not (split == SPLITS[name]).any():
            raise ValueError(f"data: the split has no {name} rows (value {SPLITS[name]}); expected at least one")
    return TrainingData(data, task, split, source)
