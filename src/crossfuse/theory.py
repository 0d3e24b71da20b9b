"""When does noise stop attention from finding the right key? Exact curves and critical noise levels.

Setting: one query, ``n`` keys, one of them aligned with the query. Its noiseless score (the logit
``q . k / sqrt(d)``) exceeds every distractor's by ``margin``; each score carries independent
Gaussian noise, std ``sigma`` on the distractors and ``signal_sigma`` (default ``sigma``) on the
true key. Then, writing ``phi``/``Phi`` for the standard normal pdf/cdf,

    P(true key has the highest score) = integral phi(z) Phi((margin + signal_sigma z) / sigma)^(n-1) dz

(condition on the true key's noise; the n-1 distractors are independent). The integral is evaluated
on a fine grid (the trapezoid rule on a uniform grid converges geometrically for such smooth,
Gaussian-decaying integrands). Limits: sigma -> 0 gives 1, sigma -> infinity gives 1/n, n = 2 gives
``Phi(margin / sqrt(sigma^2 + signal_sigma^2))``.

Extreme-value estimate: the largest of n Gaussian distractors sits near ``sigma sqrt(2 ln n)``
(Fisher & Tippett, 1928; Gumbel, 1958), so retrieval collapses near
``sigma_c ~ margin / sqrt(2 ln n)``: the critical noise falls only as 1/sqrt(ln n) with the number of
keys. The estimate is asymptotic; `critical_noise` gives the exact level from the integral.

Softmax mass: attention does not take an argmax, it averages. The expected weight on the true key,
``E[1 / (1 + sum_j exp(s_j - s_0))]``, is computed exactly with ``1/(1+x) = int_0^inf exp(-t(1+x)) dt``,
which turns the sum over distractors into a power of one lognormal Laplace transform (nested 1-D
integrals, see `expected_softmax_mass`). A mean-field estimate (distractor sum replaced by its mean
``(n-1) exp(sigma^2/2)``) gives the half-mass noise level ``sqrt(2 (margin - ln(n-1)))``; below
``margin = ln(n-1)`` the true key never holds half the mass, even without noise.

Key noise -> score noise: with the 1/sqrt(d) scaling of Vaswani et al. (2017), i.i.d. noise of
per-dimension std ``sigma`` on a key vector adds ``q . xi / sqrt(d) ~ N(0, sigma^2 ||q||^2 / d)`` to its
score, so ``score_sigma = sigma ||q|| / sqrt(d)``, independent across keys (`score_noise_std`).

Shapes: every function takes and returns Python floats (``normal_pdf``/``normal_cdf`` also accept
NumPy arrays and return arrays of the same shape).
"""

from __future__ import annotations

import math

import numpy as np

_Z_LIMIT = 9.0  # |z| beyond which the standard normal density is < 1e-17
_Z_STEP = 0.01


def normal_pdf(x: np.ndarray | float) -> np.ndarray:
    """Standard normal density ``exp(-x^2/2) / sqrt(2 pi)``; shape of ``x``."""
    x = np.asarray(x, dtype=float)
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def normal_cdf(x: np.ndarray | float) -> np.ndarray:
    """Standard normal CDF ``erfc(-x / sqrt(2)) / 2`` (accurate in the lower tail); shape of ``x``."""
    x = np.asarray(x, dtype=float)
    return 0.5 * np.asarray(_erfc(-x / math.sqrt(2.0)), dtype=float)


def _check_positive_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, int | float | np.floating | np.integer) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def _z_grid() -> np.ndarray:
    return np.arange(-_Z_LIMIT, _Z_LIMIT + _Z_STEP / 2, _Z_STEP)


def _trapezoid(y: np.ndarray, step: float, axis: int = -1) -> np.ndarray:
    return step * (y.sum(axis=axis) - 0.5 * (y.take(0, axis=axis) + y.take(-1, axis=axis)))


def retrieval_accuracy(margin: float, sigma: float, n: int, signal_sigma: float | None = None) -> float:
    """Exact probability that the true key gets the highest of ``n`` noisy scores.

    ``margin``: noiseless score of the true key minus that of every distractor; ``sigma``: noise std
    of each distractor score; ``signal_sigma``: noise std of the true key's score (default ``sigma``).
    Ties (only possible without noise and zero margin) are broken uniformly at random.
    """
    _check_positive_int("n", n, 1)
    _check_nonneg("sigma", sigma)
    signal_sigma = sigma if signal_sigma is None else signal_sigma
    _check_nonneg("signal_sigma", signal_sigma)
    if not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite number, got {margin!r}")
    if n == 1:
        return 1.0
    if sigma == 0.0:
        if signal_sigma == 0.0:
            return 1.0 if margin > 0 else (1.0 / n if margin == 0 else 0.0)
        return float(normal_cdf(margin / signal_sigma))  # every distractor sits at 0
    z = _z_grid()
    with np.errstate(divide="ignore"):
        log_cdf = np.log(normal_cdf((margin + signal_sigma * z) / sigma))
    integrand = normal_pdf(z) * np.exp((n - 1) * log_cdf)
    return float(np.clip(_trapezoid(integrand, _Z_STEP), 0.0, 1.0))


def _bisect_decreasing(fn, target: float, low: float, high: float, rel_tol: float = 1e-6) -> float:
    """Root of a decreasing ``fn(x) = target`` on [low, high] (geometric bisection)."""
    while high / low > 1 + rel_tol:
        mid = math.sqrt(low * high)
        if fn(mid) > target:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


def critical_noise(margin: float, n: int, level: float = 0.5) -> float:
    """Score-noise std at which the exact `retrieval_accuracy` (equal noise on all keys) falls to ``level``.

    ``level`` must lie strictly between chance ``1/n`` and 1; the accuracy decreases from 1 to 1/n as
    the noise grows, so the level is crossed once.
    """
    _check_positive_int("n", n, 2)
    if not margin > 0 or not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite number > 0, got {margin!r}")
    if not 1.0 / n < level < 1.0:
        raise ValueError(f"level: expected a value strictly between 1/n = {1.0 / n:.4g} and 1, got {level!r}")
    low, high = margin / 100.0, margin
    while retrieval_accuracy(margin, high, n) > level:
        high *= 2.0
        if high > 1e6 * margin:
            raise ValueError(f"level: accuracy does not fall to {level} for n={n}; choose a larger level")
    return _bisect_decreasing(lambda s: retrieval_accuracy(margin, s, n), level, low, high)


def critical_noise_extreme_value(margin: float, n: int) -> float:
    """Extreme-value estimate of the critical score noise: ``margin / sqrt(2 ln n)``.

    The maximum of n i.i.d. N(0, sigma^2) grows like ``sigma sqrt(2 ln n)`` (Gumbel, 1958); the true
    key stops winning when that maximum reaches its margin. Asymptotic in n (it ignores the
    ``ln ln n`` correction and the true key's own noise); compare `critical_noise`.
    """
    _check_positive_int("n", n, 2)
    return margin / math.sqrt(2.0 * math.log(n))


def score_noise_std(
    key_sigma: float, query_norm: float, head_dim: int, query_sigma: float = 0.0, key_norm: float = 0.0
) -> float:
    """Std of the noise on ``q . k / sqrt(d)`` caused by Gaussian noise on the vectors.

    Key noise xi ~ N(0, key_sigma^2 I_d) adds ``q . xi / sqrt(d)``: std ``key_sigma ||q|| / sqrt(d)``,
    independent across keys (exact). Query noise eta ~ N(0, query_sigma^2 I_d) adds ``eta . k / sqrt(d)``
    (std ``query_sigma ||k|| / sqrt(d)``, independent across keys only when the keys are orthogonal)
    and, with both, ``eta . xi / sqrt(d)`` of variance ``query_sigma^2 key_sigma^2`` (not Gaussian).
    Returns the square root of the summed variances.
    """
    for name, value in (("key_sigma", key_sigma), ("query_norm", query_norm)):
        _check_nonneg(name, value)
    for name, value in (("query_sigma", query_sigma), ("key_norm", key_norm)):
        _check_nonneg(name, value)
    _check_positive_int("head_dim", head_dim, 1)
    variance = (key_sigma**2 * query_norm**2 + query_sigma**2 * key_norm**2) / head_dim
    variance += query_sigma**2 * key_sigma**2
    return math.sqrt(variance)


def _log_laplace_lognormal(sigma: float, v: np.ndarray, step: float) -> np.ndarray:
    """``log E[exp(-exp(v + sigma Z))]`` for Z ~ N(0, 1) on the uniform grid ``v`` (spacing ``step``)."""
    if sigma == 0.0:
        return -np.exp(v)
    # 1 - E[exp(-e^(v + sigma Z))], kept as a small number so that (n-1) * log L stays accurate
    if sigma < 0.3:
        # g(v + sigma z) varies on a z-scale of 1/sigma > 3 here: a coarser z grid is exact enough
        z_step = 0.05
        z = np.arange(-_Z_LIMIT, _Z_LIMIT + z_step / 2, z_step)
        g = -np.expm1(-np.exp(np.clip(v[:, None] + sigma * z[None, :], None, 700.0)))
        tail = _trapezoid(g * normal_pdf(z)[None, :], z_step, axis=1)
    else:
        # sigma Z on the same grid as v: a discrete convolution of g with the N(0, sigma^2) density
        half = math.ceil(_Z_LIMIT * sigma / step)
        offsets = np.arange(-half, half + 1) * step
        weights = normal_pdf(offsets / sigma) * step / sigma
        u = np.concatenate([v[0] + np.arange(-half, 0) * step, v, v[-1] + np.arange(1, half + 1) * step])
        g = -np.expm1(-np.exp(np.clip(u, None, 700.0)))
        size = len(g) + len(weights) - 1  # FFT convolution; absolute error ~1e-16, far below what matters
        full = np.fft.irfft(np.fft.rfft(g, size) * np.fft.rfft(weights, size), size)
        tail = full[len(weights) - 1 : len(g)]  # the "valid" part (weights are symmetric)
    with np.errstate(divide="ignore"):  # L underflows to 0 far right: log L = -inf, L^(n-1) = 0
        return np.log1p(-np.clip(tail, 0.0, 1.0))


def expected_softmax_mass(margin: float, sigma: float, n: int) -> float:
    """Exact expected softmax weight on the true key, ``E[1 / (1 + sum_j exp(s_j - s_0))]``.

    Scores: ``s_0 = margin + sigma Z_0`` (true key), ``s_j = sigma Z_j`` (n-1 distractors), i.i.d. Z.
    With ``1/(1+x) = int exp(-t(1+x)) dt`` and ``t = e^tau``:
    ``E = int phi(z) int exp(tau - e^tau) L(tau - margin - sigma z)^(n-1) dtau dz`` where
    ``L(v) = E[exp(-exp(v + sigma Z))]`` is a lognormal Laplace transform; all three integrals are
    evaluated on uniform grids (trapezoid rule). At sigma = 0 this is ``1 / (1 + (n-1) e^-margin)``.
    """
    _check_positive_int("n", n, 1)
    _check_nonneg("sigma", sigma)
    if not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite number, got {margin!r}")
    if n == 1:
        return 1.0
    step = 0.02  # grid of the lognormal transform (interpolated below)
    tau_step = 0.05  # the tau and z integrands vary on scales >= 1 and >= 1/sigma
    tau = np.arange(-32.0, 4.0 + tau_step / 2, tau_step)
    tau_weight = np.exp(tau - np.exp(tau))  # a density in tau (it integrates to 1)
    z_step = min(0.05, 0.25 / sigma) if sigma > 0 else 1.0
    z = np.arange(-_Z_LIMIT, _Z_LIMIT + z_step / 2, z_step) if sigma > 0 else np.zeros(1)
    shifts = margin + sigma * z
    v = np.arange(tau[0] - shifts.max() - step, tau[-1] - shifts.min() + 2 * step, step)
    log_l = _log_laplace_lognormal(sigma, v, step)
    args = tau[None, :] - shifts[:, None]
    power = np.exp((n - 1) * np.interp(args, v, log_l))
    inner = _trapezoid(tau_weight[None, :] * power, tau_step, axis=1)
    if sigma == 0:
        return float(inner[0])
    return float(np.clip(_trapezoid(normal_pdf(z) * inner, z_step), 0.0, 1.0))


def half_mass_noise(margin: float, n: int) -> float:
    """Score-noise std at which the exact `expected_softmax_mass` falls to 1/2.

    Requires a noiseless mass above 1/2, i.e. ``margin > ln(n-1)``.
    """
    _check_positive_int("n", n, 2)
    if not math.isfinite(margin) or margin <= math.log(n - 1):
        raise ValueError(
            f"margin: the true key holds half the softmax mass only if margin > ln(n-1) = {math.log(n - 1):.4g}, "
            f"got {margin!r}"
        )
    low, high = 1e-3, 1.0
    while expected_softmax_mass(margin, high, n) > 0.5:
        low, high = high, 2.0 * high
    return _bisect_decreasing(lambda s: expected_softmax_mass(margin, s, n), 0.5, low, high, rel_tol=1e-4)


def half_mass_noise_mean_field(margin: float, n: int) -> float:
    """Mean-field estimate of `half_mass_noise`: ``sqrt(2 (margin - ln(n-1)))``.

    Replaces the distractors' summed ``exp(s_j)`` by its mean ``(n-1) exp(sigma^2/2)``; then the mass is
    ``sigmoid(margin + sigma Z_0 - ln(n-1) - sigma^2/2)``, whose expectation is 1/2 exactly when the
    constant term vanishes. Good while the sum of lognormals obeys the law of large numbers
    (sigma well below ``sqrt(2 ln n)``; Ben Arous, Bogachev & Molchanov, 2005).
    """
    _check_positive_int("n", n, 2)
    if margin <= math.log(n - 1):
        raise ValueError(f"margin: expected > ln(n-1) = {math.log(n - 1):.4g}, got {margin!r}")
    return math.sqrt(2.0 * (margin - math.log(n - 1)))


def binomial_band(p: float, trials: int, confidence: float = 0.99) -> tuple[int, int]:
    """Central acceptance interval ``[lo, hi]`` of successes for Binomial(trials, p).

    ``P(X < lo) <= (1 - confidence)/2`` and ``P(X > hi) <= (1 - confidence)/2``, from the exact pmf
    (log-gamma), so a Monte Carlo count outside it rejects ``p`` at that level.
    """
    _check_positive_int("trials", trials, 1)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence!r}")
    if p in (0.0, 1.0):
        return (0, 0) if p == 0.0 else (trials, trials)
    k = np.arange(trials + 1)
    log_choose = np.array([math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1) for i in k])
    pmf = np.exp(log_choose + k * math.log(p) + (trials - k) * math.log1p(-p))
    alpha = (1.0 - confidence) / 2.0
    below = np.cumsum(pmf)  # P(X <= k)
    above = np.cumsum(pmf[::-1])[::-1]  # P(X >= k)
    # lo: largest k with P(X < k) <= alpha; hi: smallest k with P(X > k) <= alpha
    p_less = np.concatenate([[0.0], below[:-1]])
    p_more = np.concatenate([above[1:], [0.0]])
    lo = int(k[p_less <= alpha].max())
    hi = int(k[p_more <= alpha].min())
    return lo, hi
