"""The user-data loader: one ``.npz`` file -> a `MultimodalDataset` and its train/val/test split.

The file holds one array per modality, named as the user likes:

- ``<name>``: (N, T_m, D_m) tokens or (N, D_m) one feature vector per sample (numbers; ints and bools
  become float32);
- ``<name>__mask``: optional (N, T_m) bool, True = valid token ((N,) for a (N, D_m) modality);
- ``<name>__present``: optional (N,) bool or 0/1, False = the sample lacks that modality (its mask row
  becomes all False; its values are ignored);
- ``y``: (N,) integer labels (classification), (N, K) 0/1 label indicators (multilabel) or (N,) / (N, K)
  floats (regression);
- ``split``: optional (N,) ints, 0 = train, 1 = val, 2 = test; without it `seeded_split` draws one.

Every problem is a one-line ValueError naming the array, what was expected and what was found.
Loading never unpickles (``allow_pickle=False``).

Shapes: load_npz(path) -> (MultimodalDataset with inputs {name: (N, T_m, D_m) float32},
masks {name: (N, T_m) bool}, y (N,) long or (N,) / (N, K) float32; split (N,) int64 or None)
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from crossfuse.data.dataset import MultimodalDataset

MASK_SUFFIX = "__mask"
PRESENT_SUFFIX = "__present"
RESERVED = ("y", "split")
SPLITS = {"train": 0, "val": 1, "test": 2}


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"data: no such file: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"data: {path} holds a single array; expected an .npz archive (numpy.savez)")
    if not magic.startswith(b"PK"):  # an .npz is a zip archive; text or pickle files are refused before numpy
        raise ValueError(f"data: {path} is not a readable .npz archive (not a zip file); write one with numpy.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f"data: {path} is not a readable .npz file ({error})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"data: {path} holds a single array; expected an .npz archive (numpy.savez)")
    arrays = {}
    with loaded:
        for key in loaded.files:
            try:
                arrays[key] = loaded[key]
            except ValueError as error:
                objects = "allow_pickle" in str(error)  # numpy refuses object arrays without pickle
                reason = "holds Python objects; expected numbers" if objects else f"cannot be read ({error})"
                raise ValueError(f"data: array {key!r} in {path} {reason}") from None
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise ValueError(f"data: array {key!r} in {path} cannot be read ({error})") from None
    return arrays


def _numeric(key: str, array: np.ndarray) -> None:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"data: array {key!r} has dtype {array.dtype}; expected numbers (int, float or bool)")


def _float32(key: str, array: np.ndarray) -> np.ndarray:
    """``array`` as float32, refusing NaN/Inf after the cast (a float64 1e300 becomes Inf in float32)."""
    with np.errstate(over="ignore"):  # the overflow is reported below, naming the array
        cast = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(cast)
    if bad.any():
        nan = int(np.isnan(cast).sum())
        before = int((~np.isfinite(array)).sum()) if array.dtype.kind == "f" else 0
        beyond = int(bad.sum()) - before
        detail = f" ({beyond} of them beyond float32's range, |x| > 3.4e38)" if beyond else ""
        raise ValueError(
            f"data: array {key!r} contains {nan} NaN and {int(bad.sum()) - nan} Inf values as float32{detail}; "
            "expected finite numbers"
        )
    return cast


def load_npz(path: str | Path, require_y: bool = True) -> tuple[MultimodalDataset, np.ndarray | None]:
    """Read and check a user ``.npz``; return the data set and the file's split (or None).

    With ``require_y=False`` (prediction on new data) ``y`` may be absent; the data set then holds
    zeros as placeholder targets.
    """
    path = Path(path)
    arrays = _read(path)
    if not arrays:
        raise ValueError(f"data: {path} is empty; expected one array per modality and 'y'")
    masks = {k[: -len(MASK_SUFFIX)]: v for k, v in arrays.items() if k.endswith(MASK_SUFFIX)}
    present = {k[: -len(PRESENT_SUFFIX)]: v for k, v in arrays.items() if k.endswith(PRESENT_SUFFIX)}
    modalities = {
        k: v
        for k, v in arrays.items()
        if k not in RESERVED and not k.endswith(MASK_SUFFIX) and not k.endswith(PRESENT_SUFFIX)
    }
    if not modalities:
        raise ValueError(f"data: {path} has no modality arrays (only {sorted(arrays)}); expected e.g. 'image', 'text'")
    if require_y and "y" not in arrays:
        raise ValueError(f"data: {path} has no 'y' array (targets); found {sorted(arrays)}")
    unknown = sorted((set(masks) | set(present)) - set(modalities))
    if unknown:
        raise ValueError(f"data: mask(s) for unknown modalities {unknown}; modalities are {sorted(modalities)}")
    for key, array in arrays.items():
        _numeric(key, array)
    for name, array in modalities.items():
        if array.ndim not in (2, 3):
            raise ValueError(
                f"data: modality {name!r} has shape {array.shape}; expected (N, T, D) tokens or (N, D) features"
                + (" (reshape a single feature to (N, 1))" if array.ndim == 1 else "")
            )
    counts = {name: array.shape[0] for name, array in modalities.items()}
    if "y" in arrays:
        counts["y"] = arrays["y"].shape[0] if arrays["y"].ndim else 0
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k} N={n}" for k, n in counts.items())
        raise ValueError(f"data: arrays disagree on the number of samples: {listed}")
    n = next(iter(counts.values()))
    if n < 2 and require_y:
        raise ValueError(f"data: {path} has {n} sample(s); expected at least 2 to train and validate")
    inputs = {name: torch.from_numpy(_float32(name, a)) for name, a in modalities.items()}
    mask_tensors = {}
    for name, mask in masks.items():
        tokens = 1 if inputs[name].dim() == 2 else inputs[name].shape[1]
        if mask.ndim == 1 and tokens == 1:
            mask = mask[:, None]
        if mask.shape != (n, tokens):
            raise ValueError(
                f"data: mask {name + MASK_SUFFIX!r} has shape {mask.shape}; expected (N, T) = {(n, tokens)}"
            )
        if mask.dtype.kind != "b" and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"data: mask {name + MASK_SUFFIX!r} must be bool (True = valid) or 0/1, got other values")
        mask_tensors[name] = torch.from_numpy(mask.astype(bool))
    for name, flags in present.items():
        key = name + PRESENT_SUFFIX
        if flags.shape != (n,):
            raise ValueError(f"data: presence flags {key!r} have shape {flags.shape}; expected (N,) = ({n},)")
        if flags.dtype.kind != "b" and not np.isin(flags, (0, 1)).all():
            raise ValueError(f"data: presence flags {key!r} must be bool or 0/1 (1 = present), got other values")
        tokens = 1 if inputs[name].dim() == 2 else inputs[name].shape[1]
        base = mask_tensors.get(name, torch.ones(n, tokens, dtype=torch.bool))
        mask_tensors[name] = base & torch.from_numpy(flags.astype(bool))[:, None]
    y = _targets(arrays["y"], n) if "y" in arrays else torch.zeros(n)
    split = _split(arrays["split"], n) if "split" in arrays else None
    return MultimodalDataset(inputs, y, mask_tensors), split


def _targets(y: np.ndarray, n: int) -> torch.Tensor:
    if y.ndim not in (1, 2):
        raise ValueError(f"data: 'y' has shape {y.shape}; expected (N,) labels or (N,) / (N, K) targets")
    if y.dtype.kind in "biu":
        if y.ndim != 1 and not np.isin(y, (0, 1)).all():
            raise ValueError(
                f"data: integer 'y' must be (N,) class labels or (N, K) 0/1 label indicators, "
                f"got shape {y.shape} with other values"
            )
        if y.dtype == np.uint64 and len(y) and int(y.max()) > np.iinfo(np.int64).max:
            raise ValueError(
                f"data: 'y' holds uint64 labels up to {int(y.max())}, beyond int64 (max 2**63 - 1); "
                "renumber the classes"
            )
        return torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(_float32("y", y))


def _split(split: np.ndarray, n: int) -> np.ndarray:
    if split.shape != (n,):
        raise ValueError(f"data: 'split' has shape {split.shape}; expected (N,) = ({n},)")
    if split.dtype.kind == "f" and not np.all(np.mod(split, 1) == 0):
        raise ValueError("data: 'split' must hold integers 0 (train), 1 (val), 2 (test), got fractions")
    bad = sorted(set(np.unique(split).tolist()) - {0, 1, 2})
    if bad:
        raise ValueError(f"data: 'split' must hold 0 (train), 1 (val), 2 (test), got other values {bad[:5]}")
    return split.astype(np.int64)


def seeded_split(n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """A random 0/1/2 (train/val/test) assignment of ``n`` rows in the given proportions.

    Every part gets at least one row when ``n`` >= 3 (the test part may be empty for n = 2).
    Shapes: -> (n,) int64
    """
    if n < 2:
        raise ValueError(f"n: expected at least 2 rows to split, got {n}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions: expected three non-negative fractions summing to 1, got {fractions}")
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1 if n >= 3 and fractions[2] > 0 else 0, round(fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        n_train, n_test = 1, n - 1 - n_val
    order = np.random.default_rng(seed).permutation(n)
    split = np.zeros(n, dtype=np.int64)
    split[order[n_train : n_train + n_val]] = 1
    split[order[n_train + n_val :]] = 2
    return split


def split_dataset(data: MultimodalDataset, split: np.ndarray) -> dict[str, MultimodalDataset]:
    """``{"train", "val", "test"}`` subsets of ``data`` by a 0/1/2 ``split`` (empty parts are left out)."""
    parts = {}
    for name, value in SPLITS.items():
        index = torch.from_numpy(np.flatnonzero(split == value))
        if len(index):
            parts[name] = data.subset(index)
    return parts
