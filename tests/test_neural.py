"""The spikes + LFP generator: shapes, determinism, what the streams carry, and the lags it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossfuse.data.neural import NeuralConfig, make_neural_trials, minimum_jerk_speed

MAX_LAG = 16


@pytest.fixture(scope="module")
def trials():
    return make_neural_trials(240, MAX_LAG, seed=3)


def test_shapes_types_and_dataset(trials) -> None:
    config = NeuralConfig()
    n, t = 240, config.num_bins
    assert trials.spikes.shape == (n, t, config.num_neurons) and trials.spikes.dtype == torch.float32
    assert trials.lfp.shape == (n, t, config.num_channels)
    for v in (trials.velocity, trials.reach_velocity, trials.correction_velocity):
        assert v.shape == (n, t, 2)
    torch.testing.assert_close(trials.velocity, trials.reach_velocity + trials.correction_velocity)
    assert trials.lags.dtype == torch.long and trials.lags.min() >= 0 and trials.lags.max() <= MAX_LAG
    assert len(set(trials.lags.tolist())) > MAX_LAG // 2  # spread over the range
    assert torch.equal(trials.spikes, trials.spikes.round()) and trials.spikes.min() >= 0  # counts
    item = trials.dataset()[0]
    assert set(item["inputs"]) == {"spikes", "lfp"} and item["y"].shape == (t, 2)


def test_deterministic_for_a_seed_and_lag_only_changes_lags() -> None:
    a, b = make_neural_trials(20, 8, seed=1), make_neural_trials(20, 8, seed=1)
    for name in ("spikes", "lfp", "velocity", "lags"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    other = make_neural_trials(20, 8, seed=2)
    assert not torch.equal(a.spikes, other.spikes)
    aligned = make_neural_trials(20, 0, seed=1)
    assert torch.equal(aligned.spikes, a.spikes) and torch.equal(aligned.velocity, a.velocity)
    assert torch.all(aligned.lags == 0)


def test_lfp_is_the_aligned_lfp_delayed_by_the_reported_lag() -> None:
    aligned = make_neural_trials(30, 0, seed=4)
    lagged = make_neural_trials(30, 12, seed=4)
    assert lagged.lags.max() > 0
    for i, lag in enumerate(lagged.lags.tolist()):
        torch.testing.assert_close(lagged.lfp[i, lag:], aligned.lfp[i, : aligned.lfp.shape[1] - lag])


def _xcorr_lag(spikes: np.ndarray, lfp: np.ndarray, max_lag: int) -> int:
    """Lag (0..max_lag) maximising the correlation of population spike count with the mean LFP."""
    a = spikes.sum(-1) - spikes.sum(-1).mean()
    b = lfp.mean(-1) - lfp.mean(-1).mean()
    t = len(a)
    return int(np.argmax([np.dot(a[: t - lag], b[lag:]) for lag in range(max_lag + 1)]))


def test_lags_recovered_by_cross_correlation() -> None:
    # without the corrective sub-movement (which only the LFP sees) both streams follow the same reach
    trials = make_neural_trials(300, MAX_LAG, seed=5, config=NeuralConfig(correction_scale=0.0))
    spikes, lfp, lags = trials.spikes.numpy(), trials.lfp.numpy(), trials.lags.numpy()
    estimate = np.array([_xcorr_lag(spikes[i], lfp[i], MAX_LAG) for i in range(len(lags))])
    error = estimate - lags
    assert np.abs(error).mean() < 1.0
    assert abs(error.mean()) < 0.3  # no systematic offset: lag 0 means aligned
    assert np.corrcoef(estimate, lags)[0, 1] > 0.95
    shuffled = np.random.default_rng(0).permutation(lags)
    assert np.abs(estimate - shuffled).mean() > 3.0  # the test can fail: wrong lags are far off


def test_spikes_miss_the_correction_the_lfp_carries(trials) -> None:
    """Linear read-out (ridge, +-3 bins of context): the correction is decodable from LFP, not from spikes."""
    aligned = make_neural_trials(600, 0, seed=6)

    def features(x: torch.Tensor) -> np.ndarray:
        x = x.numpy()
        shifted = [np.roll(x, k, axis=1) for k in range(-3, 4)]
        flat = np.concatenate(shifted, axis=-1).reshape(-1, x.shape[-1] * 7)
        return np.concatenate([flat, np.ones((len(flat), 1))], axis=1)

    def r2(x: np.ndarray, y: np.ndarray) -> float:
        split = len(x) * 2 // 3
        w = np.linalg.solve(x[:split].T @ x[:split] + 1e-1 * np.eye(x.shape[1]), x[:split].T @ y[:split])
        res = y[split:] - x[split:] @ w
        return float(np.mean(1 - (res**2).sum(0) / ((y[split:] - y[split:].mean(0)) ** 2).sum(0)))

    correction = aligned.correction_velocity.numpy().reshape(-1, 2)
    from_spikes = r2(features(aligned.spikes.sqrt()), correction)
    from_lfp = r2(features(aligned.lfp), correction)
    assert from_spikes < 0.05 < from_lfp
    assert from_lfp > from_spikes + 0.05


def test_minimum_jerk_profile() -> None:
    t = np.linspace(0, 10, 10_001)
    speed = minimum_jerk_speed(t, np.array([2.0]), np.array([4.0]))[0]
    assert speed.max() == pytest.approx(1.0, abs=1e-6) and t[speed.argmax()] == pytest.approx(4.0, abs=1e-3)
    assert speed[t < 2].max() == 0 and speed[t > 6].max() == 0
    # symmetric bell: area = peak * duration * 8/15 (integral of 16 s^2 (1-s)^2 over [0, 1] is 8/15)
    assert speed.sum() * (t[1] - t[0]) == pytest.approx(4.0 * 8 / 15, rel=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_trials": 0}, "num_trials"),
        ({"num_trials": 4, "max_lag": 99}, "max_lag"),
        ({"num_trials": 4, "max_lag": -1}, "max_lag"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_neural_trials(**kwargs)
    with pytest.raises(ValueError, match="num_bins"):
        NeuralConfig(num_bins=20)
