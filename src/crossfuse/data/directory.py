"""Data sets larger than memory: a directory of ``.npy`` files opened with memory mapping.

Layout (written by `write_dataset_dir`, e.g. through ``crossfuse convert data.npz DIR``)::

    DIR/manifest.json        {"format": "crossfuse-dataset", "version": 1, "rows": N,
                              "modalities": {name: {"shape": [T_m, D_m]}}, "y": {"dtype": ..., "shape": [...]},
                              "split": true | false}
    DIR/<name>.npy           (N, T_m, D_m) float32, one file per modality
    DIR/<name>__mask.npy     (N, T_m) bool, True = valid
    DIR/y.npy                (N,) int64 labels, or (N,) / (N, K) float32 targets
    DIR/split.npy            optional (N,) int64: 0 = train, 1 = val, 2 = test

`open_dataset_dir` maps the files read-only (copy-on-write, so no write ever reaches the disk) and returns
a `MappedDataset`: the trainer slices it a batch at a time, so only the rows of the batch are read, and a
process under ``torchrun`` touches only the rows of its own share of each batch. Subsets (train/val/test)
are row lists over the same mapping, never copies.

Shapes: open_dataset_dir(path) -> (MappedDataset of N rows: item or batch as `MultimodalDataset`'s,
split (N,) int64 or None)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset

FORMAT = "crossfuse-dataset"
VERSION = 1
MANIFEST = "manifest.json"
MASK_SUFFIX = "__mask"
CHUNK_ROWS = 4096
"""Rows converted or checked at a time, so writing a directory never holds a whole modality in memory."""


class MappedDataset(MultimodalDataset):
    """Rows of memory-mapped tensors; indexing reads only the rows asked for.

    ``inputs``, ``masks`` and ``y`` are the whole mapped arrays; ``rows`` (None = all, in order) selects
    this data set's rows among them, so ``len(data)`` can be smaller than ``inputs[name].shape[0]``.

    Shapes: inputs {name: (N_all, T_m, D_m)}, masks {name: (N_all, T_m)}, y (N_all, ...)  ->
    data[i] with i an int, list or (B,) tensor of positions in ``rows``: as `MultimodalDataset`.
    """

    def __init__(
        self, inputs: dict[str, Tensor], y: Tensor, masks: dict[str, Tensor], rows: Tensor | None = None
    ) -> None:  # no super().__init__: it would create masks in memory; the directory always has them
        self.inputs, self.masks, self.y = inputs, masks, y
        self.rows = rows

    def __len__(self) -> int:
        return int(self.y.shape[0] if self.rows is None else self.rows.shape[0])

    def _absolute(self, index: Any) -> Any:
        if self.rows is None:
            return index
        return self.rows[torch.as_tensor(index, dtype=torch.long)]

    def __getitem__(self, i: Any) -> dict:
        index = self._absolute(i)
        return {
            "inputs": {k: v[index] for k, v in self.inputs.items()},
            "masks": {k: v[index] for k, v in self.masks.items()},
            "y": self.y[index],
        }

    def subset(self, index: Tensor) -> MappedDataset:
        """Rows ``index`` (positions in this data set) as a new `MappedDataset` over the same mapping."""
        return MappedDataset(self.inputs, self.y, self.masks, self._absolute(torch.as_tensor(index, dtype=torch.long)))


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK_ROWS):
        yield slice(start, min(n, start + CHUNK_ROWS))


def _write_npy(path: Path, array: Any, dtype: np.dtype) -> None:
    """Write ``array`` (anything sliceable by rows, e.g. a memmap) to ``path`` in ``dtype``, chunk by chunk."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(array.shape))
    for rows in _chunks(array.shape[0]):
        chunk = np.asarray(array[rows])
        if dtype.kind == "f" and not np.isfinite(chunk.astype(dtype)).all():
            raise ValueError(f"data: {path.stem!r} holds NaN or Inf values (rows {rows.start}-{rows.stop - 1})")
        out[rows] = chunk
    out.flush()
    del out


def write_dataset_dir(
    path: str | Path,
    inputs: Mapping[str, Any],
    y: Any,
    masks: Mapping[str, Any] | None = None,
    split: Any | None = None,
) -> Path:
    """Write a data-set directory at ``path`` (which must not exist, or be empty); return it.

    ``inputs`` maps a modality name to (N, T_m, D_m) or (N, D_m) numbers (numpy arrays or memmaps: they
    are read a chunk of rows at a time); ``masks`` to (N, T_m) bool; ``y`` is (N,) ints or (N,) / (N, K)
    floats; ``split`` (N,) 0/1/2. Values are checked chunk by chunk (finite, shapes agree). On error the
    partly written directory is removed, and a directory that existed before is left as it was.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"path: {str(path)!r} exists and is not an empty directory")
    existed = path.exists()
    masks = dict(masks or {})
    n = int(np.shape(y)[0])
    try:
        path.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "rows": n, "modalities": {}}
        for name, x in inputs.items():
            if "/" in name or name.startswith(".") or name in ("y", "split") or name.endswith(MASK_SUFFIX):
                raise ValueError(f"inputs: modality name {name!r} cannot be a file name here")
            shape = tuple(np.shape(x))
            if len(shape) == 2:
                x, shape = np.asarray(x)[:, None, :], (shape[0], 1, shape[1])
            if len(shape) != 3 or shape[0] != n:
                raise ValueError(f"inputs[{name!r}]: expected shape (N={n}, T, D) or (N, D), got {shape}")
            _write_npy(path / f"{name}.npy", x, np.dtype(np.float32))
            mask = masks.get(name)
            if mask is None:
                mask = np.ones(shape[:2], dtype=bool)
            mask = np.asarray(mask).reshape(shape[:2]) if np.size(mask) == shape[0] * shape[1] else mask
            if tuple(np.shape(mask)) != shape[:2]:
                raise ValueError(f"masks[{name!r}]: expected shape {shape[:2]}, got {tuple(np.shape(mask))}")
            _write_npy(path / f"{name}{MASK_SUFFIX}.npy", mask, np.dtype(bool))
            manifest["modalities"][name] = {"shape": list(shape[1:])}
        y = np.asarray(y)
        y_dtype = np.dtype(np.int64) if y.dtype.kind in "biu" else np.dtype(np.float32)
        _write_npy(path / "y.npy", y, y_dtype)
        manifest["y"] = {"dtype": y_dtype.name, "shape": list(y.shape[1:])}
        if split is not None:
            split = np.asarray(split)
            if split.shape != (n,) or not np.isin(split, (0, 1, 2)).all():
                raise ValueError(f"split: expected (N={n},) values in 0/1/2, got shape {split.shape}")
            np.save(path / "split.npy", split.astype(np.int64))
        manifest["split"] = split is not None
        (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        if existed:
            for child in path.iterdir():
                child.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _map(path: Path, name: str, shape: tuple[int, ...], kind: str) -> Tensor:
    file = path / f"{name}.npy"
    if not file.is_file():
        raise ValueError(f"path: {str(path)!r} lists {name!r} in {MANIFEST} but has no {file.name}")
    try:
        array = np.load(file, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"path: {file} is not a readable .npy file ({error})") from None
    if array.shape != shape or array.dtype.kind != kind:
        raise ValueError(f"path: {file} has shape {array.shape} and dtype {array.dtype}; expected {shape} ({kind})")
    return torch.from_numpy(array)


def is_dataset_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory holding a crossfuse data-set manifest."""
    return (Path(path) / MANIFEST).is_file()


def open_dataset_dir(path: str | Path) -> tuple[MappedDataset, np.ndarray | None]:
    """Map a data-set directory; return the data set and its split (or None). Reads only the manifest and headers."""
    path = Path(path)
    if not is_dataset_dir(path):
        raise FileNotFoundError(f"path: {str(path)!r} is not a crossfuse data-set directory (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"format {manifest.get('format')!r} version {manifest.get('version')!r}")
        n = int(manifest["rows"])
        modalities = {str(k): tuple(int(d) for d in v["shape"]) for k, v in manifest["modalities"].items()}
        y_spec = manifest["y"]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"path: {path / MANIFEST} is not a valid crossfuse data-set manifest ({error})") from None
    inputs = {name: _map(path, name, (n, *shape), "f") for name, shape in modalities.items()}
    masks = {name: _map(path, name + MASK_SUFFIX, (n, shape[0]), "b") for name, shape in modalities.items()}
    y_kind = "i" if y_spec["dtype"].startswith("int") else "f"
    y = _map(path, "y", (n, *[int(d) for d in y_spec["shape"]]), y_kind)
    split = np.load(path / "split.npy", allow_pickle=False) if manifest.get("split") else None
    if split is not None and split.shape != (n,):
        raise ValueError(f"path: {path / 'split.npy'} has shape {split.shape}; expected ({n},)")
    return MappedDataset(inputs, y, masks), split


def load_data(path: str | Path, require_y: bool = True) -> tuple[MultimodalDataset, np.ndarray | None]:
    """A user data set from an ``.npz`` file (`crossfuse.data.npz.load_npz`, read whole) or a data-set directory
    (`open_dataset_dir`, memory-mapped: batches are read as they are used). Returns (data, split or None)."""
    from crossfuse.data.npz import load_npz

    if Path(path).is_dir() and is_dataset_dir(path):
        return open_dataset_dir(path)
    return load_npz(path, require_y=require_y)
