"""Targets of a user data set: which task they imply, and their coercion to that task.

Classification wants integer class labels ``y`` of shape (N,); integer-valued float labels are
accepted and become int64. Multilabel wants (N, K) label indicators in {0, 1} (any dtype), which
become float32. Regression wants float targets of shape (N,) or (N, K); integer targets become float32.
`load_training_data` reads a user file, infers the task (and says so in one line, `TrainingData.notice`),
coerces the targets and draws the 70/15/15 split when the file has none.

The inference rule, decided once and never applied silently:

  ======================================  ==============  =============================================
  y                                       inferred task   why
  ======================================  ==============  =============================================
  (N,) integer or bool                    classification  class labels
  (N, K) with every value 0 or 1          multilabel      label indicators (int, bool or float dtype)
  (N,) float, or (N, K) with other values regression      real-valued targets
  ======================================  ==============  =============================================

A float (N,) column of 0/1 stays regression (it may be a measured fraction); the notice names
``--task classification`` as the override.

Shapes: y (N,) or (N, K) -> the same shape, int64 (classification) or float32 (multilabel, regression);
split (N,) int, 0 = train, 1 = val, 2 = test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.directory import load_data
from crossfuse.data.npz import SPLITS, seeded_split

TASKS = ("classification", "multilabel", "regression")


def _is_binary(y: Tensor) -> bool:
    return bool(((y == 0) | (y == 1)).all()) if y.numel() else False


def task_notice(y: Tensor) -> tuple[str, str]:
    """The task ``y`` implies (see the module docstring) and the one line that says which and how to override it.

    Shapes: y: (N,) or (N, K)  ->  (task, notice)
    """
    if not isinstance(y, Tensor) or y.dim() not in (1, 2):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected targets of shape (N,) or (N, K), got {got}")
    override = "pass --task {} to override"
    if y.dim() == 2 and _is_binary(y):
        why = f"y is (N, {y.shape[1]}) with values in {{0, 1}}"
        return "multilabel", f"task: multilabel ({why}); " + override.format("regression")
    if y.dim() == 1 and not y.is_floating_point():
        return "classification", "task: classification (integer labels y); " + override.format("regression")
    shape = "(N,)" if y.dim() == 1 else f"(N, {y.shape[1]})"
    alternative = "classification" if y.dim() == 1 else "multilabel"
    why = "float values" if y.dim() == 1 else "values other than 0/1"
    return "regression", f"task: regression (y is {shape} with {why}); " + override.format(alternative)


def infer_task(y: Tensor) -> str:
    """The task ``y`` implies: classification, multilabel or regression (the module docstring's table)."""
    return task_notice(y)[0]


def multilabel_targets(y: Tensor, argument: str = "y") -> Tensor:
    """Check and convert 0/1 (or bool) label indicators to float32. Shapes: (N, K) -> (N, K) float32."""
    if not isinstance(y, Tensor) or y.dim() != 2:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{argument}: multilabel needs label indicators of shape (N, K), got {got}")
    if not _is_binary(y):
        values = y.unique()[:5].tolist()
        raise ValueError(f"{argument}: multilabel needs values in {{0, 1}}, got values such as {values}")
    return y.float()


def coerce_targets(data: MultimodalDataset, task: str, argument: str = "task") -> MultimodalDataset:
    """``data`` with targets of the task's dtype; ValueError naming ``argument`` for fractional class labels."""
    if task not in TASKS:
        raise ValueError(f"{argument}: expected one of {list(TASKS)}, got {task!r}")
    y = data.y
    if task == "multilabel":
        return MultimodalDataset(data.inputs, multilabel_targets(y, argument), data.masks)
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
    notice: str = ""  # the one line saying which task was inferred (empty when the task was given)

    def describe(self, path: str | Path) -> str:
        """One line: samples, modalities with (T, D), rows per split."""
        shapes = ", ".join(f"{n} (T={x.shape[1]}, D={x.shape[2]})" for n, x in self.data.inputs.items())
        counts = " / ".join(f"{name} {int(np.sum(self.split == v))}" for name, v in SPLITS.items())
        return f"data: {path}: {len(self.data)} samples; modalities {shapes}; split {counts} ({self.source})"


def load_training_data(path: str | Path, task: str | None = None, split_seed: int = 0) -> TrainingData:
    """Read ``path`` (an .npz or a data-set directory, `crossfuse.data.directory.load_data`), infer or check the
    task, split 70/15/15 if needed."""
    data, split = load_data(path)
    notice = ""
    if task is None:
        task, notice = task_notice(data.y)
    data = coerce_targets(data, task)
    source = "file"
    if split is None:
        split, source = seeded_split(len(data), split_seed), f"seeded 70/15/15, split seed {split_seed}"
    for name in ("train", "val"):
        if not (split == SPLITS[name]).any():
            raise ValueError(f"data: the split has no {name} rows (value {SPLITS[name]}); expected at least one")
    return TrainingData(data, task, split, source, notice)
