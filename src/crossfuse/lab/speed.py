"""How fast this machine runs the lab's kind of work, relative to the machine the plans were timed on.

The probe is a fixed small training step (a two-layer MLP, batch 64, width 256, Adam) on one torch
thread, timed by the wall clock: a slower CPU and a CPU shared with other work both make it slower,
and both slow an experiment the same way. ``factor = measured ms/step / REFERENCE_STEP_MS`` scales each
``Plan.expected_s`` (measured on `crossfuse.lab.result.REFERENCE_MACHINE`) into the "~85 s" the
progress line announces.

Shapes: no tensors in the interface; ``speed_factor() -> SpeedProbe``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

REFERENCE_STEP_MS = 1.5
"""Milliseconds per probe step on the reference machine (CPU seconds of one thread, median of 3 runs)."""

FACTOR_RANGE = (1.0, 8.0)
"""The factor is clipped to this range. The lower end was 0.25; it is 1.0 since two clean-clone `make demo` runs on
the same idle 2-core EPYC probed 1.13 and 0.74 ms/step (factors 0.75 and 0.49) while every experiment ran at
0.45-1.02x its ``expected_s`` serially and up to 1.18x the serial time with two at once: a probe below the
reference promised times the experiments missed (binding "~54 s", took 96 s). So the probe may lengthen an
estimate (a slower or busy machine) but never shorten it below the measured ``expected_s``."""


@dataclass(frozen=True)
class SpeedProbe:
    """Result of the probe: ms per step here, the reference, and the factor applied to expected times."""

    step_ms: float
    reference_ms: float
    factor: float

    def scale(self, expected_s: float | None) -> float | None:
        """``expected_s`` on this machine (None stays None)."""
        return None if expected_s is None else expected_s * self.factor

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_step_ms(steps: int = 20, repeats: int = 3) -> float:
    """Median wall milliseconds of one probe step (one torch thread; the caller's thread count is restored)."""
    import torch
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 256, generator=generator)
        y = torch.randint(0, 10, (64,), generator=generator)
        model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        for _ in range(5):  # warm-up: allocator, Adam state
            step()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            runs.append((time.perf_counter() - start) * 1e3 / steps)
        return statistics.median(runs)
    finally:
        torch.set_num_threads(threads)


def speed_factor(step_ms: float | None = None) -> SpeedProbe:
    """Run the probe (or use ``step_ms``) and return the factor by which this machine is slower than the reference."""
    measured = probe_step_ms() if step_ms is None else step_ms
    if not measured > 0:
        raise ValueError(f"step_ms: expected a positive number of milliseconds, got {measured!r}")
    low, high = FACTOR_RANGE
    factor = min(max(measured / REFERENCE_STEP_MS, low), high)
    return SpeedProbe(step_ms=measured, reference_ms=REFERENCE_STEP_MS, factor=factor)
