"""Figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

_DEMO_COLOURS = ["#dddddd", "#d62728", "#2ca02c", "#1f77b4"]


def save_attention_demo(image: torch.Tensor, weights: torch.Tensor, word: str, path: Path) -> Path:
    """Toy image beside the word's attention heatmap.

    Shapes: image: (G, G) colour ids  weights: (G, G)  ->  PNG at ``path``.
    """
    from matplotlib.colors import ListedColormap

    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.4))
    left.imshow(image.numpy(), cmap=ListedColormap(_DEMO_COLOURS), vmin=0, vmax=3)
    left.set_title("toy image (patches)")
    shown = right.imshow(weights.numpy(), cmap="magma", vmin=0)
    right.set_title(f"attention of {word!r}")
    fig.colorbar(shown, ax=right, fraction=0.046)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
