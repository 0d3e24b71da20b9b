"""Multi-label tasks: K independent yes/no labels per sample, and how the task is inferred from y.

- `infer_task(y)`: the task a target array implies, with one line saying which and how to override it.
  The rule, decided once and never applied silently:

  ======================================  ==============  =============================================
  y                                       inferred task   why
  ======================================  ==============  =============================================
  (N,) integer or bool                    classification  class labels
  (N, K) with every value 0 or 1          multilabel      label indicators (int, bool or float dtype)
  (N,) float, or (N, K) with other values regression      real-valued targets
  ======================================  ==============  =============================================

  A float ``(N,)`` column of 0/1 stays regression (it may be a measured fraction); the message
  says so and names ``--task classification`` as the override.
- `MultilabelObjective`: binary cross-entropy with logits summed over labels, averaged over samples
  and labels (``F.binary_cross_entropy_with_logits``), for `crossfuse.train.fit`.
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

TASKS = ("classification", "multilabel", "regression")


class InferredTask(NamedTuple):
    """The task inferred from targets and the one line to show the user."""

    task: str
    message: str


def _is_binary(y: Tensor) -> bool:
    return bool(((y == 0) | (y == 1)).all()) if y.numel() else False


def infer_task(y: Tensor) -> InferredTask:
    """Classification, multilabel or regression from the shape, dtype and values of ``y`` (module docstring).

    Shapes: y: (N,) or (N, K)  ->  InferredTask(task, message)
    """
    if not isinstance(y, Tensor) or y.dim() not in (1, 2):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected targets of shape (N,) or (N, K), got {got}")
    override = "pass --task {} to override"
    if y.dim() == 2 and _is_binary(y):
        return InferredTask(
            "multilabel",
            f"task: multilabel (y is (N, {y.shape[1]}) with values in {{0, 1}}); " + override.format("regression"),
        )
    if y.dim() == 1 and not y.is_floating_point():
        return InferredTask(
            "classification", "task: classification (integer labels y); " + override.format("regression")
        )
    shape = "(N,)" if y.dim() == 1 else f"(N, {y.shape[1]})"
    alternative = "classification" if y.dim() == 1 else "multilabel"
    why = "float values" if y.dim() == 1 else "values other than 0/1"
    return InferredTask("regression", f"task: regression (y is {shape} with {why}); " + override.format(alternative))


def multilabel_targets(y: Tensor, argument: str = "y") -> Tensor:
    """Check and convert 0/1 (or bool) label indicators to float32. Shapes: (N, K) -> (N, K) float32."""
    if not isinstance(y, Tensor) or y.dim() != 2:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{argument}: multilabel needs label indicators of shape (N, K), got {got}")
    if not _is_binary(y):
        raise ValueError(
            f"{argument}: multilabel needs values in {{0, 1}}, got values such as {y.unique()[:5].tolist()}"
        )
    return y.float()


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
