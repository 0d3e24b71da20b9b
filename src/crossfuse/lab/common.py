"""Small pieces every lab experiment uses: seeds per size, mean ± std, figures as PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from crossfuse.lab.result import Size, Verdict


def seeds_for(size: Size, seed: int, num_seeds: int | None, defaults: dict[str, int]) -> list[int]:
    """The seeds to run: ``num_seeds`` if given, else ``defaults[size]``, counting up from ``seed``."""
    count = num_seeds if num_seeds is not None else defaults[size]
    if count < 1:
        raise ValueError(f"num_seeds: expected >= 1, got {count}")
    return [seed + i for i in range(count)]


def mean_std(values: list[float] | np.ndarray, digits: int = 3) -> str:
    """``"0.912 ± 0.013"`` (std over seeds, ddof=0; a single value has std 0)."""
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"


def figure_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def verdict(passed: bool, enough_data: bool = True) -> Verdict:
    """``supported`` / ``not supported``, or ``inconclusive`` when the run was too small to judge."""
    if not enough_data:
        return "inconclusive"
    return "supported" if passed else "not supported"


def jsonable(value: Any) -> Any:
    """Nested dicts/lists of numbers made JSON-safe: numpy scalars to Python, NaN/inf to None, keys to str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
