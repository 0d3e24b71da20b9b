"""Smoke test of the dominance lab experiment and checks of its probe and test conditions."""

from __future__ import annotations

import json

import pytest
import torch

from crossfuse.data.dominance import dominance_splits
from crossfuse.lab import dominance as experiment
from crossfuse.lab.result import run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_run_returns_a_complete_inconclusive_result():
    stages: list[str] = []
    result = run_experiment("dominance", "smoke", 4, progress=stages.append)
    assert result.name == "dominance" and result.size == "smoke" and result.seeds == [4]
    assert result.verdict == "inconclusive"
    assert result.claim == experiment.CLAIM and result.criterion == experiment.CRITERION
    assert "hard gradient share fell to" in result.measured
    assert any("training cross (ogm-ge)" in s for s in stages) and any("training cross (aux)" in s for s in stages)
    assert set(result.figures) == {"gradient_norms.png", "probe_accuracy.png", "test_accuracy.png"}
    assert all(png.startswith(b"\x89PNG") for png in result.figures.values())
    accuracy_table = result.tables[0]
    assert [row[0] for row in accuracy_table.rows] == list(experiment.METHODS)
    json.dumps(result.to_json())  # raw numbers are JSON-serialisable
    steps = -(-experiment.PLANS["smoke"].n_train // 64) * experiment.PLANS["smoke"].epochs
    for method in experiment.METHODS:
        curves = result.raw["curves"][method]
        assert len(curves["hard_share"]) == steps
        assert all(0.0 <= s <= 1.0 for s in curves["hard_share"])
        for run in result.raw["runs"][method]:
            assert all(0.0 <= v <= 1.0 for v in run["accuracy"].values())


def test_linear_probe_matches_separable_and_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (400,), generator=g)
    means = torch.randn(3, 5, generator=g) * 4
    x = means[y] + torch.randn(400, 5, generator=g)
    assert experiment.linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) > 0.95
    noise = torch.randn(400, 5, generator=g)  # features independent of the labels: about chance
    assert experiment.linear_probe_accuracy(noise[:300], y[:300], noise[300:], y[300:]) < 0.55


def test_masking_the_easy_modality_leaves_only_the_hard_contribution():
    _, splits = dominance_splits({"test": 64}, seed=0)
    test = splits["test"]
    model = experiment.build_model(test.data, 4, seed=0)
    model.eval()
    inputs = test.data.inputs
    masks = {**test.data.masks, "easy": torch.zeros_like(test.data.masks["easy"])}
    with torch.no_grad():
        out = model(inputs, masks)
        changed = model({**inputs, "easy": torch.randn_like(inputs["easy"])}, masks)
    torch.testing.assert_close(out.logits, changed.logits)  # masked easy inputs cannot matter
    bias = model.head.head.bias / 2
    torch.testing.assert_close(out.modality_logits["easy"], bias.expand_as(out.logits))
    conditions = experiment.accuracy_conditions(model, test, seed=0)
    assert set(conditions) == {"multimodal", "easy masked", "easy corrupted", "easy misleading"}
