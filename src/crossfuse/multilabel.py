"""Multi-label tasks: K independent yes/no labels per sample, and how the task is inferred from y.

- `infer_task(y)`: the task a target array implies, with one line saying which and how to override it
  (the rule is `crossfuse.data.targets`'s: (N,) integers = classification, (N, K) in {0, 1} =
  multilabel, anything else = regression; never applied silently).
- `MultilabelObjective`: binary cross-entropy with logits averaged over samples and labels
  (``F.binary_cross_entropy_with_logits``), for `crossfuse.train.fit` (the same as
  ``FusionObjective("multilabel")``, which ``TrainConfig(task="multilabel")`` selects).
- `multilabel_metrics`: micro- and macro-F1 at probability 0.5 (logit 0) and mAP (mean over labels
  with at least one positive of the average precision, ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
  distinct score thresholds, as scikit-learn's ``average_precision_score``); ``score`` = mAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from crossfuse.data.targets import TASKS, multilabel_targets, task_notice

__all__ = [
    "TASKS",
    "InferredTask",
    "MultilabelObjective",
    "average_precision",
    "infer_task",
    "multilabel_metrics",
    "multilabel_targets",
]


class InferredTask(NamedTuple):
    """The task inferred from targets and the one line to show the user."""

    task: str
    message: str


def infer_task(y: Tensor) -> InferredTask:
    """Classification, multilabel or regression from the shape, dtype and values of ``y``, with its notice.

    Shapes: y: (N,) or (N, K)  ->  InferredTask(task, message)
    """
    return InferredTask(*task_notice(y))


def average_precision(scores: Tensor, y: Tensor) -> float:
    """AP of one label: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds; NaN without positives.

    Shapes: scores: (N,)  y: (N,) 0/1  ->  float
    """
    y = y.double()
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = scores.argsort(descending=True, stable=True)
    s, t = scores[order], y[order]
    tp = t.cumsum(0)
    last = torch.cat([(s[1:] != s[:-1]).nonzero().flatten(), torch.tensor([len(s) - 1])])  # end of each tie group
    precision = tp[last] / (last + 1).double()
    recall = tp[last] / positives
    previous = torch.cat([torch.zeros(1, dtype=recall.dtype), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def multilabel_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Micro-F1, macro-F1 (labels with any positive or predicted positive) and mAP; score = mAP.

    Shapes: logits: (N, K)  y: (N, K) 0/1  ->  {"micro_f1", "macro_f1", "map", "score"}
    """
    if logits.shape != y.shape:
        raise ValueError(f"y: expected shape {tuple(logits.shape)} (as the logits), got {tuple(y.shape)}")
    pred, truth = logits > 0, y > 0.5
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    denominator = 2 * tp + fp + fn
    micro = float(2 * tp.sum() / denominator.sum()) if denominator.sum() > 0 else 0.0
    counted = denominator > 0
    macro = float((2 * tp[counted] / denominator[counted]).mean()) if counted.any() else 0.0
    aps = torch.tensor([average_precision(logits[:, k], y[:, k]) for k in range(y.shape[1])])
    aps = aps[~aps.isnan()]
    mean_ap = float(aps.mean()) if len(aps) else 0.0
    return {"micro_f1": micro, "macro_f1": macro, "map": mean_ap, "score": mean_ap}


@dataclass
class MultilabelObjective:
    """Binary cross-entropy with logits on `FusionModel` outputs (one logit per label), for `fit`.

    Shapes: batch["y"]: (B, K) 0/1  model output logits: (B, K)
    """

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, Any]:
        output = model(batch["inputs"], batch["masks"])
        return F.binary_cross_entropy_with_logits(output.logits, batch["y"].float()), output

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        from crossfuse.evaluation import predict_batches  # lazy: evaluation imports this module lazily too

        logits, targets = predict_batches(model, loader)
        return multilabel_metrics(logits, targets)
