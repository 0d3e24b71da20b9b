"""One training loop for every model in crossfuse.

`fit` trains any module whose loss an `Objective` computes from a batch: the fusion models
(classification or regression on `MultimodalDataset` batches) and the captioner (teacher forcing)
share it. AdamW, linear warmup then cosine decay, gradient clipping, seeded.

Shapes (default `FusionObjective`): batch = {"inputs": {name: (B, N_m, D_m)},
"masks": {name: (B, N_m) bool}, "y": (B,) long or (B, K) float}.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults suit the small models of the lab."""

    task: str = "classification"  # "classification" | "regression"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = False


class Objective(Protocol):
    """Computes a batch's loss (and cheap metrics) and evaluates a whole data set."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Any]:
        """Return (scalar loss, model output) for one batch."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics over a data set; larger ``"score"`` is better (used to keep the best checkpoint)."""
        ...


class TrainHook(Protocol):
    """Called by `fit` around each optimisation step (gradient monitors, rebalancing)."""

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        """Gradients are in ``.grad``; may inspect or rescale them before clipping and the step."""
        ...

    def step_record(self) -> dict[str, float]:
        """Values to add to this step's metrics record (may be empty)."""
        ...

    def messages(self) -> list[str]:
        """One-line warnings for the user collected so far (e.g. modality dominance)."""
        ...


@dataclass
class FusionObjective:
    """Cross-entropy (classification) or MSE (regression) on `FusionModel` outputs."""

    task: str = "classification"

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, Any]:
        output = model(batch["inputs"], batch["masks"])
        y = batch["y"]
        if self.task == "classification":
            return F.cross_entropy(output.logits, y), output
        return F.mse_loss(output.logits, y.view_as(output.logits).float()), output

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        preds, targets = predict_batches(model, loader)
        return (
            classification_metrics(preds, targets)
            if self.task == "classification"
            else regression_metrics(preds, targets)
        )


@torch.no_grad()
def predict_batches(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Concatenated logits (N, num_outputs) and targets over a loader, model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    for batch in loader:
        batch = to_device(batch, device)
        logits.append(model(batch["inputs"], batch["masks"]).logits.cpu())
        targets.append(batch["y"].cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from logits (N, C) and labels (N,)."""
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
    """R^2 (averaged over output columns) and MSE."""
    y = y.view_as(pred).float()
    mse = ((pred - y) ** 2).mean().item()
    ss_res = ((pred - y) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    r2 = (1 - ss_res / ss_tot).mean().item()
    return {"r2": r2, "mse": mse, "score": r2}


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of a (nested dict/list) batch to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class FitResult:
    """History of per-epoch records and the final/best validation metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    steps: int = 0


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None,
    config: TrainConfig,
    objective: Objective | None = None,
    out_dir: Path | None = None,
    hooks: Sequence[TrainHook] = (),
) -> FitResult:
    """Train ``model`` on ``train_data``; evaluate on ``val_data`` after every epoch.

    Returns the per-epoch history (train loss, validation metrics). Seeded: the same config
    gives the same weights on CPU.
    """
    objective = objective or FusionObjective(config.task)
    seed_everything(config.seed)
    model.to(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, generator=generator)
    val_loader = None if val_data is None else DataLoader(val_data, batch_size=max(256, config.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(loader)
    warmup = max(1, int(config.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    result = FitResult()
    step = 0
    for epoch in range(config.epochs):
        model.train()
        losses = []
        for batch in loader:
            batch = to_device(batch, config.device)
            loss, output = objective.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for hook in hooks:
                hook.after_backward(model, batch, output, step)
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
        record: dict[str, float] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if val_loader is not None:
            record.update({f"val_{k}": v for k, v in objective.evaluate(model, val_loader).items()})
        result.history.append(record)
        if val_loader is not None and record["val_score"] >= result.best.get("val_score", -math.inf):
            result.best = dict(record)
    result.final = dict(result.history[-1]) if result.history else {}
    result.steps = step
    return result
