"""Lab critical_noise: the smoke run returns a complete record; the Monte Carlo agrees with theory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from crossfuse import theory
from crossfuse.lab import critical_noise
from crossfuse.lab.result import Result, load_experiment, run_experiment


@pytest.fixture(scope="module")
def smoke() -> Result:
    stages: list[str] = []
    result = run_experiment(critical_noise, "smoke", 0, progress=stages.append)
    result.raw["_stages"] = stages
    return result


def test_smoke_record_is_complete(smoke: Result) -> None:
    assert load_experiment("critical_noise") is critical_noise
    assert smoke.name == "critical_noise" and smoke.size == "smoke" and smoke.seeds == [0]
    assert smoke.claim == critical_noise.CLAIM and smoke.criterion == critical_noise.CRITERION
    assert smoke.verdict == "inconclusive"  # smoke runs never judge
    assert "critical sigma" in smoke.measured and "band" in smoke.measured
    assert {"accuracy_vs_sigma.png", "softmax_mass_vs_sigma.png", "trained_retrieval.png"} <= set(smoke.figures)
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in smoke.figures.values())
    assert len(smoke.tables) == 3 and all(t.rows for t in smoke.tables)
    assert all(len(row) == len(t.columns) for t in smoke.tables for row in t.rows)
    assert smoke.wall_time_s > 0
    stages = smoke.raw.pop("_stages")
    assert any("monte carlo" in s for s in stages) and any("training" in s for s in stages)
    json.dumps(smoke.to_json())  # serialisable
    per_n = smoke.raw["per_n"]
    assert set(per_n) == {"16", "256"}
    for v in per_n.values():
        assert len(v["pooled_accuracy"]) == len(v["sigmas"]) == len(v["exact"]) == len(v["band"])
        assert v["pooled_accuracy"][0] == 1.0  # no noise: always retrieved


def test_identity_attention_scores_are_q_dot_k_over_sqrt_d() -> None:
    attention = critical_noise.identity_attention(8)
    q, k = torch.randn(3, 1, 8), torch.randn(3, 5, 8)
    out, weights = attention(q, k, return_attention=True)
    expected = torch.softmax((q @ k.transpose(1, 2)) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(weights[:, 0], expected)
    torch.testing.assert_close(out, expected @ k)


def test_monte_carlo_with_the_module_matches_theory() -> None:
    n, trials = 64, 3000
    score_crit = theory.critical_noise(critical_noise.MARGIN, n)
    key_sigma = score_crit / critical_noise.key_to_score_sigma(1.0)
    sigmas = [0.0, 0.8 * key_sigma, key_sigma, 1.5 * key_sigma]
    mc = critical_noise.monte_carlo(n, sigmas, trials, seed=1)
    for sigma, hits, mass in zip(sigmas, mc["hits"], mc["mass"], strict=True):
        score_sigma = critical_noise.key_to_score_sigma(sigma)
        lo, hi = theory.binomial_band(theory.retrieval_accuracy(critical_noise.MARGIN, score_sigma, n), trials, 0.999)
        assert lo <= hits <= hi
        assert mass == pytest.approx(theory.expected_softmax_mass(critical_noise.MARGIN, score_sigma, n), abs=0.03)
    assert mc["hits"][2] / trials == pytest.approx(0.5, abs=0.05)  # at the critical level


def test_crossing_interpolates() -> None:
    assert critical_noise.crossing([0.0, 1.0, 2.0], [1.0, 0.6, 0.2]) == pytest.approx(1.25)
    assert math.isnan(critical_noise.crossing([0.0, 1.0], [1.0, 0.9]))


def test_matched_filter_theory_matches_numpy_simulation() -> None:
    rng = np.random.default_rng(0)
    sigma, n, d, trials = 1.5, critical_noise.TRAIN_KEYS, critical_noise.TRAIN_DIM, 20_000
    keys = rng.standard_normal((trials, n, d))
    noisy = keys + sigma * rng.standard_normal(keys.shape)
    scores = np.einsum("td,tnd->tn", keys[:, 0], noisy)
    simulated = (scores.argmax(1) == 0).mean()
    norms = np.linalg.norm(rng.standard_normal((400, d)), axis=1)
    assert critical_noise.matched_filter_accuracy(norms, sigma) == pytest.approx(simulated, abs=0.02)
