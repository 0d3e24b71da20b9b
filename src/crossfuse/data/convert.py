"""Conversions into crossfuse's data formats: ``.npz`` -> data-set directory, ``.ts`` archive -> ``.npz`` or directory.

`npz_to_directory` reads a user ``.npz`` (checked as `crossfuse.data.npz.load_npz` checks it) and writes the
memory-mapped directory layout of `crossfuse.data.directory`, which the trainer reads a batch at a time.

`ts_to_dataset` reads a training ``.ts`` file and, optionally, a test file (`crossfuse.data.ts_format`),
groups channels into named modalities (e.g. accelerometer = 0,1,2 and gyroscope = 3,4,5) and writes either
an ``.npz`` (when ``out`` ends in ``.npz``) or a directory. With a test file the split marks its rows as
test (2) and draws validation rows (``val_fraction``, seeded) from the training file's rows; without one
the file has no split and training draws the usual seeded 70/15/15 split. Class labels are the training
file's ``@classLabel`` list, in its order; a test label outside it is an error.

Shapes: ts_to_dataset -> arrays {name: (N, T_max, C_name) float32, name__mask: (N, T_max) bool,
y: (N,) int64 (classes) or float64 (targets), split: (N,) int64 optional}.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossfuse.atomic import atomic_write_bytes
from crossfuse.data.directory import write_dataset_dir
from crossfuse.data.npz import MASK_SUFFIX, load_npz
from crossfuse.data.ts_format import class_indices, group_channels, read_ts


def npz_to_directory(npz: str | Path, out: str | Path) -> Path:
    """Write the data of ``npz`` as a data-set directory at ``out`` (new or empty); return ``out``."""
    data, split = load_npz(npz)
    return write_dataset_dir(out, data.inputs, data.y.numpy(), masks=data.masks, split=split)


def ts_arrays(
    train: str | Path,
    groups: Mapping[str, Sequence[int]],
    test: str | Path | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` built from ``.ts`` files (keys as `crossfuse.data.npz` reads them)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction}")
    first = read_ts(train)
    parts = [first] if test is None else [first, read_ts(test)]
    if test is not None:
        second = parts[1]
        if second.num_channels != first.num_channels:
            raise ValueError(
                f"test: {test} has {second.num_channels} channels, {train} has {first.num_channels}; expected the same"
            )
        if (first.class_labels is None) != (second.class_labels is None):
            raise ValueError(f"test: {test} and {train} disagree on the task (class labels in one only)")
    arrays: dict[str, Any] = {}
    series = [case for part in parts for case in part.series]
    merged = type(first)(series=series, y=np.concatenate([p.y for p in parts]), class_labels=first.class_labels)
    inputs, masks = group_channels(merged, groups)
    for name in inputs:
        arrays[name] = inputs[name]
        arrays[name + MASK_SUFFIX] = masks[name]
    if first.class_labels is not None:
        unknown = sorted(set(merged.y.tolist()) - set(first.class_labels))
        if unknown:
            raise ValueError(f"test: labels {unknown} are not among {train}'s classes {list(first.class_labels)}")
        arrays["y"] = class_indices(merged.y, first.class_labels)
    else:
        arrays["y"] = merged.y.astype(np.float64)
    if test is not None:
        n_train = len(first.series)
        split = np.full(len(series), 2, dtype=np.int64)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_train)
        n_val = max(1, round(val_fraction * n_train))
        split[:n_train] = 0
        split[order[:n_val]] = 1
        arrays["split"] = split
    return arrays


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def ts_to_dataset(
    train: str | Path,
    groups: Mapping[str, Sequence[int]],
    out: str | Path,
    test: str | Path | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> Path:
    """Convert ``.ts`` file(s) to ``out``: an ``.npz`` file (written atomically) or a data-set directory."""
    out = Path(out)
    arrays = ts_arrays(train, groups, test=test, val_fraction=val_fraction, seed=seed)
    if out.suffix.lower() == ".npz":
        if out.is_dir():
            raise IsADirectoryError(f"out: {str(out)!r} is a directory; expected an .npz file name")
        return atomic_write_bytes(out, _npz_bytes(arrays))
    names = [k for k in arrays if k not in ("y", "split") and not k.endswith(MASK_SUFFIX)]
    return write_dataset_dir(
        out,
        {k: arrays[k] for k in names},
        arrays["y"],
        masks={k: arrays[k + MASK_SUFFIX] for k in names},
        split=arrays.get("split"),
    )
