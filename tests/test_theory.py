"""crossfuse.theory against closed forms at the limits and against plain NumPy Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossfuse import theory


def mc_scores(margin: float, sigma: float, n: int, trials: int, seed: int, signal_sigma: float | None = None):
    rng = np.random.default_rng(seed)
    scores = sigma * rng.standard_normal((trials, n))
    scores[:, 0] = margin + (sigma if signal_sigma is None else signal_sigma) * rng.standard_normal(trials)
    return scores


def test_normal_cdf_and_pdf_against_known_values() -> None:
    assert theory.normal_cdf(0.0) == pytest.approx(0.5, abs=1e-15)
    assert theory.normal_cdf(1.959963984540054) == pytest.approx(0.975, abs=1e-12)
    assert theory.normal_cdf(-10.0) == pytest.approx(7.619853024160527e-24, rel=1e-9)  # lower tail kept
    x = np.linspace(-6, 6, 2001)
    # the pdf integrates to the cdf
    cumulative = np.concatenate([[0.0], np.cumsum((theory.normal_pdf(x[1:]) + theory.normal_pdf(x[:-1])) / 2)])
    np.testing.assert_allclose(cumulative * (x[1] - x[0]) + theory.normal_cdf(-6.0), theory.normal_cdf(x), atol=2e-6)


@pytest.mark.parametrize("n", [2, 16, 4096])
def test_accuracy_limits(n: int) -> None:
    assert theory.retrieval_accuracy(3.0, 0.0, n) == 1.0
    assert theory.retrieval_accuracy(3.0, 1e-4, n) == pytest.approx(1.0, abs=1e-12)
    assert theory.retrieval_accuracy(3.0, 1e6, n) == pytest.approx(1.0 / n, rel=1e-4)
    assert theory.retrieval_accuracy(0.0, 1.0, n) == pytest.approx(1.0 / n, rel=1e-6)  # symmetry: no margin


@pytest.mark.parametrize(("margin", "sigma", "signal_sigma"), [(1.0, 1.0, None), (2.5, 0.7, None), (1.0, 2.0, 0.5)])
def test_two_keys_closed_form(margin: float, sigma: float, signal_sigma: float | None) -> None:
    s = sigma if signal_sigma is None else signal_sigma
    expected = float(theory.normal_cdf(margin / math.sqrt(sigma**2 + s**2)))
    assert theory.retrieval_accuracy(margin, sigma, 2, signal_sigma) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(
    ("margin", "sigma", "n", "signal_sigma"), [(3.0, 1.5, 16, None), (4.0, 1.2, 256, None), (4.0, 2.0, 16, 0.3)]
)
def test_accuracy_matches_numpy_monte_carlo(margin: float, sigma: float, n: int, signal_sigma: float | None) -> None:
    trials = min(40_000, 4_000_000 // n)
    scores = mc_scores(margin, sigma, n, trials, seed=n, signal_sigma=signal_sigma)
    hits = int((scores.argmax(axis=1) == 0).sum())
    exact = theory.retrieval_accuracy(margin, sigma, n, signal_sigma)
    lo, hi = theory.binomial_band(exact, trials, confidence=0.999)
    assert lo <= hits <= hi, (hits / trials, exact)


def test_critical_noise_solves_the_formula_and_beats_nothing_it_should_not() -> None:
    for n in (16, 256, 4096):
        sigma = theory.critical_noise(10.0, n)
        assert theory.retrieval_accuracy(10.0, sigma, n) == pytest.approx(0.5, abs=1e-5)
        # more keys tolerate less noise; the extreme-value estimate is the right order of magnitude
        assert 0.6 < theory.critical_noise_extreme_value(10.0, n) / sigma < 1.0
    assert theory.critical_noise(10.0, 4096) < theory.critical_noise(10.0, 256) < theory.critical_noise(10.0, 16)
    assert theory.critical_noise_extreme_value(2.0, math.ceil(math.e**2)) == pytest.approx(
        2.0 / math.sqrt(2 * math.log(math.ceil(math.e**2)))
    )


def test_critical_noise_three_keys_against_closed_form_level() -> None:
    # n = 3, level 0.9: the exact accuracy at the returned sigma equals the level (bisection on the integral)
    sigma = theory.critical_noise(1.0, 3, level=0.9)
    assert theory.retrieval_accuracy(1.0, sigma, 3) == pytest.approx(0.9, abs=1e-5)


def test_score_noise_std_matches_module_scores() -> None:
    torch.manual_seed(0)
    d, n, sigma = 16, 8, 0.7
    query = torch.randn(d)
    keys = torch.randn(n, d)
    noise = sigma * torch.randn(50_000, n, d)
    scores = ((keys + noise) @ query) / math.sqrt(d) - (keys @ query) / math.sqrt(d)
    expected = theory.score_noise_std(sigma, float(query.norm()), d)
    assert expected == pytest.approx(sigma * float(query.norm()) / math.sqrt(d))
    assert float(scores.std()) == pytest.approx(expected, rel=0.02)
    # noise on the query only: orthogonal keys of equal norm give independent score noise
    orth = torch.linalg.qr(torch.randn(d, d))[0][:, :n].T * 3.0  # (n, d), norm 3
    eta = 0.5 * torch.randn(50_000, d)
    q_scores = (eta @ orth.T) / math.sqrt(d)
    std = theory.score_noise_std(0.0, 1.0, d, query_sigma=0.5, key_norm=3.0)
    assert float(q_scores.std()) == pytest.approx(std, rel=0.02)
    assert abs(float(torch.corrcoef(q_scores.T)[0, 1])) < 0.03


def test_expected_mass_limits_and_two_key_integral() -> None:
    margin, n = 4.0, 16
    assert theory.expected_softmax_mass(margin, 0.0, n) == pytest.approx(
        1 / (1 + (n - 1) * math.exp(-margin)), abs=1e-5
    )
    assert theory.expected_softmax_mass(margin, 1e-3, n) == pytest.approx(
        1 / (1 + (n - 1) * math.exp(-margin)), abs=1e-4
    )
    assert theory.expected_softmax_mass(margin, 60.0, n) == pytest.approx(1 / n, abs=0.01)
    # n = 2: the mass is E[sigmoid(margin + sigma sqrt(2) Z)], a 1-D integral computed here independently
    z = np.linspace(-12, 12, 240_001)
    for sigma in (0.5, 2.0, 5.0):
        logistic = 1 / (1 + np.exp(-(margin + sigma * math.sqrt(2) * z)))
        expected = float(np.sum(logistic * theory.normal_pdf(z)) * (z[1] - z[0]))
        assert theory.expected_softmax_mass(margin, sigma, 2) == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize(("margin", "sigma", "n"), [(6.0, 6.0, 16), (10.0, 3.0, 256), (5.0, 1.0, 16)])
def test_expected_mass_matches_numpy_monte_carlo(margin: float, sigma: float, n: int) -> None:
    scores = mc_scores(margin, sigma, n, min(100_000, 2_000_000 // n), seed=7)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    mass = weights[:, 0] / weights.sum(axis=1)
    stderr = mass.std() / math.sqrt(len(mass))
    assert abs(theory.expected_softmax_mass(margin, sigma, n) - mass.mean()) < 4 * stderr


def test_half_mass_noise() -> None:
    for n in (16, 256):
        sigma = theory.half_mass_noise(10.0, n)
        assert theory.expected_softmax_mass(10.0, sigma, n) == pytest.approx(0.5, abs=1e-3)
    # the mean-field estimate becomes exact when the noise at half mass is small against sqrt(2 ln n)
    assert theory.half_mass_noise(10.0, 4096) == pytest.approx(theory.half_mass_noise_mean_field(10.0, 4096), rel=0.02)
    with pytest.raises(ValueError, match="margin"):
        theory.half_mass_noise(2.0, 16)  # 2 < ln 15: never half the mass


def test_binomial_band_coverage_and_exactness() -> None:
    lo, hi = theory.binomial_band(0.5, 100, confidence=0.95)
    assert (lo, hi) == (40, 60)  # the textbook exact interval for Binomial(100, 1/2)
    assert theory.binomial_band(1.0, 50) == (50, 50)
    rng = np.random.default_rng(0)
    p, trials = 0.3, 400
    lo, hi = theory.binomial_band(p, trials, confidence=0.9)
    draws = rng.binomial(trials, p, 20_000)
    assert 0.9 <= np.mean((draws >= lo) & (draws <= hi)) <= 0.95


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: theory.retrieval_accuracy(1.0, -1.0, 4), "sigma"),
        (lambda: theory.retrieval_accuracy(1.0, 1.0, 0), "n"),
        (lambda: theory.critical_noise(1.0, 4, level=0.2), "level"),
        (lambda: theory.critical_noise(-1.0, 4), "margin"),
        (lambda: theory.score_noise_std(1.0, 1.0, 0), "head_dim"),
        (lambda: theory.binomial_band(1.5, 10), "p"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()
