"""Per-word heatmap overlays: where the decoder looked in the image when it wrote each word.

Each generated word's cross-attention over the patch grid (averaged over layers and heads by the
caller, or one layer/head) is drawn as nearest-neighbour patches over the grayscale image, the
ground-truth boxes (if any) as green rectangles.

Shapes: image: (H, W) in [0, 1]  attention: (T, gh * gw) or (T, gh, gw), one row per word,
summing to 1  ->  one PNG per word.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

_UNSAFE = re.compile(r"[^a-z0-9]+")


def _array(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def overlay_png(
    image: Tensor | np.ndarray,
    heat: Tensor | np.ndarray,
    title: str = "",
    boxes: Sequence[tuple[int, int, int, int]] = (),
    dpi: int = 100,
) -> bytes:
    """One heatmap over the image as PNG bytes.

    Shapes: image: (H, W)  heat: (gh, gw) with H, W multiples of gh, gw  boxes: (x0, y0, x1, y1) pixels.
    """
    image, heat = _array(image), _array(heat)
    if image.ndim != 2:
        raise ValueError(f"image: expected shape (H, W), got {image.shape}")
    if heat.ndim != 2 or image.shape[0] % heat.shape[0] or image.shape[1] % heat.shape[1]:
        raise ValueError(f"heat: expected a (gh, gw) grid dividing the image {image.shape}, got {heat.shape}")
    height, width = image.shape
    extent = (0, width, height, 0)
    fig, ax = plt.subplots(figsize=(3.2, 3.5))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
    shown = ax.imshow(heat, cmap="inferno", alpha=0.55, extent=extent, interpolation="nearest", vmin=0)
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#2ca02c", linewidth=1.5))
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_word_heatmaps(
    image: Tensor | np.ndarray,
    words: Sequence[str],
    attention: Tensor | np.ndarray,
    out_dir: Path,
    grid: tuple[int, int] | None = None,
    boxes: Sequence[tuple[int, int, int, int]] = (),
) -> list[Path]:
    """Write ``NN_word.png`` for every word (punctuation skipped; NN = the word's 1-based position).

    Shapes: image: (H, W)  words: T tokens  attention: (T, gh * gw) (``grid`` = (gh, gw), default
    square) or (T, gh, gw)  ->  paths of the written files, in order.
    """
    maps = _array(attention)
    if maps.shape[0] != len(words):
        raise ValueError(f"attention: expected one row per word ({len(words)}), got {maps.shape[0]}")
    if maps.ndim == 2:
        side = math.isqrt(maps.shape[1])
        gh, gw = grid or (side, side)
        if gh * gw != maps.shape[1]:
            raise ValueError(f"grid: expected gh * gw = {maps.shape[1]} patches, got {grid or (side, side)}")
        maps = maps.reshape(len(words), gh, gw)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, word in enumerate(words):
        name = _UNSAFE.sub("", word.lower())
        if not name:
            continue
        path = out_dir / f"{position + 1:02d}_{name}.png"
        path.write_bytes(overlay_png(image, maps[position], f"{position + 1}: '{word}'", boxes))
        paths.append(path)
    return paths
