"""Small pieces every lab experiment uses: mean ± std, figures as PNG bytes, the verdict rule."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from crossfuse.lab.result import Verdict


def mean_std(values: list[float] | np.ndarray, digits: int = 3) -> str:
    """``"0.912 ± 0.013"`` (std over seeds, ddof=0); one value is shown alone (``"0.912"``), no values as "-"."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return "-"
    if arr.size == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"


def figure_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def verdict(passed: bool, precondition_met: bool | None = True, enough_data: bool = True) -> Verdict:
    """``supported`` / ``not supported``; ``inconclusive`` when the experiment's PRECONDITION failed (the claim
    could not show at all) or the run was too small to judge (``enough_data`` False, e.g. size "smoke")."""
    if not enough_data or precondition_met is False:
        return "inconclusive"
    return "supported" if passed else "not supported"
