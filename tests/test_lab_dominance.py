"""Smoke test of the dominance lab experiment, its precondition -> inconclusive path, probe and conditions."""

from __future__ import annotations

import json

import pytest
import torch

from crossfuse.data.dominance import dominance_splits
from crossfuse.lab import dominance as experiment
from crossfuse.lab.probe import linear_probe_accuracy
from crossfuse.lab.result import run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_run_returns_a_complete_inconclusive_result():
    stages: list[str] = []
    result = run_experiment("dominance", "smoke", 4, progress=stages.append)
    assert result.name == "dominance" and result.size == "smoke" and result.seeds == [4]
    assert result.verdict == "inconclusive"  # smoke size is never judged
    assert result.claim == experiment.CLAIM and result.criterion == experiment.CRITERION
    assert result.precondition == experiment.PRECONDITION and isinstance(result.precondition_met, bool)
    assert "vs hard-only" in result.precondition_measured and "OGM-GE hard probe" in result.measured
    for row in experiment.ROWS:
        assert any(f"training cross ({row})" in s for s in stages)
    assert set(result.figures) == {"gradient_share.png", "probe_accuracy.png"}
    assert all(png.startswith(b"\x89PNG") for png in result.figures.values())
    assert [row[0] for row in result.tables[1].rows] == list(experiment.ROWS)
    assert all("±" not in str(cell) for table in result.tables for row in table.rows for cell in row)  # one seed
    json.dumps(result.to_json())  # raw numbers are JSON-serialisable
    steps = -(-experiment.PLANS["smoke"].n_train // 64) * experiment.PLANS["smoke"].epochs
    for row in experiment.ROWS:
        (curve,) = result.raw["curves"][row]
        assert len(curve) == steps
        if row != "hard-only":
            assert all(0.0 <= s <= 1.0 for s in curve)
        for run in result.raw["runs"][row]:
            assert all(0.0 <= v <= 1.0 for v in run["accuracy"].values())
            assert all(0.0 <= v <= 1.0 for v in run["probe"].values())


def _fake_runs(hard_probe: dict[str, float], accuracy: dict[str, float], seeds: int = 3) -> dict:
    runs = {}
    for row in experiment.ROWS:
        runs[row] = [
            {
                "seed": s,
                "probe": {"easy": 0.8, "hard": hard_probe.get(row, 0.5)},
                "accuracy": {c: accuracy.get(row, 0.8) for c in experiment.CONDITIONS},
                "hard_share": [0.3, 0.2],
                "ogm_coeff_easy": [0.5, 0.5] if "ogm" in row else [float("nan")] * 2,
                "messages": [],
            }
            for s in range(seeds)
        ]
    return runs


@pytest.mark.parametrize(
    ("hard_only", "ogm", "ogm_accuracy", "expected"),
    [
        (0.90, 0.60, 0.80, "inconclusive"),  # not starved (0.90 - 0.85 < 10 points): whatever OGM-GE does
        (0.60, 0.50, 0.80, "inconclusive"),  # not starved, OGM-GE even loses
        (0.95, 0.60, 0.80, "supported"),  # starved; +10 points, accuracy unchanged
        (0.95, 0.60, 0.78, "not supported"),  # starved; accuracy -2 points
        (0.95, 0.51, 0.80, "not supported"),  # starved; +1 point only
    ],
)
def test_verdict_follows_precondition_then_criterion(hard_only, ogm, ogm_accuracy, expected):
    none = 0.85 if expected == "inconclusive" else 0.50
    runs = _fake_runs({"hard-only": hard_only, "none": none, "ogm-ge": ogm}, {"ogm-ge": ogm_accuracy})
    result = experiment._result([0, 1, 2], experiment.PLANS["quick"], runs, [{"easy": 0.25, "hard": 0.5}] * 3)
    assert result.verdict == expected
    assert result.precondition_met is (expected != "inconclusive")
    assert result.raw["starvation_per_seed"] == pytest.approx([hard_only - none] * 3)


def test_fewer_than_three_seeds_are_not_judged():
    runs = _fake_runs({"hard-only": 0.95, "none": 0.5, "ogm-ge": 0.6}, {}, seeds=2)
    result = experiment._result([0, 1], experiment.PLANS["quick"], runs, [{"easy": 0.25, "hard": 0.5}] * 2)
    assert result.precondition_met is True and result.verdict == "inconclusive"


def test_linear_probe_matches_separable_and_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (400,), generator=g)
    means = torch.randn(3, 5, generator=g) * 4
    x = means[y] + torch.randn(400, 5, generator=g)
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) > 0.95
    noise = torch.randn(400, 5, generator=g)  # features independent of the labels: about chance
    assert linear_probe_accuracy(noise[:300], y[:300], noise[300:], y[300:]) < 0.55
    with pytest.raises(ValueError, match="train_features"):
        linear_probe_accuracy(x[:300], y[:200], x[300:], y[300:])


def test_masking_the_easy_modality_leaves_only_the_hard_contribution():
    _, splits = dominance_splits({"test": 64}, seed=0)
    test = splits["test"]
    model = experiment.build_model(test.data, 4, seed=0)
    model.eval()
    masked = experiment.without_easy(test.data)
    inputs = test.data.inputs
    with torch.no_grad():
        out = model(inputs, masked.masks)
        changed = model({**inputs, "easy": torch.randn_like(inputs["easy"])}, masked.masks)
    torch.testing.assert_close(out.logits, changed.logits)  # masked easy inputs cannot matter
    bias = model.head.head.bias / 2
    torch.testing.assert_close(out.modality_logits["easy"], bias.expand_as(out.logits))
    conditions = experiment.accuracy_conditions(model, test, seed=0)
    assert set(conditions) == set(experiment.CONDITIONS)


def test_rows_train_with_the_declared_optimisers():
    sgd = experiment.train_config("ogm-ge", 3, 1)
    assert (sgd.optimizer, sgd.lr, sgd.balance, sgd.balance_alpha) == ("sgd", 0.05, "ogm-ge", 0.5)
    assert experiment.train_config("hard-only", 3, 1).balance == "none"
    adamw = experiment.train_config("adamw ogm-ge", 3, 1)
    assert (adamw.optimizer, adamw.lr, adamw.balance) == ("adamw", 2e-3, "ogm-ge")
