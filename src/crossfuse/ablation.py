"""Modality ablation at test time: how much each modality matters to a trained model.

`ablation(model, data, task)` evaluates the model on ``data`` as given, then with each modality
dropped in turn (its mask set all False for every sample, as a missing modality is represented
everywhere in crossfuse), and reports the task's headline metric for each. A model that loses
little when a modality is dropped does not use it (or is robust to losing it, e.g. after training
with ``FusionConfig.modality_dropout``).

Shapes: data: `MultimodalDataset` with inputs {name: (N, T_m, D_m)}  ->  `Ablation`
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.multilabel import TASKS

HEADLINE = {"classification": "accuracy", "multilabel": "map", "regression": "r2"}


def drop(data: MultimodalDataset, names: Iterable[str]) -> MultimodalDataset:
    """``data`` with the named modalities absent for every sample (all-False masks; values kept).

    Raises ValueError naming an unknown modality.
    """
    names = list(names)
    unknown = [name for name in names if name not in data.inputs]
    if unknown:
        raise ValueError(f"drop: unknown modalities {unknown}; expected some of {list(data.inputs)}")
    masks = {k: torch.zeros_like(v) if k in names else v for k, v in data.masks.items()}
    return MultimodalDataset(data.inputs, data.y, masks)


def evaluate_task(model: nn.Module, data: MultimodalDataset, task: str, batch_size: int = 256) -> dict[str, float]:
    """The task's metrics (`crossfuse.evaluation.evaluate`), with the task name checked here."""
    from crossfuse.evaluation import evaluate

    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    return evaluate(model, data, task, batch_size)


@dataclass(frozen=True)
class Ablation:
    """The headline metric with all modalities (``full``) and with each one dropped (``dropped``)."""

    metric: str
    full: float
    dropped: dict[str, float]

    def drops(self) -> dict[str, float]:
        """How much the metric falls when each modality is dropped (positive = the modality helps)."""
        return {name: self.full - value for name, value in self.dropped.items()}


def ablation(
    model: nn.Module, data: MultimodalDataset, task: str = "classification", batch_size: int = 256
) -> Ablation:
    """Evaluate with every modality, then with each modality dropped alone; see the module docstring."""
    metric = HEADLINE.get(task)
    if metric is None:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    full = evaluate_task(model, data, task, batch_size)[metric]
    dropped = {name: evaluate_task(model, drop(data, [name]), task, batch_size)[metric] for name in data.inputs}
    return Ablation(metric, full, dropped)


def mean_ablation(results: list[Ablation]) -> Ablation:
    """The mean over several runs (e.g. seeds) of the same model and modalities."""
    if not results:
        raise ValueError("results: expected at least one Ablation, got none")
    n = len(results)
    dropped = {name: sum(r.dropped[name] for r in results) / n for name in results[0].dropped}
    return Ablation(results[0].metric, sum(r.full for r in results) / n, dropped)


def format_ablation(results: dict[str, Ablation]) -> str:
    """A plain-text table: one row per model, the full metric, then each modality dropped (and the change).

    ``results`` maps a row label (e.g. the fusion strategy) to its `Ablation`; all share the modalities.
    """
    if not results:
        return ""
    first = next(iter(results.values()))
    names = list(first.dropped)
    header = [first.metric] + [f"-{name}" for name in names]
    rows = []
    for label, result in results.items():
        cells = [f"{result.full:.3f}"]
        cells += [f"{result.dropped[n]:.3f} ({result.dropped[n] - result.full:+.3f})" for n in names]
        rows.append([label, *cells])
    widths = [max(len(str(r[i])) for r in [["", *header], *rows]) for i in range(len(header) + 1)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(["", *header], widths, strict=True)).rstrip()]
    lines += ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
