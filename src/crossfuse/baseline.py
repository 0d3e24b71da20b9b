"""The simple baseline every fusion should beat: a linear model on mean-pooled, concatenated inputs.

Each modality is mean-pooled over its valid tokens, the poolings are concatenated and standardised
with the training rows' statistics, and one linear layer is fitted with torch (no new dependency):
multinomial logistic regression (classification), independent logistic outputs (multilabel) or ridge
regression in closed form (regression), all with a small L2 penalty ``l2`` on the weights. It is the
"logistic regression on the concatenated features" a reviewer would try first; `crossfuse compare`
shows it as the first row and each fusion's gap to it.

Shapes:
    pooled_features(data): inputs {name: (N, T_m, D_m)}, masks {name: (N, T_m)}  ->  (N, sum_m D_m)
    LinearBaseline.fit(data) -> self;  predict(data) -> (N, C) logits / (N, K) predictions
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion.head import masked_mean

TASKS = ("classification", "multilabel", "regression")


def pooled_features(data: MultimodalDataset, batch_rows: int = 4096) -> Tensor:
    """Masked mean of each modality's tokens, concatenated in the data set's modality order (read in chunks)."""
    parts = []
    for start in range(0, len(data), batch_rows):
        batch = data[torch.arange(start, min(len(data), start + batch_rows))]
        pooled = [masked_mean(batch["inputs"][name].float(), batch["masks"][name]) for name in data.inputs]
        parts.append(torch.cat(pooled, dim=-1))
    return torch.cat(parts)


class LinearBaseline:
    """Linear model on `pooled_features`; see the module docstring.

    Args:
        task: "classification" | "multilabel" | "regression".
        num_outputs: classes (classification) or output columns.
        l2: weight penalty (on standardised features), the same for every task.
        max_iter: L-BFGS iterations for the logistic losses.
    """

    def __init__(self, task: str, num_outputs: int, l2: float = 1e-3, max_iter: int = 200) -> None:
        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs: expected a positive int, got {num_outputs!r}")
        if not l2 >= 0:
            raise ValueError(f"l2: expected a number >= 0, got {l2!r}")
        self.task, self.num_outputs, self.l2, self.max_iter = task, num_outputs, float(l2), max_iter
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def _standardise(self, features: Tensor) -> Tensor:
        assert self.mean is not None and self.std is not None
        return (features - self.mean) / self.std

    def fit(self, data: MultimodalDataset) -> LinearBaseline:
        """Fit on every row of ``data`` (the training split)."""
        features = pooled_features(data).double()
        self.mean, self.std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-8)
        x = self._standardise(features)
        n, d = x.shape
        y = data.y
        if self.task == "regression":
            target = y.double().reshape(n, -1)
            mean = target.mean(0)
            gram = x.T @ x + n * self.l2 * torch.eye(d, dtype=x.dtype)
            self.weight = torch.linalg.solve(gram, x.T @ (target - mean)).T
            self.bias = mean
            return self
        weight = torch.zeros(self.num_outputs, d, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(self.num_outputs, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            logits = x @ weight.T + bias
            if self.task == "classification":
                loss = F.cross_entropy(logits, y.long())
            else:
                loss = F.binary_cross_entropy_with_logits(logits, y.double())
            loss = loss + 0.5 * self.l2 * (weight**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    @property
    def num_parameters(self) -> int:
        """Fitted weights and biases (0 before `fit`)."""
        return 0 if self.weight is None or self.bias is None else self.weight.numel() + self.bias.numel()

    @torch.no_grad()
    def predict(self, data: MultimodalDataset) -> Tensor:
        """Logits (classification, multilabel) or predictions (regression), float32. Shapes: -> (N, C | K)."""
        if self.weight is None or self.bias is None:
            raise RuntimeError("LinearBaseline.predict: call fit() first")
        x = self._standardise(pooled_features(data).double())
        return (x @ self.weight.T + self.bias).float()


def fit_baseline(train: MultimodalDataset, task: str, num_outputs: int, l2: float = 1e-3) -> LinearBaseline:
    """`LinearBaseline` fitted on ``train`` (targets as the fusions are trained on: class ids, 0/1, standardised)."""
    return LinearBaseline(task, num_outputs, l2=l2).fit(train)


def baseline_metrics(baseline: LinearBaseline, data: MultimodalDataset) -> dict[str, float]:
    """The same metrics the fusions report on ``data`` (accuracy/macro-F1, micro/macro-F1/mAP, r2/mse)."""
    from crossfuse.evaluation import classification_metrics, regression_metrics
    from crossfuse.multilabel import multilabel_metrics

    outputs = baseline.predict(data)
    if baseline.task == "classification":
        return classification_metrics(outputs, data.y.long())
    if baseline.task == "multilabel":
        return multilabel_metrics(outputs, data.y.float())
    return regression_metrics(outputs, data.y.float())


def gap(fusion_score: float, baseline_score: float) -> float:
    """A fusion's margin over the baseline on the same metric (positive = the fusion is better)."""
    return fusion_score - baseline_score


def baseline_notice(baseline_score: float, fusion_scores: dict[str, float], metric: str, margin: float = 0.01) -> str:
    """One line when no fusion beats the linear baseline by more than ``margin`` on ``metric``; else "".

    ``fusion_scores`` maps each strategy to its (mean) score; larger is better for every metric used.
    """
    if not fusion_scores:
        return ""
    best_name = max(fusion_scores, key=lambda name: fusion_scores[name])
    best = fusion_scores[best_name]
    if gap(best, baseline_score) > margin:
        return ""
    return (
        f"notice: the linear baseline (pooled, concatenated inputs) scores {metric} {baseline_score:.4f}; "
        f"the best fusion ({best_name}, {best:.4f}) does not beat it by more than {margin:g}"
    )
