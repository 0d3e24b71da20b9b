"""The linear baseline: pooling respects masks, ridge matches the normal equations, logistic fits separable data."""

from __future__ import annotations

import pytest
import torch

from crossfuse.baseline import LinearBaseline, pooled_features
from crossfuse.data.dataset import MultimodalDataset


def test_pooled_features_are_masked_means_in_modality_order() -> None:
    a = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    data = MultimodalDataset({"a": a, "b": torch.ones(2, 1, 3)}, torch.zeros(2), {"a": mask})
    features = pooled_features(data, batch_rows=1)
    torch.testing.assert_close(features[0], torch.tensor([2.0, 3.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(features[1, :2], torch.zeros(2))  # no valid token: zeros, not NaN


def test_regression_equals_ridge_normal_equations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 4, generator=g)
    y = x[:, 0] @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 3.0
    data = MultimodalDataset({"s": x}, y)
    model = LinearBaseline("regression", 1, l2=0.0).fit(data)
    torch.testing.assert_close(model.predict(data)[:, 0], y, atol=1e-4, rtol=1e-4)


def test_classification_and_multilabel_fit_linearly_separable_data() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 2, 3, generator=g)
    pooled = x.mean(1)
    y = (pooled @ torch.randn(3, 3, generator=g)).argmax(-1)  # linearly separable by construction
    data = MultimodalDataset({"s": x}, y)
    model = LinearBaseline("classification", 3, l2=1e-4).fit(data)
    assert (model.predict(data).argmax(-1) == y).float().mean() > 0.9
    labels = torch.stack([pooled[:, 0] > 0, pooled[:, 2] < 0], dim=1).float()
    multi = LinearBaseline("multilabel", 2, l2=1e-4).fit(MultimodalDataset({"s": x}, labels))
    assert ((multi.predict(data) > 0).float() == labels).float().mean() > 0.95


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="task: expected one of"):
        LinearBaseline("ranking", 2)
    with pytest.raises(ValueError, match="num_outputs"):
        LinearBaseline("classification", 0)
    with pytest.raises(RuntimeError, match="fit"):
        LinearBaseline("classification", 2).predict(MultimodalDataset({"s": torch.zeros(2, 1, 1)}, torch.zeros(2)))


def test_baseline_metrics_gap_and_notice() -> None:
    from crossfuse.baseline import baseline_metrics, baseline_notice, fit_baseline, gap
    from crossfuse.train import classification_metrics

    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 2, 3, generator=g)
    y = (x.mean(1)[:, 0] > 0).long()
    data = MultimodalDataset({"s": x}, y)
    baseline = fit_baseline(data, "classification", 2)
    assert baseline_metrics(baseline, data) == classification_metrics(baseline.predict(data), y)
    assert gap(0.9, 0.95) == pytest.approx(-0.05)
    notice = baseline_notice(0.95, {"early": 0.9, "cross": 0.955}, "accuracy", margin=0.01)
    assert notice.startswith("notice: the linear baseline") and "cross, 0.9550" in notice
    assert baseline_notice(0.95, {"early": 0.97}, "accuracy", margin=0.01) == ""
    assert baseline_notice(0.95, {}, "accuracy") == ""
