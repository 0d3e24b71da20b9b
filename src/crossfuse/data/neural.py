"""Seeded spikes + LFP during center-out reaches, with a per-trial time lag between the two streams.

Each trial is one reach on a fixed timeline of ``num_bins`` bins:

- Hand velocity ``v = v_reach + v_corr``. ``v_reach`` is a minimum-jerk reach (Flash & Hogan, 1985)
  toward one of ``num_targets`` directions, with random onset, duration and amplitude.
  ``v_corr`` is a smaller corrective sub-movement (also minimum-jerk, random direction and time,
  starting mid-reach), as in reaches corrected online (Meyer et al., 1988).
- Spikes: ``num_neurons`` recorded units, Poisson counts per bin with log-linear cosine tuning to the
  *reach* velocity and speed, ``rate = exp(b + k * (u . v_reach) + s * |v_reach|)``
  (Georgopoulos et al., 1982; Moran & Schwartz, 1999).
- LFP: ``num_channels`` channels, each a positive-weighted sum of the rates of an unrecorded local
  population (same tuning model, but to the *full* velocity), low-pass filtered with a zero-phase
  Gaussian kernel, plus a mu/low-beta oscillation (12.5 Hz at 20 ms bins; per-trial amplitude and
  phase, per-channel phase offset) and white noise.

What each stream carries: the spikes encode the reach but not the corrective sub-movement; the LFP
encodes both (blurred by the low-pass filter, plus oscillatory and white noise). Decoding ``v`` therefore
gains from fusion: ``v_corr`` is only in the LFP, the spikes add single-unit detail of the reach. With
the defaults the LFP alone decodes ``v`` better than the spikes at zero lag (it is a smoothed rate of a
larger population); the spikes define the clock on which ``v`` is decoded.

Lag: the LFP of trial i is delayed by ``lags[i]`` bins (uniform on 0..max_lag) relative to the spikes
and the velocity: ``lfp[i, t] = lfp_aligned[i, t - lags[i]]``. The lags use their own random stream,
so for one seed the trials (kinematics, spikes, aligned LFP) are identical for every ``max_lag``; only
the lags change.

Shapes: `make_neural_trials` -> `NeuralTrials` with spikes (N, T, C_s) float counts, lfp (N, T, C_l),
velocity / reach_velocity / correction_velocity (N, T, 2), lags (N,) long, target_angle (N,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset


@dataclass(frozen=True)
class NeuralConfig:
    """Generator settings; times are in bins (20 ms each by convention)."""

    num_bins: int = 64
    num_neurons: int = 32
    num_channels: int = 8
    num_lfp_sources: int = 64  # unrecorded neurons whose summed activity the LFP sees
    num_targets: int = 8
    onset_range: tuple[int, int] = (8, 18)  # reach onset (bins), inclusive
    duration_range: tuple[int, int] = (16, 24)  # reach duration (bins)
    correction_scale: float = 0.6  # corrective sub-movement peak speed / reach peak speed
    correction_duration: tuple[int, int] = (8, 14)
    baseline_rate: float = 0.6  # recorded units: mean counts per bin at rest
    tuning_depth: tuple[float, float] = (1.0, 2.0)  # k: log-rate change per unit velocity
    speed_gain: tuple[float, float] = (0.0, 0.6)  # s: log-rate change per unit speed
    lfp_smoothing: float = 2.0  # std (bins) of the zero-phase Gaussian low-pass
    oscillation_period: float = 4.0  # bins (12.5 Hz, mu/low beta, at 20 ms bins)
    oscillation_amplitude: float = 0.6  # relative to the std of the signal part
    lfp_noise: float = 0.3  # white noise std relative to the std of the signal part
    max_supported_lag: int = 32  # the aligned LFP is generated this many bins before the window

    def __post_init__(self) -> None:
        for name in ("num_bins", "num_neurons", "num_channels", "num_lfp_sources", "num_targets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        last = self.onset_range[1] + self.duration_range[1]
        if last > self.num_bins:
            raise ValueError(
                f"num_bins: reaches may end at bin {last} (onset_range + duration_range), got num_bins={self.num_bins}"
            )


@dataclass
class NeuralTrials:
    """Generated trials; see the module docstring for what each stream carries.

    Shapes: spikes: (N, T, C_s) float counts  lfp: (N, T, C_l)  velocity, reach_velocity,
    correction_velocity: (N, T, 2)  lags: (N,) long, LFP delay in bins  target_angle: (N,) radians.
    """

    spikes: Tensor
    lfp: Tensor
    velocity: Tensor
    reach_velocity: Tensor
    correction_velocity: Tensor
    lags: Tensor
    target_angle: Tensor

    def __len__(self) -> int:
        return self.spikes.shape[0]

    def dataset(self) -> MultimodalDataset:
        """``{"spikes", "lfp"}`` inputs with per-bin velocity targets y: (N, T, 2)."""
        return MultimodalDataset({"spikes": self.spikes, "lfp": self.lfp}, self.velocity)


def minimum_jerk_speed(t: np.ndarray, onset: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Speed profile of a unit-distance minimum-jerk movement (Flash & Hogan, 1985), peak-normalised to 1.

    ``30 s^2 (1 - s)^2 / duration`` for ``s = (t - onset) / duration`` in [0, 1], else 0; divided by
    its peak ``1.875 / duration``. Shapes: t: (T,)  onset, duration: (N,)  ->  (N, T)
    """
    s = (t[None, :] - onset[:, None]) / duration[:, None]
    inside = (s >= 0) & (s <= 1)
    return np.where(inside, 16.0 * s**2 * (1.0 - s) ** 2, 0.0)


def _gaussian_lowpass(x: np.ndarray, std: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along axis 1 (edges: reflected). Shapes: (N, T, C) -> (N, T, C)."""
    if std <= 0:
        return x
    half = math.ceil(4 * std)
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (offsets / std) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((0, 0), (half, half), (0, 0)), mode="reflect")
    out = np.zeros_like(x)
    for i, w in enumerate(kernel):
        out += w * padded[:, i : i + x.shape[1]]
    return out


def _log_linear_rates(
    velocity: np.ndarray, preferred: np.ndarray, depth: np.ndarray, speed_gain: np.ndarray, log_base: np.ndarray
) -> np.ndarray:
    """Cosine-tuned log-linear rates. Shapes: velocity (N, T, 2), per-unit params (U, 2) / (U,) -> (N, T, U)."""
    flat = velocity.reshape(-1, 2)
    speed = np.sqrt((flat**2).sum(axis=-1, keepdims=True))
    weights = np.concatenate([(preferred * depth[:, None]).T, speed_gain[None, :]])  # (3, U)
    # three broadcast products: faster than a matmul with an inner size of 3
    log_rate = log_base + flat[:, :1] * weights[0] + flat[:, 1:] * weights[1] + speed * weights[2]
    return np.exp(log_rate).reshape(*velocity.shape[:-1], -1)


def make_neural_trials(
    num_trials: int, max_lag: int = 0, seed: int = 0, config: NeuralConfig | None = None
) -> NeuralTrials:
    """Generate ``num_trials`` reaches with LFP delays drawn uniformly from 0..``max_lag`` bins.

    Deterministic for a given (num_trials, seed, config); ``max_lag`` only changes the lags.
    The neurons' tuning and the LFP mixing weights depend on ``seed`` only (one "animal" per seed).
    """
    config = config or NeuralConfig()
    if not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"num_trials: expected an integer >= 1, got {num_trials!r}")
    if not isinstance(max_lag, int) or not 0 <= max_lag <= config.max_supported_lag:
        raise ValueError(
            f"max_lag: expected an integer in [0, {config.max_supported_lag}] (config.max_supported_lag), "
            f"got {max_lag!r}"
        )
    animal_rng, trial_rng, lag_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    pad, steps = config.max_supported_lag, config.num_bins
    t = np.arange(-pad, steps, dtype=float)  # the aligned LFP starts `pad` bins before the window

    # kinematics (window coordinates; nothing moves before the window)
    target = trial_rng.integers(0, config.num_targets, num_trials)
    angle = 2 * math.pi * target / config.num_targets
    onset = trial_rng.integers(config.onset_range[0], config.onset_range[1] + 1, num_trials).astype(float)
    duration = trial_rng.integers(config.duration_range[0], config.duration_range[1] + 1, num_trials).astype(float)
    amplitude = trial_rng.uniform(0.8, 1.2, num_trials)
    reach_dir = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    reach = (amplitude[:, None] * minimum_jerk_speed(t, onset, duration))[..., None] * reach_dir[:, None, :]
    corr_angle = trial_rng.uniform(0, 2 * math.pi, num_trials)
    corr_onset = onset + np.floor(duration * trial_rng.uniform(0.3, 0.6, num_trials))
    corr_duration = trial_rng.integers(config.correction_duration[0], config.correction_duration[1] + 1, num_trials)
    corr_dir = np.stack([np.cos(corr_angle), np.sin(corr_angle)], axis=-1)
    corr_speed = config.correction_scale * amplitude[:, None] * minimum_jerk_speed(t, corr_onset, corr_duration)
    correction = corr_speed[..., None] * corr_dir[:, None, :]
    velocity = reach + correction

    # recorded units: tuned to the reach only
    n_units = config.num_neurons
    pref = animal_rng.uniform(0, 2 * math.pi, n_units)
    unit_pref = np.stack([np.cos(pref), np.sin(pref)], axis=-1)
    unit_depth = animal_rng.uniform(*config.tuning_depth, n_units)
    unit_speed = animal_rng.uniform(*config.speed_gain, n_units)
    unit_base = np.log(config.baseline_rate) + animal_rng.normal(0, 0.3, n_units)
    rates = _log_linear_rates(reach[:, pad:], unit_pref, unit_depth, unit_speed, unit_base)
    spikes = trial_rng.poisson(rates).astype(np.float32)

    # LFP: low-passed, positively weighted sums of an unrecorded population tuned to the full velocity
    n_src = config.num_lfp_sources
    src_angle = animal_rng.uniform(0, 2 * math.pi, n_src)
    src_pref = np.stack([np.cos(src_angle), np.sin(src_angle)], axis=-1)
    src_params = (
        src_pref,
        animal_rng.uniform(*config.tuning_depth, n_src),
        animal_rng.uniform(*config.speed_gain, n_src),
        np.log(config.baseline_rate) + animal_rng.normal(0, 0.3, n_src),
    )
    mixing = animal_rng.exponential(1.0, (n_src, config.num_channels)) / n_src
    rest = np.exp(src_params[3]) @ mixing  # (C_l,) signal at rest
    # unit scale from the animal alone (not the sampled trials): std over one reach to each target
    reference_angle = 2 * math.pi * np.arange(config.num_targets) / config.num_targets
    reference_dir = np.stack([np.cos(reference_angle), np.sin(reference_angle)], axis=-1)
    reference_speed = minimum_jerk_speed(
        np.arange(steps, dtype=float),
        np.full(config.num_targets, float(config.onset_range[0])),
        np.full(config.num_targets, float(config.duration_range[1])),
    )
    reference = _log_linear_rates(reference_speed[..., None] * reference_dir[:, None, :], *src_params) @ mixing
    scale = (reference - rest).std() + 1e-12
    signal = (_gaussian_lowpass(_log_linear_rates(velocity, *src_params) @ mixing, config.lfp_smoothing) - rest) / scale
    phase = animal_rng.uniform(0, 2 * math.pi, config.num_channels)
    trial_phase = trial_rng.uniform(0, 2 * math.pi, num_trials)
    osc_amp = config.oscillation_amplitude * trial_rng.uniform(0.5, 1.5, num_trials)
    omega = 2 * math.pi / config.oscillation_period
    oscillation = np.sin(omega * t[None, :, None] + trial_phase[:, None, None] + phase[None, None, :])
    noise = config.lfp_noise * trial_rng.standard_normal(signal.shape)
    lfp_aligned = signal + osc_amp[:, None, None] * math.sqrt(2) * oscillation + noise

    # per-trial delay of the LFP: lfp[t] = lfp_aligned[t - lag]
    lags = lag_rng.integers(0, max_lag + 1, num_trials)
    index = pad + np.arange(steps)[None, :] - lags[:, None]  # (N, T) into the padded timeline
    lfp = np.take_along_axis(lfp_aligned, index[..., None], axis=1)

    def as_tensor(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    return NeuralTrials(
        spikes=as_tensor(spikes),
        lfp=as_tensor(lfp),
        velocity=as_tensor(velocity[:, pad:]),
        reach_velocity=as_tensor(reach[:, pad:]),
        correction_velocity=as_tensor(correction[:, pad:]),
        lags=torch.from_numpy(lags.astype(np.int64)),
        target_angle=as_tensor(angle),
    )
