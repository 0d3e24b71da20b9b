"""Multi-label: task inference table, BCE objective, F1 and mAP against hand-computed and brute-force values."""

from __future__ import annotations

import pytest
import torch

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.multilabel import (
    MultilabelObjective,
    average_precision,
    infer_task,
    multilabel_metrics,
    multilabel_targets,
)
from crossfuse.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "y,task,override",
    [
        (torch.tensor([0, 2, 1]), "classification", "--task regression"),
        (torch.tensor([[0, 1], [1, 1]]), "multilabel", "--task regression"),
        (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "multilabel", "--task regression"),
        (torch.tensor([[True, False]]), "multilabel", "--task regression"),
        (torch.tensor([0.0, 1.0, 1.0]), "regression", "--task classification"),
        (torch.tensor([[0.5, 1.0], [1.0, 0.0]]), "regression", "--task multilabel"),
        (torch.tensor([[0, 2], [1, 1]]), "regression", "--task multilabel"),
    ],
)
def test_infer_task_says_which_and_how_to_override(y: torch.Tensor, task: str, override: str) -> None:
    inferred = infer_task(y)
    assert inferred.task == task
    assert inferred.message.startswith(f"task: {task} (") and override in inferred.message


def test_infer_task_and_targets_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"y: expected targets of shape \(N,\) or \(N, K\), got \(2, 2, 2\)"):
        infer_task(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"multilabel needs values in \{0, 1\}"):
        multilabel_targets(torch.tensor([[0, 2]]))
    assert multilabel_targets(torch.tensor([[0, 1]])).dtype == torch.float32


def brute_force_ap(scores: list[float], labels: list[int]) -> float:
    """AP = sum over distinct thresholds (descending) of (recall gain) x precision at that threshold."""
    total = sum(labels)
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [label for s, label in zip(scores, labels, strict=True) if s >= threshold]
        recall = sum(chosen) / total
        ap += (recall - previous_recall) * sum(chosen) / len(chosen)
        previous_recall = recall
    return ap


def test_average_precision_matches_hand_and_brute_force_values() -> None:
    # ranking + - + -: precision 1 at recall 1/2, 2/3 at recall 1  ->  (1 + 2/3) / 2
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0])) == pytest.approx(5 / 6)
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 6, (30,), generator=g).float()  # many ties
        labels = torch.randint(0, 2, (30,), generator=g)
        if labels.sum() == 0:
            continue
        want = brute_force_ap(scores.tolist(), labels.tolist())
        assert average_precision(scores, labels) == pytest.approx(want)


def test_f1_scores_by_hand() -> None:
    logits = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    y = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    metrics = multilabel_metrics(logits, y)
    # label 0: tp 2 -> F1 1; label 1: fp 1, fn 1 -> 0; label 2: fp 1 -> 0; micro: tp 2, fp 2, fn 1 -> 4/7
    assert metrics["micro_f1"] == pytest.approx(4 / 7)
    assert metrics["macro_f1"] == pytest.approx(1 / 3)
    assert metrics["score"] == metrics["map"]
    with pytest.raises(ValueError, match=r"y: expected shape \(3, 3\)"):
        multilabel_metrics(logits, y[:, :2])


def test_multilabel_fusion_learns_independent_labels() -> None:
    g = torch.Generator().manual_seed(0)

    def data(n: int) -> MultimodalDataset:
        a, b = torch.randn(n, 3, 2, generator=g), torch.randn(n, 4, 2, generator=g)
        y = torch.stack(
            [a[:, :, 0].mean(1) > 0, b[:, :, 1].mean(1) > 0, a[:, :, 1].mean(1) + b[:, :, 0].mean(1) > 0], 1
        )
        return MultimodalDataset({"a": a, "b": b}, y.float())

    train, val = data(512), data(256)
    torch.manual_seed(0)
    model = build_fusion(
        "early", {"a": ModalitySpec(2, 3), "b": ModalitySpec(2, 4)}, 3, FusionConfig(dim=16, num_heads=2)
    )
    objective = MultilabelObjective()
    before = objective.evaluate(model, [val[torch.arange(256)]])
    result = fit(model, train, val, TrainConfig(epochs=6, batch_size=32, lr=3e-3), objective=objective)
    # chance mAP is the positive rate (about 0.5); learned labels rank positives first
    assert result.best["val_map"] > 0.9 > before["map"]
