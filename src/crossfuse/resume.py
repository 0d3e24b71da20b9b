"""Where training stands (`TrainingState`), the ``last/`` checkpoint that stores it, and resuming from it.

``last/`` holds the weights plus optimizer, scheduler, RNG and hook states (see `crossfuse.checkpoint`), so
a run resumed from it (also mid-epoch) reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from crossfuse import checkpoint as ckpt
from crossfuse.distributed import Distributed
from crossfuse.evaluation import fetch_batch
from crossfuse.hooks import TrainHook
from crossfuse.metrics_log import METRICS_FILE, read_metrics
from crossfuse.train_config import RESUMABLE_CHANGES, TrainConfig

LAST, BEST = "last", "best"
FINGERPRINT_CHUNK = 4096  # rows hashed at a time: memory stays flat for memory-mapped data sets
START_OVER = "start over with --force (CLI) or a new out_dir"


def data_fingerprint(data: Dataset | None) -> dict[str, Any] | None:
    """Rows and a SHA-256 over every tensor of every row (names, dtypes, shapes, bytes) of ``data``.

    Read in chunks of 4096 rows through `fetch_batch`, so a memory-mapped `MappedDataset` is never
    loaded whole. Shapes: -> {"rows": N, "sha256": hex} (None for no data).
    """
    if data is None:
        return None
    digest = hashlib.sha256()
    n = len(data)  # type: ignore[arg-type]
    for start in range(0, n, FINGERPRINT_CHUNK):
        _hash_into(digest, "", fetch_batch(data, range(start, min(n, start + FINGERPRINT_CHUNK))))
    return {"rows": n, "sha256": digest.hexdigest()}


def _hash_into(digest: Any, name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape[1:])}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value):
            _hash_into(digest, f"{name}.{key}", value[key])
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _hash_into(digest, f"{name}.{i}", item)
    else:
        digest.update(f"{name}={value!r}".encode())


def find_last(out: Path) -> Path:
    """The ``last/`` checkpoint to resume ``out`` from; ValueError (nothing changed on disk) if there is none."""
    if not out.is_dir():
        raise ValueError(
            f"resume: {out} does not exist or is not a directory, so there is nothing to resume; {START_OVER}"
        )
    found = ckpt.resolve_checkpoint(out / LAST)
    if found is None:
        raise ValueError(
            f"resume: {out} has no loadable {LAST}/ checkpoint (interrupted before the first one, or deleted); "
            f"nothing was changed; {START_OVER}"
        )
    return found


@dataclass
class TrainingState:
    """Where training stands: the next epoch and batch within it, steps done, and the epoch's losses so far."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    metrics_size: int = 0  # bytes of metrics.jsonl that belong to the state
    elapsed_s: float = 0.0  # training time before this process started
    epoch_losses: list[float] = field(default_factory=list)


def hook_state(hooks: Sequence[TrainHook]) -> tuple[list[Any], dict[str, Tensor]]:
    """The hooks' ``state_dict()``s split into JSON values (one entry per hook) and ``hook.{i}.*`` tensors."""
    states: list[Any] = []
    tensors: dict[str, Tensor] = {}
    for i, hook in enumerate(hooks):
        getter = getattr(hook, "state_dict", None)
        if getter is None:
            states.append(None)
            continue
        entry = {}
        for key, value in getter().items():
            if isinstance(value, Tensor):
                tensors[f"hook.{i}.{key}"] = value
            else:
                entry[key] = value
        states.append(entry)
    return states, tensors


def load_hook_state(hooks: Sequence[TrainHook], states: list[Any], tensors: dict[str, Tensor]) -> None:
    """Inverse of `hook_state` for the hooks that define ``load_state_dict``."""
    for i, hook in enumerate(hooks):
        loader = getattr(hook, "load_state_dict", None)
        if loader is None or i >= len(states) or states[i] is None:
            continue
        prefix = f"hook.{i}."
        loader({**states[i], **{k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}})


def restore(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    world: Distributed,
    fingerprints: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainingState, list[dict[str, Any]], dict[str, Any], dict[str, Tensor]]:
    """Load the ``last`` checkpoint in ``directory`` into model, optimizer, scheduler and RNGs.

    Refused (ValueError naming the differing fields, before any file changes) when ``config`` or the
    data ``fingerprints`` ({"train_data": ..., "val_data": ...}) differ from the checkpoint's. Returns
    the training state, the metrics.jsonl records up to the checkpoint (the file is cut back there, after
    all checks: records written after it by the interrupted run are dropped), and the checkpoint's JSON
    state and tensors.
    """
    state, tensors = ckpt.load_training_state(directory)
    saved = state["train_config"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # fields newer than the checkpoint
    current = dataclasses.asdict(config)
    changed = [k for k, v in current.items() if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v]
    if changed:
        raise ValueError(
            f"resume: the run in {directory.parent} was trained with a different config: "
            + ", ".join(f"{k}={saved.get(k, defaults[k])!r} (now {current[k]!r})" for k in changed)
            + f"; pass the same options, or {START_OVER}"
        )
    stored = state.get("data_fingerprint") or {}
    differing = [k for k, v in fingerprints.items() if k in stored and stored[k] != v]
    if differing:
        raise ValueError(
            f"resume: the run in {directory.parent} was trained on other data: "
            + ", ".join(f"{k} ({_describe(stored[k])}, now {_describe(fingerprints[k])})" for k in differing)
            + f"; pass the same data and split as before, or {START_OVER}"
        )
    ckpt.load_weights(directory, model)  # refuses NaN/Inf weights
    optimizer.load_state_dict(ckpt.unflatten_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and scaler is not None:
        scaler.load_state_dict(state["scaler"])
    records = read_metrics(directory.parent / METRICS_FILE, state["metrics_size"], cut=world.main)
    world.barrier()  # rank 0 has cut the file before anyone goes on
    own = tensors.get(f"rng.torch.rank{world.rank}")  # DDP: every rank's own torch RNG
    ckpt.restore_rng({**tensors, "rng.torch": tensors["rng.torch"] if own is None else own}, state["rng"])
    training = TrainingState(
        state["epoch"], state["batch"], state["step"], state["metrics_size"], state["elapsed_s"],
        list(state["epoch_losses"]),
    )  # fmt: skip
    return training, records, state, tensors


def _describe(fingerprint: dict[str, Any] | None) -> str:
    if not fingerprint:
        return "none"
    return f"{fingerprint['rows']} rows, sha256 {fingerprint['sha256'][:12]}"


def save_last(
    out: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    world: Distributed,
    hooks: Sequence[TrainHook],
    training: TrainingState,
    elapsed_s: float,
    fingerprints: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write ``out/last`` so that training continues at ``training.epoch``, ``training.batch``.

    Every rank must call it (the ranks' RNG states are gathered); only rank 0 writes.
    """
    rng_tensors, rng_rest = ckpt.capture_rng()
    rng_tensors.update(world.gather_rng(rng_tensors["rng.torch"]))
    if out is None or not world.main:
        return
    opt_tensors, opt_rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
    hook_states, hook_tensors = hook_state(hooks)
    snapshot = {
        "epoch": training.epoch,
        "batch": training.batch,
        "step": training.step,
        "train_config": dataclasses.asdict(config),
        "optimizer": opt_rest,
        "scheduler": scheduler.state_dict(),
        "rng": rng_rest,
        "epoch_losses": training.epoch_losses,
        "elapsed_s": elapsed_s,
        "metrics_size": training.metrics_size,
        "hooks": hook_states,
        "world_size": world.world_size,
        "data_fingerprint": fingerprints,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    ckpt.save_checkpoint(out / LAST, model, snapshot, {**opt_tensors, **rng_tensors, **hook_tensors})


def remove_checkpoint(directory: Path) -> None:
    """Delete a checkpoint directory and its staging siblings (``.NAME.old``, ``.NAME.tmp``)."""
    for path in (
        directory,
        directory.with_name(f".{directory.name}.old"),
        directory.with_name(f".{directory.name}.tmp"),
    ):
        shutil.rmtree(path, ignore_errors=True)
