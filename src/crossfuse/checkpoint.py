"""Checkpoints on disk: weights and training state as safetensors + JSON, written atomically.

A checkpoint is a directory::

    model.safetensors           the model's ``state_dict`` (shared tensors stored once)
    training_state.safetensors  optional: optimizer tensors (``optimizer.<param>.<key>``), the
                                torch RNG state(s) (``rng.torch``, ``rng.cuda.<i>``) and hook tensors
    training_state.json         optional: optimizer scalars and param groups, scheduler state,
                                Python / NumPy RNG states, epoch, step and whatever the trainer adds

Loading reads only safetensors and JSON, so it never executes code (no pickle, no ``torch.load``).
A checkpoint is staged in a hidden sibling directory and published with ``os.replace``: a reader
sees either the previous complete checkpoint or the new complete one, never a mix, even if the
writer is killed (a kill between the two renames of a swap leaves ``.<name>.old``, which
`resolve_checkpoint` falls back to).

Shapes: tensors keep their shapes and dtypes bit for bit; JSON floats round-trip exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from crossfuse.atomic import atomic_write_json

MODEL_FILE = "model.safetensors"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
FORMAT = "crossfuse-checkpoint/1"


def to_json(value: Any) -> Any:
    """JSON-ready copy of ``value``: tuples become ``{"__tuple__": [...]}``, NumPy scalars Python ones.

    Raises ValueError for anything JSON cannot hold exactly (tensors, arrays, arbitrary objects).
    """
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    raise ValueError(f"value: expected JSON-serialisable data (numbers, strings, lists, dicts), got {type(value)}")


def from_json(value: Any) -> Any:
    """Inverse of `to_json`."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(from_json(v) for v in value["__tuple__"])
        return {k: from_json(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- optimizer state


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and the rest (for JSON).

    Shapes: {"state": {pid: {key: Tensor | scalar}}, "param_groups": [...]}
    ->  ({"optimizer.<pid>.<key>": Tensor}, {"scalars": {pid: {key: scalar}}, "param_groups": [...]})
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = to_json(value)
    groups = []
    for group in state["param_groups"]:
        if any(isinstance(v, Tensor) for v in group.values()):
            raise ValueError("optimizer: tensor-valued hyper-parameters (e.g. a Tensor lr) cannot be checkpointed")
        groups.append(to_json(group))
    return tensors, {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer_state(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state`: a dict ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        pid, key = name[len("optimizer.") :].split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, entries in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(from_json(entries))
    return {"state": state, "param_groups": from_json(rest["param_groups"])}


# ----------------------------------------------------------------------------- RNG state


def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The Python, NumPy and torch (CPU and CUDA) global RNG states.

    Shapes: -> ({"rng.torch": (S,) uint8, "rng.cuda.<i>": (S_c,) uint8}, {"python": [...], "numpy": [...]})
    """
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rest = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, rest


def restore_rng(tensors: dict[str, Tensor], rest: dict[str, Any]) -> None:
    """Set the global RNGs to a state from `capture_rng`."""
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rest["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- files


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    atomic_write_json(path, data)


def resolve_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint at ``directory`` (or the one a killed swap left aside), or None."""
    directory = Path(directory)
    if (directory / MODEL_FILE).is_file():
        return directory
    aside = directory.with_name(f".{directory.name}.old")
    if (aside / MODEL_FILE).is_file():
        return aside
    return None


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    state: dict[str, Any] | None = None,
    tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Write ``model``'s weights, plus JSON ``state`` and extra ``tensors`` if given, as one checkpoint.

    ``state`` must be JSON-serialisable (see `to_json`); ``tensors`` go to ``training_state.safetensors``.
    The directory is replaced atomically. Returns ``directory``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.tmp")
    aside = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_model(model, str(staging / MODEL_FILE))
    _fsync(staging / MODEL_FILE)
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / STATE_TENSORS_FILE))
        _fsync(staging / STATE_TENSORS_FILE)
    if state is not None or tensors:
        write_json_atomic(staging / STATE_JSON_FILE, {"format": FORMAT, **to_json(state or {})})
    # Swap: directory -> aside, staging -> directory, drop aside. A kill in between leaves `aside`.
    if directory.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(directory, aside)
    os.replace(staging, directory)
    shutil.rmtree(aside, ignore_errors=True)
    return directory


def check_finite(tensors: dict[str, Tensor], source: str) -> None:
    """ValueError naming the first floating-point tensor of ``tensors`` that holds NaN or Inf.

    ``source`` says where the tensors come from (a file, "model weights") for the message.
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{source}: tensor {name!r} holds {bad} NaN/Inf value(s) of {tensor.numel()}")


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file, refusing a damaged file or non-finite values with one line.

    Shapes: -> {name: Tensor} as stored.
    """
    path = Path(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"checkpoint: {path} is not a readable safetensors file ({error})") from None
    try:
        check_finite(tensors, f"checkpoint: {path}")
    except ValueError as error:
        raise ValueError(f"{error}; the model diverged or the file is damaged") from None
    return tensors


def load_weights(directory: Path, model: nn.Module, strict: bool = True) -> Path:
    """Load a checkpoint's ``model.safetensors`` into ``model``; returns the directory read.

    Raises FileNotFoundError if there is no checkpoint and ValueError if the weights do not fit, the
    file is damaged or a weight is NaN/Inf (a diverged model is never scored).
    """
    found = resolve_checkpoint(Path(directory))
    if found is None:
        raise FileNotFoundError(f"checkpoint: no {MODEL_FILE} in {directory}")
    read_tensors(found / MODEL_FILE)  # one-line errors for a damaged file or non-finite weights
    try:
        missing, unexpected = load_model(model, str(found / MODEL_FILE), strict=False)
    except RuntimeError as error:  # shape mismatches
        detail = " ".join(str(error).split())
        raise ValueError(f"checkpoint: {found / MODEL_FILE} does not fit the model: {detail}") from None
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint: {found / MODEL_FILE} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return found


def load_training_state(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON state and the tensors of a checkpoint written with `save_checkpoint`.

    Shapes: -> (state dict, {name: Tensor}) ; FileNotFoundError if the checkpoint has no training state.
    """
    found = resolve_checkpoint(Path(directory))
    if found is None or not (found / STATE_JSON_FILE).is_file():
        raise FileNotFoundError(f"checkpoint: no {STATE_JSON_FILE} in {directory}")
    try:
        state = from_json(json.loads((found / STATE_JSON_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"checkpoint: {found / STATE_JSON_FILE} is not a valid training state ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        state = state if isinstance(state, dict) else {}
        raise ValueError(f"checkpoint: {found} has format {state.get('format')!r}, expected {FORMAT!r}")
    tensors: dict[str, Tensor] = {}
    if (found / STATE_TENSORS_FILE).is_file():
        try:
            with safe_open(str(found / STATE_TENSORS_FILE), framework="pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (no __iter__)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"checkpoint: {found / STATE_TENSORS_FILE} is not readable ({error})") from None
    return state, tensors


# ----------------------------------------------------------------------------- captioner runs

CAPTIONER_FORMAT = "crossfuse-captioner/2"
"""``config.json`` = {"format", "config": CaptionerConfig fields, "vocab": tokens}; /1 (before the
``encoder`` and ``registers`` fields, always a ViT) still loads."""
_CAPTIONER_FORMATS = ("crossfuse-captioner/1", CAPTIONER_FORMAT)


def save_captioner(directory: Path, model: nn.Module, vocab: Any) -> Path:
    """Write a captioner run: ``config.json`` (format, model config, vocabulary) and ``model.safetensors``.

    Refuses non-finite weights (a diverged run). ``model`` is a `crossfuse.models.captioner.Captioner`,
    ``vocab`` its `crossfuse.data.radiographs.Vocabulary`.
    """
    from dataclasses import asdict

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    check_finite(state, "model: weights to save")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / MODEL_FILE))
    record = {"format": CAPTIONER_FORMAT, "config": asdict(model.config), "vocab": list(vocab.tokens)}
    atomic_write_json(directory / "config.json", record, indent=2)
    return directory


def load_captioner(directory: Path, device: str = "cpu") -> tuple[Any, Any]:
    """Read a run written by `save_captioner` -> (Captioner in eval mode, Vocabulary)."""
    from crossfuse.data.radiographs import Vocabulary
    from crossfuse.models.captioner import Captioner, CaptionerConfig

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / MODEL_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"directory: no captioner in {str(directory)!r} (expected config.json and {MODEL_FILE}; "
            "create one with `crossfuse caption-train`)"
        )
    try:
        record = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"directory: {str(config_path)!r} is not valid JSON ({error})") from None
    if record.get("format") not in _CAPTIONER_FORMATS:
        raise ValueError(
            f"directory: expected format {CAPTIONER_FORMAT!r} in {config_path}, got {record.get('format')!r}"
        )
    model = Captioner(CaptionerConfig(**record["config"]))
    model.load_state_dict(read_tensors(weights_path, device))  # refuses a damaged file or NaN weights
    return model.to(device).eval(), Vocabulary(record["vocab"])
