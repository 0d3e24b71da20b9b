"""Lab jitter: the smoke run returns a complete record; its pieces behave."""

from __future__ import annotations

import json

import pytest
import torch

from crossfuse.data.neural import make_neural_trials
from crossfuse.lab import jitter
from crossfuse.lab.result import Result, load_experiment, run_experiment
from crossfuse.models.sequence_decoder import SequenceOutput
from crossfuse.train import make_loader


@pytest.fixture(scope="module")
def smoke() -> Result:
    stages: list[str] = []
    result = run_experiment(jitter, "smoke", 0, progress=stages.append)
    result.raw["_stages"] = stages
    return result


def test_smoke_record_is_complete(smoke: Result) -> None:
    assert load_experiment("jitter") is jitter
    assert smoke.name == "jitter" and smoke.size == "smoke" and smoke.seeds == [0]
    assert smoke.claim == jitter.CLAIM and smoke.criterion == jitter.CRITERION
    assert smoke.verdict == "inconclusive"
    assert "cross R^2" in smoke.measured and "drop" in smoke.measured
    assert set(smoke.figures) == {"r2_vs_jitter.png", "attention_follows_lag.png"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in smoke.figures.values())
    stages = smoke.raw.pop("_stages")
    # spikes alone does not depend on J: trained once per seed
    assert sum("training spikes" in s for s in stages) == 1
    assert sum("training cross" in s for s in stages) == 2
    table = smoke.tables[0]
    assert [row[0] for row in table.rows] == list(jitter.STRATEGIES)
    assert all(len(row) == len(table.columns) for row in table.rows)
    r2 = smoke.raw["r2"]
    assert set(r2) == set(jitter.STRATEGIES) and all(set(v) == {"0", "4"} for v in r2.values())
    assert r2["spikes"]["0"] == r2["spikes"]["4"]
    example = smoke.raw["attention_example"]
    assert smoke.raw["lag_tracking"] and max(example["lags"]) <= 4 and len(example["trials"]) == 2
    json.dumps(smoke.to_json())


def test_objective_r2_is_pooled_over_bins() -> None:
    trials = make_neural_trials(8, 0, seed=0)
    data = jitter.standardized_dataset(trials, 8)

    class Oracle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dims = {"spikes": 32}

        def forward(self, inputs: dict) -> SequenceOutput:
            return SequenceOutput(trials.velocity * 0.5)  # half the true velocity

    metrics = jitter.BinRegressionObjective().evaluate(Oracle(), make_loader(data, 8))
    y = trials.velocity.reshape(-1, 2)
    expected = (1 - ((0.5 * y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)).mean().item()
    assert metrics["r2"] == pytest.approx(expected, abs=1e-6)


def test_standardized_dataset_uses_training_statistics() -> None:
    trials = make_neural_trials(20, 2, seed=1)
    data = jitter.standardized_dataset(trials, 10)
    lfp = data.inputs["lfp"][:10]
    torch.testing.assert_close(lfp.mean(dim=(0, 1)), torch.zeros(lfp.shape[-1]), atol=1e-5, rtol=0)
    assert data.y.shape == (20, 64, 2)


def test_build_decoder_rejects_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="strategy"):
        jitter.build_decoder("late", {"spikes": 32, "lfp": 8}, 16)


def test_lag_tracking_reads_a_perfect_lag_follower() -> None:
    trials = make_neural_trials(40, 8, seed=2)
    data = jitter.standardized_dataset(trials, 40)

    class Follower(torch.nn.Module):
        """Attention exactly on LFP bin t + lag (clipped), as an ideal realigning model would put it."""

        def __init__(self) -> None:
            super().__init__()
            self.dims, self.context = {"spikes": 32, "lfp": 8}, "lfp"

        def context_times(self, length: int) -> torch.Tensor:
            return torch.arange(length, dtype=torch.float32)

        def forward(self, inputs: dict, return_attention: bool = False) -> SequenceOutput:
            n, t = inputs["spikes"].shape[:2]
            target = (torch.arange(t)[None, :] + trials.lags[:, None]).clamp(max=t - 1)
            weights = torch.nn.functional.one_hot(target, t).float()[:, None]  # (N, 1, T, T)
            return SequenceOutput(torch.zeros(n, t, 2), {"layer 1": weights})

    result = jitter.lag_tracking(Follower(), data, trials)["layer 1"]
    assert result["slope"] == pytest.approx(1.0, abs=0.02)
    assert result["correlation"] > 0.99


def _means(cross: tuple[float, float], early: tuple[float, float], spikes: float) -> dict[str, dict[int, float]]:
    return {
        "cross": {0: cross[0], 16: cross[1]},
        "early": {0: early[0], 16: early[1]},
        "spikes": {0: spikes, 16: spikes},
        "lfp": {0: 0.9, 16: 0.7},
    }


def test_precondition_fails_when_cross_barely_uses_the_lfp() -> None:
    """Cross gains 0.062 over spikes where early gains 0.129: share 0.48 < 0.5 -> inconclusive, even if judged."""
    judged = jitter.judge(_means((0.871, 0.863), (0.938, 0.845), 0.809), (0, 16))
    assert judged["share"] == pytest.approx(0.062 / 0.129)
    assert judged["precondition_met"] is False
    # every part of the criterion holds (drop 0.008, gain 0.054, beats early, keeps 0.87 < 0.88 fails)
    assert judged["kept"] == pytest.approx(0.054 / 0.062)
    assert judged["passed"] is False
    assert jitter.verdict(judged["passed"], judged["precondition_met"]) == "inconclusive"


def test_criterion_parts() -> None:
    robust = jitter.judge(_means((0.93, 0.92), (0.94, 0.84), 0.80), (0, 16))
    assert robust["precondition_met"] and robust["passed"]
    assert jitter.verdict(robust["passed"], robust["precondition_met"]) == "supported"
    # loses most of its gain: precondition met, criterion fails -> not supported
    fragile = jitter.judge(_means((0.93, 0.83), (0.94, 0.80), 0.80), (0, 16))
    assert fragile["precondition_met"] and not fragile["passed"] and fragile["kept"] < jitter.MIN_KEPT
    # robust but early fusion still better at the largest J
    beaten = jitter.judge(_means((0.93, 0.92), (0.96, 0.95), 0.80), (0, 16))
    assert beaten["precondition_met"] and not beaten["beats_early"] and not beaten["passed"]
    # early fusion gains nothing over spikes: the share is undefined and the precondition not met
    assert jitter.judge(_means((0.85, 0.85), (0.80, 0.80), 0.80), (0, 16))["precondition_met"] is False
