"""Figures of a training run: loss, validation metrics, learning rate, per-modality gradient share.

Read from the run's ``metrics.jsonl`` (epoch records, and step records where hooks wrote them:
``grad_share/<modality>`` with ``--monitor-gradients``, ``ogm_coeff/<modality>`` with OGM-GE), drawn
with matplotlib into one PNG: ``crossfuse plot --run DIR`` and the end of ``crossfuse train``
(``DIR/curves.png``). `compare_figure` draws the bar chart of ``crossfuse compare`` with error bars
over seeds, `compare_curves_figure` its per-epoch curves (mean ± std over seeds per strategy).

Shapes: no tensors; plot_run(run_dir, out) -> path of the PNG written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

CURVES_FILE = "curves.png"


def _series(records: Sequence[Mapping[str, Any]], x_key: str, key: str) -> tuple[list[float], list[float]]:
    points = [
        (float(r[x_key]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and isinstance(r.get(x_key), int | float) and math.isfinite(r[key])
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _smooth(values: list[float], window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return np.asarray(values, dtype=float)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def curves_figure(records: Sequence[Mapping[str, Any]], title: str = "") -> plt.Figure:
    """One figure of every curve the records hold (panels without data are left out).

    Panels: training loss (per epoch, and per step where recorded), validation metrics per epoch, learning
    rate per epoch, gradient share per modality (step records, with a moving average).
    """
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    val_keys = sorted({k for r in epochs for k in r if k.startswith("val_") and k != "val_score"})
    share_keys = sorted({k for r in steps for k in r if k.startswith("grad_share/")})
    panels: list[tuple[str, list[tuple[str, list[float], list[float], str]]]] = []
    loss = [("train loss (epoch mean)", *_series(epochs, "step", "train_loss"), "o-")]
    if any("loss" in r for r in steps):
        loss.append(("train loss (step)", *_series(steps, "step", "loss"), "-"))
    panels.append(("training loss", loss))
    if val_keys:
        panels.append(("validation", [(k[4:], *_series(epochs, "epoch", k), "o-") for k in val_keys]))
    panels.append(("learning rate", [("lr at epoch end", *_series(epochs, "epoch", "lr"), "o-")]))
    if share_keys:
        window = max(1, len(steps) // 50)
        lines = []
        for key in share_keys:
            x, y = _series(steps, "step", key)
            smooth = _smooth(y, window)
            lines.append((f"{key.split('/', 1)[1]} ({window}-step mean)", x[len(x) - len(smooth) :], list(smooth), "-"))
        panels.append(("gradient share per modality", lines))
    panels = [(name, [line for line in lines if line[1]]) for name, lines in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels, strict=False):
        for label, x, y, style in lines:
            ax.plot(x, y, style, label=label, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step" if name in ("training loss", "gradient share per modality") else "epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no records yet", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl``; a missing file is a FileNotFoundError naming ``run_dir``."""
    from crossfuse.train import iter_metrics

    return list(iter_metrics(Path(run_dir), kind=None))


def _save(fig: plt.Figure, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` (PNG, 110 dpi), close it, return the path."""
    target = Path(out)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the curves of ``run_dir`` into ``out`` (default ``run_dir/curves.png``); return the path."""
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / CURVES_FILE
    if target.suffix.lower() != ".png":
        raise ValueError(f"out: expected a .png file name, got {str(target)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return _save(curves_figure(read_records(run_dir), title=str(run_dir)), target)


def compare_figure(scores: Mapping[str, Sequence[float]], metric: str, out: str | Path) -> Path:
    """Bar chart of a metric per strategy: mean over seeds with the standard deviation as error bars.

    Shapes: scores {strategy: [value per seed]} -> path of the PNG written.
    """
    names = list(scores)
    means = [float(np.mean(scores[n])) for n in names]
    stds = [float(np.std(scores[n])) if len(scores[n]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 3.4))
    ax.bar(names, means, yerr=stds, capsize=4, color="#4c72b0")
    seeds = sorted({len(v) for v in scores.values()})
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by strategy (mean ± std over {'/'.join(map(str, seeds))} seed(s))", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def compare_curves_plot(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], keys: Sequence[str]
) -> plt.Figure:
    """One panel per key (e.g. ``train_loss``, ``val_accuracy``): per strategy the mean over seeds per epoch,
    with a ± std band; NaN entries (an epoch without that value) are left out of the mean.

    Shapes: curves {strategy: [{key: [value per epoch]} per seed]} -> a figure with ``len(keys)`` axes.
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, runs in curves.items():
            length = max((len(r.get(key, ())) for r in runs), default=0)
            values = np.full((len(runs), length), np.nan)
            for i, r in enumerate(runs):
                values[i, : len(r.get(key, ()))] = r.get(key, ())
            seen = ~np.isnan(values).all(axis=0) if length else np.zeros(0, dtype=bool)
            if not seen.any():
                continue
            epochs = np.arange(1, length + 1)[seen]
            mean, std = np.nanmean(values[:, seen], axis=0), np.nanstd(values[:, seen], axis=0)
            (line,) = ax.plot(epochs, mean, "o-", markersize=3, label=name)
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    seeds = sorted({len(v) for v in curves.values()})
    if axes[0][-1].lines:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"per epoch, mean ± std over {'/'.join(map(str, seeds))} seed(s)", fontsize=10)
    fig.tight_layout()
    return fig


def compare_curves_figure(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], keys: Sequence[str], out: str | Path
) -> Path:
    """`compare_curves_plot` written to ``out`` as a PNG; returns the path."""
    return _save(compare_curves_plot(curves, keys), out)
