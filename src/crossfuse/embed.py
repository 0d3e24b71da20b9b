"""Values made safe to embed: JSON-safe containers and PNG data URIs (one place for both).

Shapes: png_data_uri  image: (H, W) grey or (H, W, 3) RGB, floats in [0, 1]  ->  "data:image/png;base64,..."
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON: numpy/torch values to Python, NaN/inf to None, keys to str, paths to str.

    Containers are converted recursively; anything else without a JSON form becomes its ``repr``.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, np.generic):
        value = value.item()
    elif hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return repr(value)


def png_data_uri(image: np.ndarray, scale: int = 1) -> str:
    """An image as a ``data:image/png;base64,...`` URI, each pixel repeated ``scale`` x ``scale`` times."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"png_data_uri: image must be (H, W) or (H, W, 3), got {tuple(array.shape)}")
    if scale < 1:
        raise ValueError(f"png_data_uri: scale must be >= 1, got {scale}")
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    pixels = np.round(np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
