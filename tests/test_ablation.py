"""Test-time modality ablation: equals evaluating with all-False masks; an unused modality costs nothing."""

from __future__ import annotations

import pytest
import torch

from crossfuse.ablation import Ablation, ablation, drop, format_ablation
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.train import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
SPECS = {"a": ModalitySpec(2, 3), "b": ModalitySpec(3, 4)}


def data(n: int = 64) -> MultimodalDataset:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, 3, 2, generator=g), torch.randn(n, 4, 3, generator=g)
    return MultimodalDataset({"a": a, "b": b}, (a[:, :, 0].mean(1) > 0).long())


def test_drop_blanks_masks_and_names_unknown_modalities() -> None:
    d = data()
    dropped = drop(d, ["b"])
    assert not dropped.masks["b"].any() and dropped.masks["a"].all()
    assert dropped.inputs["b"] is d.inputs["b"]
    with pytest.raises(ValueError, match=r"drop: unknown modalities \['c'\]"):
        drop(d, ["c"])


def test_ablation_equals_evaluating_with_the_modality_masked() -> None:
    torch.manual_seed(0)
    model = build_fusion("cross", SPECS, 2, FusionConfig(dim=16, num_heads=2)).eval()
    d = data()
    result = ablation(model, d)
    assert result.metric == "accuracy"
    assert result.full == evaluate(model, d)["accuracy"]
    for name in SPECS:
        masks = {k: (torch.zeros_like(v) if k == name else v) for k, v in d.masks.items()}
        assert result.dropped[name] == evaluate(model, MultimodalDataset(d.inputs, d.y, masks))["accuracy"]


def test_a_modality_the_model_ignores_costs_nothing() -> None:
    """Late fusion with logit averaging and a zeroed expert for b: dropping b leaves only a's expert,
    whose logits are twice the average's, so every argmax and the accuracy are unchanged."""
    torch.manual_seed(0)
    model = build_fusion("late", SPECS, 2, FusionConfig(dim=16, num_heads=2)).eval()
    with torch.no_grad():
        model.classifiers["b"].weight.zero_()
        model.classifiers["b"].bias.zero_()
    result = ablation(model, data())
    assert result.drops()["b"] == 0.0
    # without a, a's expert sees only zeros: one constant prediction, right on that class's share of rows
    predicted = set(model(data().inputs, drop(data(), ["a"]).masks).logits.argmax(-1).tolist())
    assert len(predicted) == 1
    assert result.dropped["a"] == pytest.approx((data().y == predicted.pop()).float().mean().item())


def test_format_ablation_table() -> None:
    table = format_ablation({"cross": Ablation("accuracy", 0.9, {"a": 0.5, "b": 0.85})})
    lines = table.splitlines()
    assert lines[0].split() == ["accuracy", "-a", "-b"]
    assert lines[1].split() == ["cross", "0.900", "0.500", "(-0.400)", "0.850", "(-0.050)"]
    assert format_ablation({}) == ""
    with pytest.raises(ValueError, match="task: expected one of"):
        ablation(build_fusion("early", SPECS, 2), data(), task="ranking")
