"""One training loop for every model in crossfuse.

`fit` trains any module whose loss an `Objective` computes from a batch: the fusion models
(classification or regression on `MultimodalDataset` batches) and the captioner (teacher forcing)
share it. AdamW (Loshchilov & Hutter, 2019), linear warmup then cosine decay (Loshchilov & Hutter,
2017), gradient clipping by global norm, seeded.

- Deterministic: the data order of epoch e is a permutation drawn from a generator seeded with
  ``(seed, e)`` (the global RNG is used only by the model itself, e.g. dropout), so the same config
  gives the same metrics and weights to the last digit on CPU.
- Checkpoints (``out_dir``): ``best/`` (best validation score) and ``last/`` (every epoch and every
  ``checkpoint_every_steps`` steps, with optimizer, scheduler and RNG states for resuming), see
  `crossfuse.checkpoint`; ``metrics.jsonl`` (one ``{"kind": "epoch", ...}`` record per epoch and one
  ``{"kind": "step", "step": s, ...}`` record per step whose hooks reported values); ``config.json``
  (enough to rebuild the model, see `crossfuse.runs`).
- ``resume=True`` continues from ``out_dir/last`` (also mid-epoch) and reaches the same weights as
  an uninterrupted run.
- DDP: under ``torchrun --nproc_per_node=P`` (``WORLD_SIZE`` > 1) `fit` joins the process group
  (gloo unless already initialised), wraps the model in ``DistributedDataParallel`` and gives each
  rank a 1/P share of every global batch of ``batch_size`` rows (``batch_size`` must be divisible
  by P), so P processes see the same global batches as one process; only rank 0 writes files and
  shows progress. Every rank evaluates the whole validation set.

Shapes (default `FusionObjective`): batch = {"inputs": {name: (B, N_m, D_m)},
"masks": {name: (B, N_m) bool}, "y": (B,) long or (B, K) float}.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, default_collate

from crossfuse import checkpoint as ckpt
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.runs import write_run_config

TASKS = ("classification", "multilabel", "regression")
METRICS_FILE = "metrics.jsonl"
LAST, BEST = "last", "best"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults suit the small models of the lab.

    ``batch_size`` is the global batch (split across DDP ranks). ``balance`` ("none" | "ogm-ge" |
    "aux"), ``balance_alpha`` and ``monitor_gradients`` install `crossfuse.balance` hooks.
    ``checkpoint_every_steps`` adds mid-epoch ``last/`` checkpoints (every epoch always gets one).
    """

    task: str = "classification"  # "classification" | "multilabel" | "regression"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    balance: str = "none"
    balance_alpha: float = 0.5
    monitor_gradients: bool = False
    checkpoint_every_steps: int | None = None
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum 0.9, as OGM-GE was proposed with)


OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum 0.9; both with ``config.weight_decay``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


# Fields that may differ between an interrupted run and its resumption (they do not change the numbers).
RESUMABLE_CHANGES = ("progress", "device")


def check_config(config: TrainConfig) -> None:
    """ValueError naming the first field of ``config`` that is out of range."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"config.optimizer: expected one of {list(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.task not in TASKS:
        raise ValueError(f"config.task: expected one of {list(TASKS)}, got {config.task!r}")
    for name, minimum in (("epochs", 0), ("batch_size", 1)):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"config.{name}: expected an int >= {minimum}, got {value!r}")
    if not config.lr > 0:
        raise ValueError(f"config.lr: expected a positive learning rate, got {config.lr!r}")
    if not 0 <= config.warmup_fraction <= 1:
        raise ValueError(f"config.warmup_fraction: expected a value in [0, 1], got {config.warmup_fraction!r}")
    if config.grad_clip is not None and not config.grad_clip > 0:
        raise ValueError(f"config.grad_clip: expected None or a positive norm, got {config.grad_clip!r}")
    every = config.checkpoint_every_steps
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ValueError(f"config.checkpoint_every_steps: expected None or an int >= 1, got {every!r}")


class Objective(Protocol):
    """Computes a batch's loss (and cheap metrics) and evaluates a whole data set.

    Under DDP ``loss`` receives the ``DistributedDataParallel`` wrapper: call the model (its
    ``forward``), not other methods, so that gradients are synchronised.
    """

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Any]:
        """Return (scalar loss, model output) for one batch."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics over a data set; larger ``"score"`` is better (used to keep the best checkpoint)."""
        ...


class TrainHook(Protocol):
    """Called by `fit` around each optimisation step (gradient monitors, rebalancing).

    A hook may also define ``state_dict() -> dict`` (tensors and JSON values) and
    ``load_state_dict(state)``; `fit` then stores its state in ``last/`` so resuming restores it.
    """

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        """Gradients are in ``.grad``; may inspect or rescale them before clipping and the step."""
        ...

    def step_record(self) -> dict[str, float]:
        """Values to add to this step's metrics record (may be empty)."""
        ...

    def messages(self) -> list[str]:
        """One-line warnings for the user collected so far (e.g. modality dominance)."""
        ...


@dataclass
class FusionObjective:
    """Cross-entropy (classification), BCE with logits (multilabel) or MSE (regression) on `FusionModel` outputs."""

    task: str = "classification"

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, Any]:
        output = model(batch["inputs"], batch["masks"])
        y = batch["y"]
        if self.task == "classification":
            return F.cross_entropy(output.logits, y), output
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(output.logits, y.float()), output
        return F.mse_loss(output.logits, y.view_as(output.logits).float()), output

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        preds, targets = predict_batches(model, loader)
        if self.task == "multilabel":
            from crossfuse.multilabel import multilabel_metrics  # lazy: multilabel imports this module lazily too

            return multilabel_metrics(preds, targets)
        return (
            classification_metrics(preds, targets)
            if self.task == "classification"
            else regression_metrics(preds, targets)
        )


# ----------------------------------------------------------------------------- batches and metrics


def make_loader(data: Dataset, batch_size: int = 256) -> DataLoader:
    """A sequential loader over ``data`` that leaves the global RNG untouched.

    A `MultimodalDataset` is sliced a whole batch at a time (same values as collating rows).
    Shapes: items as in the data set, with a leading batch dimension B <= batch_size.
    """
    private = torch.Generator()  # DataLoader draws a base seed from it instead of the global RNG
    if isinstance(data, MultimodalDataset):
        sampler = BatchSampler(SequentialSampler(data), batch_size, drop_last=False)
        return DataLoader(data, sampler=sampler, batch_size=None, generator=private)
    return DataLoader(data, batch_size=batch_size, generator=private)


def fetch_batch(data: Dataset, index: Sequence[int]) -> Any:
    """Rows ``index`` of ``data`` as one batch (a `MultimodalDataset` is sliced, others collated)."""
    if isinstance(data, MultimodalDataset):
        return data[torch.as_tensor(index, dtype=torch.long)]
    return default_collate([data[i] for i in index])


@torch.no_grad()
def predict_batches(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Concatenated logits (N, num_outputs) and targets over a loader, model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    for batch in loader:
        batch = to_device(batch, device)
        logits.append(model(batch["inputs"], batch["masks"]).logits.cpu())
        targets.append(batch["y"].cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def predict(model: nn.Module, data: Dataset, batch_size: int = 256) -> Tensor:
    """The model's outputs over a whole data set, in order, in eval mode.

    Shapes: data of N rows  ->  (N, num_outputs) logits (classification) or predictions (regression).
    """
    return predict_batches(model, make_loader(data, batch_size))[0]


def evaluate(
    model: nn.Module, data: Dataset, objective: Objective | TrainConfig | str = "classification", batch_size: int = 256
) -> dict[str, float]:
    """Metrics of ``model`` on ``data``: ``objective.evaluate``, or the task's metrics for a config/task name.

    Shapes: -> {"accuracy", "macro_f1", "score"} (classification), {"micro_f1", "macro_f1", "map", "score"}
    (multilabel) or {"r2", "mse", "score"} (regression).
    """
    if isinstance(objective, TrainConfig):
        objective = FusionObjective(objective.task)
    elif isinstance(objective, str):
        if objective not in TASKS:
            raise ValueError(
                f"objective: expected an Objective, a TrainConfig or one of {list(TASKS)}, got {objective!r}"
            )
        objective = FusionObjective(objective)
    return objective.evaluate(model, make_loader(data, batch_size))


def classification_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (mean F1 over the classes that occur in ``y`` or the predictions).

    Shapes: logits (N, C), y (N,) long -> {"accuracy", "macro_f1", "score" (= accuracy)}.
    """
    pred = logits.argmax(-1)
    accuracy = (pred == y).float().mean().item()
    f1s = []
    for c in range(logits.shape[-1]):
        tp = ((pred == c) & (y == c)).sum().item()
        fp = ((pred == c) & (y != c)).sum().item()
        fn = ((pred != c) & (y == c)).sum().item()
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "score": accuracy}


def regression_metrics(pred: Tensor, y: Tensor) -> dict[str, float]:
    """R^2 (averaged over output columns) and MSE.

    Shapes: pred (N, K), y (N, K) or (N,) when K = 1 -> {"r2", "mse", "score" (= r2)}.
    """
    y = y.view_as(pred).float()
    mse = ((pred - y) ** 2).mean().item()
    ss_res = ((pred - y) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    r2 = (1 - ss_res / ss_tot).mean().item()
    return {"r2": r2, "mse": mse, "score": r2}


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of a (nested dict/list) batch to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to 0 (Loshchilov & Hutter, 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- data order and DDP


class EpochBatches:
    """The seeded batches of each epoch, and one rank's share of them.

    Epoch e shuffles the N rows with a generator seeded from ``(seed, e)`` and cuts the permutation
    into global batches of ``batch_size``; rank r of P takes rows ``r, r + P, ...`` of each global
    batch. With P > 1 a last global batch smaller than P is dropped (a rank would get no rows).

    Shapes: batches(e) -> list of index lists, each of length <= batch_size / P.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_rows < 1:
            raise ValueError(f"train_data: expected at least one row, got {num_rows}")
        if batch_size % world_size:
            raise ValueError(
                f"config.batch_size: the global batch must split evenly over {world_size} DDP processes, "
                f"got batch_size={batch_size}"
            )
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        tail = num_rows % batch_size
        self.per_epoch = num_rows // batch_size + (1 if tail and (world_size == 1 or tail >= world_size) else 0)
        if self.per_epoch == 0:
            raise ValueError(f"train_data: {num_rows} rows are fewer than the {world_size} DDP processes")

    def global_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.per_epoch)]

    def batches(self, epoch: int) -> list[list[int]]:
        return [batch[self.rank :: self.world_size] for batch in self.global_batches(epoch)]


@dataclass
class _Distributed:
    """This process's place in a DDP job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    created: bool = False

    @classmethod
    def join(cls) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and not (dist.is_available() and dist.is_initialized()):
            return cls()
        created = False
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", init_method="env://")
            created = True
        return cls(dist.get_rank(), dist.get_world_size(), created)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world_size).item()

    def gather_rng(self, state: Tensor) -> dict[str, Tensor]:
        if self.world_size == 1:
            return {}
        states = [torch.empty_like(state) for _ in range(self.world_size)]
        dist.all_gather(states, state)
        return {f"rng.torch.rank{r}": s for r, s in enumerate(states)}

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def leave(self) -> None:
        if self.created:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    """History of per-epoch records, the final/best validation metrics, hook records and messages."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    messages: list[str] = field(default_factory=list)
    step_records: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0


def _is_better(record: dict[str, float], best: dict[str, float]) -> bool:
    return "val_score" in record and record["val_score"] >= best.get("val_score", -math.inf)


def _build_hooks(model: nn.Module, config: TrainConfig) -> list[TrainHook]:
    if config.balance == "none" and not config.monitor_gradients:
        return []
    from crossfuse.balance import build_hooks  # lazily: balance sits beside train, not below it

    return list(build_hooks(model, config))


def _hook_state(hooks: Sequence[TrainHook]) -> tuple[list[Any], dict[str, Tensor]]:
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


def _load_hook_state(hooks: Sequence[TrainHook], states: list[Any], tensors: dict[str, Tensor]) -> None:
    for i, hook in enumerate(hooks):
        loader = getattr(hook, "load_state_dict", None)
        if loader is None or i >= len(states) or states[i] is None:
            continue
        prefix = f"hook.{i}."
        loader({**states[i], **{k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}})


def _read_metrics(path: Path, size: int, cut: bool) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` within its first ``size`` bytes; with ``cut`` the file is cut there."""
    if not path.exists():
        return []
    with open(path, "rb") as handle:
        text = handle.read(size).decode()
    if cut:
        with open(path, "r+b") as handle:
            handle.truncate(size)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _Progress:
    """tqdm bar over one epoch's steps (rank 0, ``config.progress``), with the loss as postfix."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled, self.epochs, self.bar = enabled, epochs, None

    def start(self, epoch: int, total: int, done: int) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=done, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, file=sys.stderr
            )

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update()

    def end(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.refresh()  # show the epoch's last loss even when the steps were faster than tqdm's interval
        self.bar.close()
        self.bar = None
        shown = {k: v for k, v in record.items() if k in ("train_loss",) or k.startswith("val_")}
        shown.pop("val_score", None)
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        print(f"epoch {record['epoch']}/{self.epochs}  {text}", flush=True)


def _restore(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    world: _Distributed,
    result: FitResult,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Load the ``last`` checkpoint in ``directory`` into model, optimizer, scheduler and RNGs.

    Refills ``result`` from metrics.jsonl, cut back to the checkpoint (records written after it by
    the interrupted run are dropped). Returns the checkpoint's JSON state and tensors.
    """
    state, tensors = ckpt.load_training_state(directory)
    saved = state["train_config"]
    changed = [k for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if changed:
        raise ValueError(
            f"resume: the run in {directory.parent} was trained with a different config: "
            + ", ".join(f"{k}={saved.get(k)!r} (now {getattr(config, k)!r})" for k in changed)
        )
    ckpt.load_weights(directory, model)
    optimizer.load_state_dict(ckpt.unflatten_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    records = _read_metrics(directory.parent / METRICS_FILE, state["metrics_size"], cut=world.main)
    world.barrier()  # rank 0 has cut the file before anyone goes on
    for record in records:
        kind = record.pop("kind", None)
        record.pop("time_s", None)
        if kind == "epoch":
            result.history.append(record)
            if _is_better(record, result.best):
                result.best = dict(record)
        elif kind == "step":
            result.step_records.append(record)
    own = tensors.get(f"rng.torch.rank{world.rank}")  # DDP: every rank's own torch RNG
    ckpt.restore_rng({**tensors, "rng.torch": tensors["rng.torch"] if own is None else own}, state["rng"])
    return state, tensors


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None,
    config: TrainConfig,
    objective: Objective | None = None,
    out_dir: Path | None = None,
    hooks: Sequence[TrainHook] = (),
    *,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data``; evaluate on ``val_data`` after every epoch.

    Returns the per-epoch history (train loss, learning rate, validation metrics), the best and
    final records, per-step hook records and the hooks' messages. Seeded: the same config gives
    the same weights on CPU. With ``out_dir`` writes metrics.jsonl, config.json (``metadata`` is
    stored in it under ``"metadata"``), ``best/`` and ``last/`` checkpoints; ``resume=True``
    continues from ``out_dir/last`` if it exists (else starts afresh). Hooks (``hooks`` plus those
    ``config.balance`` / ``config.monitor_gradients`` ask for) run after backward, before clipping.
    On return the model holds the last weights (not the best ones).

    Shapes: see the module docstring for the batch layout of the default `FusionObjective`.
    """
    check_config(config)
    if resume and out_dir is None:
        raise ValueError("resume: needs out_dir (the run directory to continue), got out_dir=None")
    objective = objective or FusionObjective(config.task)
    out = None if out_dir is None else Path(out_dir)
    world = _Distributed.join()
    try:
        return _fit(model, train_data, val_data, config, objective, out, list(hooks), resume, metadata, world)
    finally:
        world.leave()


def _fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None,
    config: TrainConfig,
    objective: Objective,
    out: Path | None,
    hooks: list[TrainHook],
    resume: bool,
    metadata: dict[str, Any] | None,
    world: _Distributed,
) -> FitResult:
    started = time.perf_counter()
    seed_everything(config.seed + world.rank)  # ranks draw different dropout masks
    model.to(config.device)
    order = EpochBatches(len(train_data), config.batch_size, config.seed, world.rank, world.world_size)
    val_loader = None if val_data is None else make_loader(val_data, max(256, config.batch_size))
    optimizer = make_optimizer(model, config)
    total = config.epochs * order.per_epoch
    warmup = max(1, int(config.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))

    result = FitResult()
    epoch, batch_start, step, metrics_size, elapsed = 0, 0, 0, 0, 0.0  # where training stands
    epoch_losses: list[float] = []
    state: dict[str, Any] = {}
    tensors: dict[str, Tensor] = {}
    resumed = ckpt.resolve_checkpoint(out / LAST) if resume else None
    if resumed is not None:
        state, tensors = _restore(resumed, model, optimizer, scheduler, config, world, result)
        epoch, batch_start, step = state["epoch"], state["batch"], state["step"]
        metrics_size, elapsed, epoch_losses = state["metrics_size"], state["elapsed_s"], list(state["epoch_losses"])
    train_model: nn.Module = model
    if world.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    hooks = hooks + _build_hooks(train_model, config)
    _load_hook_state(hooks, state.get("hooks", []), tensors)

    metrics = None
    if out is not None and world.main:
        out.mkdir(parents=True, exist_ok=True)
        if resumed is None:
            for stale in (LAST, BEST):
                _remove_checkpoint(out / stale)
            write_run_config(out, model, dataclasses.asdict(config), metadata)
        metrics = open(out / METRICS_FILE, "a" if resumed is not None else "w")  # noqa: SIM115 (closed below)

    def write(record: dict[str, Any]) -> int:
        if metrics is None:
            return 0
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        return metrics.tell()

    def save_last(next_epoch: int, next_batch: int) -> None:
        rng_tensors, rng_rest = ckpt.capture_rng()
        rng_tensors.update(world.gather_rng(rng_tensors["rng.torch"]))
        if out is None or not world.main:
            return
        opt_tensors, opt_rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
        hook_states, hook_tensors = _hook_state(hooks)
        snapshot = {
            "epoch": next_epoch,
            "batch": next_batch,
            "step": step,
            "train_config": dataclasses.asdict(config),
            "optimizer": opt_rest,
            "scheduler": scheduler.state_dict(),
            "rng": rng_rest,
            "epoch_losses": epoch_losses,
            "elapsed_s": elapsed + time.perf_counter() - started,
            "metrics_size": metrics_size,
            "hooks": hook_states,
            "world_size": world.world_size,
        }
        ckpt.save_checkpoint(out / LAST, model, snapshot, {**opt_tensors, **rng_tensors, **hook_tensors})

    progress = _Progress(config.progress and world.main, config.epochs)
    try:
        while epoch < config.epochs:
            train_model.train()
            batches = order.batches(epoch)
            progress.start(epoch, len(batches), batch_start)
            for position in range(batch_start, len(batches)):
                batch = to_device(fetch_batch(train_data, batches[position]), config.device)
                loss, output = objective.loss(train_model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                record: dict[str, Any] = {}
                for hook in hooks:
                    hook.after_backward(train_model, batch, output, step)
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                epoch_losses.append(loss.item())
                for hook in hooks:
                    record.update(hook.step_record())
                if record:
                    result.step_records.append({"step": step, **record})
                    metrics_size = write({"kind": "step", "step": step, **record})
                step += 1
                progress.step(epoch_losses[-1])
                every = config.checkpoint_every_steps
                if every and step % every == 0 and position + 1 < len(batches):
                    save_last(epoch, position + 1)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "train_loss": world.mean(float(np.mean(epoch_losses))) if epoch_losses else math.nan,
            }
            if val_loader is not None:
                record.update({f"val_{k}": v for k, v in objective.evaluate(model, val_loader).items()})
            result.history.append(record)
            now = elapsed + time.perf_counter() - started
            metrics_size = write({"kind": "epoch", **record, "time_s": round(now, 3)})
            progress.end(record)
            if _is_better(record, result.best):
                result.best = dict(record)
                if out is not None and world.main:
                    ckpt.save_checkpoint(out / BEST, model, {"epoch": epoch + 1, "step": step, "metrics": record})
            epoch, batch_start, epoch_losses = epoch + 1, 0, []
            save_last(epoch, 0)
        if out is not None and world.main and val_loader is None:  # no validation: the best is the last
            ckpt.save_checkpoint(out / BEST, model, {"epoch": epoch, "step": step, "metrics": {}})
    finally:
        if metrics is not None:
            metrics.close()
        if progress.bar is not None:
            progress.bar.close()
    world.barrier()
    result.final = dict(result.history[-1]) if result.history else {}
    result.steps = step
    result.messages = [message for hook in hooks for message in hook.messages()]
    result.wall_time_s = elapsed + time.perf_counter() - started
    return result


def _remove_checkpoint(directory: Path) -> None:
    for path in (
        directory,
        directory.with_name(f".{directory.name}.old"),
        directory.with_name(f".{directory.name}.tmp"),
    ):
        shutil.rmtree(path, ignore_errors=True)


def iter_metrics(run_dir: Path, kind: str | None = "epoch") -> Iterator[dict[str, Any]]:
    """Records of ``run_dir/metrics.jsonl`` (only those of ``kind`` "epoch" / "step", or all for None)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"run_dir: no {METRICS_FILE} in {run_dir}")
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if kind is None or record.get("kind") == kind:
                yield record
