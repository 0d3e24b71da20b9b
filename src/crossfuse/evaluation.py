"""Metrics and evaluation: the `Objective` protocol, `FusionObjective`, loaders, `predict`, `evaluate`.

`FusionObjective` lives here (not in `crossfuse.train`) so that evaluating a model never imports the
training loop.

Shapes (default `FusionObjective`): batch = {"inputs": {name: (B, N_m, D_m)},
"masks": {name: (B, N_m) bool, True = valid}, "y": (B,) long or (B, K) float}.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, default_collate

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.precision import autocast
from crossfuse.train_config import TASKS, TrainConfig


class Objective(Protocol):
    """Computes a batch's loss (and cheap metrics) and evaluates a whole data set.

    Under DDP ``loss`` receives the ``DistributedDataParallel`` wrapper: call the model (its
    ``forward``), not other methods, so that gradients are synchronised.
    """

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Any]:
        """Return (scalar loss, model output) for one batch."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics over a data set; larger ``"score"`` is better (used to keep the best checkpoint)."""
        ...


@dataclass
class FusionObjective:
    """Cross-entropy (classification), BCE with logits (multilabel) or MSE (regression) on `FusionModel` outputs.

    With ``target_scale`` (the per-column std that standardised the regression targets) `evaluate`
    reports ``mse_y_units``, the MSE in the units of y, instead of ``mse`` in standardised units.

    Shapes: batch as in the module docstring -> (scalar loss, `FusionOutput` with logits (B, C) or (B, K)).
    """

    task: str = "classification"
    target_scale: tuple[float, ...] | None = None  # regression: std of each y column the targets were divided by

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, Any]:
        output = model(batch["inputs"], batch["masks"])
        y = batch["y"]
        if self.task == "classification":
            return F.cross_entropy(output.logits, y), output
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(output.logits, y.float()), output
        return F.mse_loss(output.logits, y.view_as(output.logits).float()), output

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        preds, targets = predict_batches(model, loader)
        if self.task == "classification":
            return classification_metrics(preds, targets)
        if self.task == "multilabel":
            from crossfuse.multilabel import multilabel_metrics  # lazy: crossfuse.multilabel imports this module

            return multilabel_metrics(preds, targets)
        if self.target_scale is None:
            return regression_metrics(preds, targets)
        # Standardised targets: R^2 is unchanged by the scale; the MSE is reported in the units of y.
        scale = torch.tensor(self.target_scale, dtype=torch.float32)
        metrics = regression_metrics(preds * scale, targets.view_as(preds).float() * scale)
        return {"r2": metrics["r2"], "mse_y_units": metrics["mse"], "score": metrics["score"]}


def make_loader(data: Dataset, batch_size: int = 256) -> DataLoader:
    """A sequential loader over ``data`` that leaves the global RNG untouched.

    A `MultimodalDataset` is sliced a whole batch at a time (same values as collating rows).
    Shapes: items as in the data set, with a leading batch dimension B <= batch_size.
    """
    private = torch.Generator()  # DataLoader draws a base seed from it instead of the global RNG
    if isinstance(data, MultimodalDataset):
        sampler = BatchSampler(SequentialSampler(data), batch_size, drop_last=False)
        return DataLoader(data, sampler=sampler, batch_size=None, generator=private)
    return DataLoader(data, batch_size=batch_size, generator=private)


def fetch_batch(data: Dataset, index: Sequence[int]) -> Any:
    """Rows ``index`` of ``data`` as one batch (a `MultimodalDataset` is sliced, others collated)."""
    if isinstance(data, MultimodalDataset):
        return data[torch.as_tensor(index, dtype=torch.long)]
    return default_collate([data[i] for i in index])


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of a (nested dict/list) batch to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@torch.no_grad()
def predict_batches(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Concatenated logits (N, num_outputs) and targets over a loader, model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    for batch in loader:
        batch = to_device(batch, device)
        logits.append(model(batch["inputs"], batch["masks"]).logits.float().cpu())  # float32 also under autocast
        targets.append(batch["y"].cpu())
    model.train(was_training)
    if not logits:
        raise ValueError("data: expected at least one row to predict or evaluate, got an empty data set")
    return torch.cat(logits), torch.cat(targets)


def predict(model: nn.Module, data: Dataset, batch_size: int = 256, *, precision: str = "fp32") -> Tensor:
    """The model's outputs over a whole data set, in order, in eval mode (``precision``: see `crossfuse.precision`).

    Shapes: data of N rows  ->  (N, num_outputs) float32 logits (classification) or predictions (regression).
    """
    with autocast(_device_of(model), precision):
        return predict_batches(model, make_loader(data, batch_size))[0]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate(
    model: nn.Module,
    data: Dataset,
    objective: Objective | TrainConfig | str = "classification",
    batch_size: int = 256,
    *,
    precision: str = "fp32",
) -> dict[str, float]:
    """Metrics of ``model`` on ``data``: ``objective.evaluate``, or the task's metrics for a config/task name.

    Shapes: -> {"accuracy", "macro_f1", "score"} (classification), {"micro_f1", "macro_f1", "map", "score"}
    (multilabel) or {"r2", "mse", "score"} (regression).
    """
    if isinstance(objective, TrainConfig):
        objective = FusionObjective(objective.task)
    elif isinstance(objective, str):
        if objective not in TASKS:
            raise ValueError(
                f"objective: expected an Objective, a TrainConfig or one of {list(TASKS)}, got {objective!r}"
            )
        objective = FusionObjective(objective)
    with autocast(_device_of(model), precision):
        return objective.evaluate(model, make_loader(data, batch_size))


def classification_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (mean F1 over the classes that occur in ``y`` or the predictions).

    Shapes: logits (N, C), y (N,) long -> {"accuracy", "macro_f1", "score" (= accuracy)}.
    """
    pred = logits.argmax(-1)
    accuracy = (pred == y).float().mean().item()
    f1s = []
    for c in range(logits.shape[-1]):
        tp = ((pred == c) & (y == c)).sum().item()
        fp = ((pred == c) & (y != c)).sum().item()
        fn = ((pred != c) & (y == c)).sum().item()
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "score": accuracy}


def regression_metrics(pred: Tensor, y: Tensor) -> dict[str, float]:
    """R^2 (averaged over output columns) and MSE.

    A constant target column makes R^2 undefined: r2 is NaN and a RuntimeWarning says why.
    Shapes: pred (N, K), y (N, K) or (N,) when K = 1 -> {"r2", "mse", "score" (= r2)}.
    """
    y = y.view_as(pred).float()
    mse = ((pred - y) ** 2).mean().item()
    ss_res = ((pred - y) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    constant = (y.amax(0) == y.amin(0)).nonzero().flatten().tolist() if len(y) else []
    if constant:  # R^2 = 1 - SS_res / 0 is undefined; NaN instead of a huge negative number
        warnings.warn(
            f"y: target column(s) {constant} are constant over these {len(y)} rows, so R^2 is undefined (NaN)",
            RuntimeWarning,
            stacklevel=2,
        )
        r2 = math.nan
    else:
        r2 = (1 - ss_res / ss_tot).mean().item()
    return {"r2": r2, "mse": mse, "score": r2}
