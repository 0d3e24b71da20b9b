"""Figures of the gradient-highway experiment: routing ratios per model, gradient norm against decoder depth."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from crossfuse.lab.common import figure_png
from crossfuse.lab.gradient_depth import MODELS, DepthPoint

_COLOURS = {"cross": "#1f77b4", "prefix": "#d62728"}


def routing_figure(ratios: dict[str, list[float]], threshold: float) -> bytes:
    """One box per model: routing share / box patch share over finding words (log scale)."""
    names = [name for name, values in ratios.items() if values]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 3.6))
    data = [np.asarray(ratios[name]) for name in names]
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.15, 0.15, len(values)), values, "o", markersize=2, alpha=0.4, color="#555555")
    ax.axhline(1.0, color="#d62728", linestyle="--", linewidth=1, label="pooled decoder (= box share)")
    ax.axhline(threshold, color="#2ca02c", linestyle=":", linewidth=1, label=f"criterion {threshold:g}x")
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set(
        yscale="log", ylabel="gradient share on box / box patch share", title="Where a finding word's gradient lands"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def depth_figure(points: list[DepthPoint], steps: int) -> bytes:
    """Gradient norm at the encoder's last layer against decoder depth; median over seeds, dots per seed."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    depths = sorted({p.depth for p in points})
    for name in MODELS:
        for field, style, when in (("at_init", "--", "at init"), ("trained", "-", f"after {steps} steps")):
            values = [[getattr(p, field) for p in points if p.model == name and p.depth == d] for d in depths]
            ax.plot(
                depths, [np.median(v) for v in values], style, marker="o", color=_COLOURS[name], label=f"{name}, {when}"
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="decoder layers",
        ylabel="gradient norm, encoder's last layer",
        title="Gradient reaching the encoder as the decoder deepens",
    )
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
