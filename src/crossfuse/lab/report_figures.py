"""Figures of the report experiment: per-word heatmaps of one film for two encoders, training curves.

Shapes: heatmaps: per model, T rows of gh * gw weights (one per generated word) over a (S, S) film.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from crossfuse.data.radiographs import detokenize
from crossfuse.lab.common import figure_png
from crossfuse.lab.grounding import asserted_finding_positions

WORDS_SHOWN = 4


def _wrap(text: str, width: int = 34) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def _overlay(ax, image: np.ndarray, heat: np.ndarray | None, title: str, boxes) -> None:
    size = image.shape[0]
    extent = (0, size, size, 0)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.55, extent=extent, interpolation="nearest")
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#2ca02c", linewidth=1.2))
    ax.set_title(title, fontsize=8, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])


def _pick_film(keep: dict) -> int:
    """The first test film on which both models assert a finding word (else the first with a finding)."""
    studies = keep["local"][0].test
    for j, study in enumerate(studies):
        if study.findings and all(asserted_finding_positions(words[j]) for _, words, _ in keep.values()):
            return j
    return next((j for j, s in enumerate(studies) if s.findings), 0)


def heatmaps_figure(keep: dict[str, tuple], method: str, patch_size: int) -> bytes:
    """One test film: per model (a row), its report and the heatmaps of its first finding-sentence words.

    ``keep``: model name -> (TrainedCaptioner, words per test film, heatmaps per test film (T, gh * gw)).
    """
    j = _pick_film(keep)
    names = list(keep)
    fig, axes = plt.subplots(
        len(names), 1 + WORDS_SHOWN, figsize=(2.6 * (1 + WORDS_SHOWN), 3.5 * len(names)), squeeze=False
    )
    for row, name in enumerate(names):
        trained, words, heat = keep[name]
        study = trained.test[j]
        boxes = [f.xyxy for f in study.findings]
        grid = study.image.shape[0] // patch_size
        _overlay(axes[row, 0], study.image, None, f"{name} encoder:\n" + _wrap(detokenize(words[j])), boxes)
        asserted = asserted_finding_positions(words[j])
        start = max(0, asserted[0] - 3) if asserted else 0
        alphabetic = [t for t in range(start, len(words[j])) if words[j][t].isalpha()][:WORDS_SHOWN]
        for col in range(WORDS_SHOWN):
            ax = axes[row, 1 + col]
            if col >= len(alphabetic):
                ax.axis("off")
                continue
            t = alphabetic[col]
            maps = heat[j][t]
            maps = maps.numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
            grid_map = maps.reshape(grid, grid)
            _overlay(ax, study.image, grid_map, f"'{words[j][t]}' (word {t + 1})\nmax {grid_map.max():.3f}", boxes)
    fig.suptitle(
        f"One held-out film, per-word {method} heatmaps: local (top) vs ViT encoder; green: ground-truth boxes; "
        f"uniform = {1 / grid**2:.3f}",
        fontsize=9,
    )
    fig.tight_layout(h_pad=2.0)
    return figure_png(fig)


def training_figure(histories: list[list[dict[str, float]]], seeds: list[int]) -> bytes:
    """Teacher-forced loss and validation token accuracy per epoch of the judged model, per seed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for history, s in zip(histories, seeds, strict=True):
        epochs = [h["epoch"] for h in history]
        left.plot(epochs, [h["train_loss"] for h in history], label=f"train, seed {s}")
        left.plot(epochs, [h["val_loss"] for h in history], "--", label=f"validation, seed {s}")
        right.plot(epochs, [h["val_token_accuracy"] for h in history], label=f"seed {s}")
    left.set(xlabel="epoch", ylabel="cross-entropy per token", title="teacher-forced loss (local encoder)")
    right.set(xlabel="epoch", ylabel="next-token accuracy", title="validation token accuracy")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
