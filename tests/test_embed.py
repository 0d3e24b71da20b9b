"""Tests for crossfuse.embed and crossfuse.atomic: JSON-safe values, PNG data URIs, atomic writes."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossfuse.atomic import atomic_write_json, atomic_write_text, temporary_sibling
from crossfuse.embed import jsonable, png_data_uri


def test_jsonable_converts_numpy_torch_and_non_finite() -> None:
    value = {1: np.float32(0.5), "a": [np.int64(3), float("nan")], "t": torch.tensor([1.0, math.inf]), "p": Path("x")}
    out = jsonable(value)
    assert out == {"1": 0.5, "a": [3, None], "t": [1.0, None], "p": "x"}
    json.dumps(out, allow_nan=False)  # strict JSON: raises if anything non-finite survived


def test_png_data_uri_round_trips_pixels_and_scale() -> None:
    image = np.array([[0.0, 1.0], [0.5, 0.25]])
    uri = png_data_uri(image, scale=3)
    assert uri.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert decoded.shape == (6, 6)
    np.testing.assert_array_equal(decoded[::3, ::3], np.round(image * 255).astype(np.uint8))
    rgb = png_data_uri(np.zeros((2, 2, 3)))
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(rgb.split(",", 1)[1])))).shape == (2, 2, 3)


def test_png_data_uri_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"image must be .* got \(2, 2, 4\)"):
        png_data_uri(np.zeros((2, 2, 4)))


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not temporary_sibling(target).exists()
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert target.read_text() == "old"
    assert not temporary_sibling(target).exists()
