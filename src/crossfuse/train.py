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
  an uninterrupted run; it is refused (nothing on disk changed) when ``out_dir`` or ``last/`` is missing,
  or the options or the data (``data_fingerprint`` in config.json and ``last/``) differ.
- Non-finite: the loss is checked every step and the weights before every checkpoint; a NaN/Inf stops
  training with `TrainingDiverged` (a ValueError naming epoch and step), keeping the last good checkpoints.
- ``config.device`` ("auto" = CUDA when available) and ``config.precision`` (fp32, bf16 or fp16 autocast,
  see `crossfuse.precision`); ``config.tensorboard`` also writes the metrics as TensorBoard events.
- DDP: under ``torchrun --nproc_per_node=P`` (``WORLD_SIZE`` > 1) `fit` joins the process group
  (gloo unless already initialised), wraps the model in ``DistributedDataParallel`` and gives each
  rank a 1/P share of every global batch of ``batch_size`` rows (``batch_size`` must be divisible
  by P), so P processes see the same global batches as one process; only rank 0 writes files and
  shows progress. Every rank evaluates the whole validation set.

The pieces live beside this loop: `crossfuse.train_config` (options), `crossfuse.evaluation`
(objective, metrics, predict), `crossfuse.distributed` (data order, DDP), `crossfuse.metrics_log`
(metrics.jsonl) and `crossfuse.resume` (training state and ``last/``); their public names are
re-exported here.

Shapes (default `FusionObjective`): batch = {"inputs": {name: (B, N_m, D_m)},
"masks": {name: (B, N_m) bool}, "y": (B,) long or (B, K) float}.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from crossfuse import balance
from crossfuse import checkpoint as ckpt
from crossfuse.distributed import Distributed, EpochBatches, check_environment
from crossfuse.evaluation import (
    FusionObjective,
    Objective,
    classification_metrics,
    evaluate,
    fetch_batch,
    make_loader,
    predict,
    predict_batches,
    regression_metrics,
    to_device,
)
from crossfuse.hooks import TrainHook, run_after_clip
from crossfuse.metrics_log import METRICS_FILE, MetricsLog, check_tensorboard, iter_metrics
from crossfuse.precision import autocast, make_scaler, resolve_device
from crossfuse.progress import EpochProgress
from crossfuse.resume import (
    BEST,
    LAST,
    TrainingState,
    data_fingerprint,
    find_last,
    load_hook_state,
    remove_checkpoint,
    restore,
    save_last,
)
from crossfuse.runs import write_run_config
from crossfuse.train_config import OPTIMIZERS, RESUMABLE_CHANGES, TASKS, TrainConfig, check_config

__all__ = [
    "BEST", "LAST", "METRICS_FILE", "OPTIMIZERS", "RESUMABLE_CHANGES", "TASKS", "EpochBatches", "FitResult",
    "FusionObjective", "Objective", "TrainConfig", "TrainHook", "TrainingDiverged", "TrainingState", "check_config",
    "check_environment", "classification_metrics", "evaluate", "fetch_batch", "fit", "iter_metrics", "make_loader",
    "make_optimizer", "predict", "predict_batches", "regression_metrics", "seed_everything", "to_device",
    "warmup_cosine",
]  # fmt: skip


class TrainingDiverged(ValueError):
    """Training met a NaN/Inf loss or weight; the message names the epoch and step and likely causes.

    Nothing non-finite is written: ``last/`` and ``best/`` keep the last good checkpoints.
    """


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


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum 0.9; both with ``config.weight_decay``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


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


def _is_better(record: dict[str, float], best: dict[str, float]) -> bool:
    """The first scored record is the best so far even when its score is NaN (e.g. R^2 of a constant target)."""
    if "val_score" not in record:
        return False
    if not best:
        return True
    return not math.isnan(record["val_score"]) and not record["val_score"] < best.get("val_score", -math.inf)


@dataclass
class _Setup:
    """Everything one `fit` call works with: the model (and its DDP wrapper), data order, optimiser,
    hooks, run files, and the `TrainingState` that advances step by step."""

    model: nn.Module
    train_model: nn.Module  # the DDP wrapper under DDP, else ``model``
    train_data: Dataset
    config: TrainConfig
    objective: Objective
    world: Distributed
    out: Path | None
    order: EpochBatches
    val_loader: DataLoader | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    hooks: list[TrainHook]
    log: MetricsLog
    progress: EpochProgress
    state: TrainingState
    result: FitResult
    started: float
    fingerprints: dict[str, Any]
    device: torch.device
    scaler: torch.amp.GradScaler  # enabled for fp16 only

    @classmethod
    def build(
        cls, model: nn.Module, train_data: Dataset, val_data: Dataset | None, config: TrainConfig,
        objective: Objective, out: Path | None, hooks: list[TrainHook], resume: bool,
        metadata: dict[str, Any] | None, world: Distributed,
    ) -> _Setup:  # fmt: skip
        started = time.perf_counter()
        seed_everything(config.seed + world.rank)  # ranks draw different dropout masks
        device = resolve_device(config.device)
        model.to(device)
        scaler = make_scaler(device, config.precision)
        order = EpochBatches(len(train_data), config.batch_size, config.seed, world.rank, world.world_size)
        val_loader = None if val_data is None else make_loader(val_data, max(256, config.batch_size))
        optimizer = make_optimizer(model, config)
        total = config.epochs * order.per_epoch
        warmup = max(1, int(config.warmup_fraction * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))

        result, state = FitResult(), TrainingState()
        saved: dict[str, Any] = {}
        tensors: dict[str, Tensor] = {}
        fingerprints: dict[str, Any] = {}
        if out is not None:  # what the run trains on, so that resuming on other data is refused
            fingerprints = {"train_data": data_fingerprint(train_data), "val_data": data_fingerprint(val_data)}
        resumed = find_last(out) if resume and out is not None else None
        if resumed is not None:
            state, records, saved, tensors = restore(
                resumed, model, optimizer, scheduler, config, world, fingerprints, scaler
            )
            _refill(result, records)
        train_model: nn.Module = model
        if world.world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        hooks = hooks + list(balance.build_hooks(train_model, config))
        load_hook_state(hooks, saved.get("hooks", []), tensors)

        log = MetricsLog(None, append=False)
        if out is not None and world.main:
            out.mkdir(parents=True, exist_ok=True)
            if resumed is None:
                for stale in (LAST, BEST):
                    remove_checkpoint(out / stale)
                write_run_config(out, model, dataclasses.asdict(config), metadata, fingerprints)
            log = MetricsLog(out / METRICS_FILE, append=resumed is not None, tensorboard=config.tensorboard)
        progress = EpochProgress(config.progress and world.main, config.epochs)
        return cls(
            model, train_model, train_data, config, objective, world, out, order, val_loader, optimizer,
            scheduler, hooks, log, progress, state, result, started, fingerprints, device, scaler,
        )  # fmt: skip

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self.started

    def check_weights(self) -> None:
        """TrainingDiverged if a weight is NaN/Inf (checked before every checkpoint write)."""
        try:
            ckpt.check_finite(dict(self.model.state_dict()), "model weights")
        except ValueError as error:
            raise TrainingDiverged(f"training diverged at {self.where()}: {error}; {self.causes()}") from None

    def where(self) -> str:
        return f"epoch {self.state.epoch + 1}, step {self.state.step}"

    def causes(self) -> str:
        kept = "" if self.out is None else f"; the last good checkpoints in {self.out} are kept"
        return (
            f"likely causes: a learning rate too high (lr={self.config.lr}), huge or non-finite input values, "
            f"or fp16 overflow{kept}"
        )

    def save_last(self) -> None:
        s = self
        s.check_weights()
        save_last(
            s.out, s.model, s.optimizer, s.scheduler, s.config, s.world, s.hooks, s.state, s.elapsed(), s.fingerprints,
            s.scaler,
        )  # fmt: skip

    def save_best(self, metrics: dict[str, Any]) -> None:
        """Write ``out/best`` (rank 0) with the epochs done so far and their ``metrics``."""
        self.check_weights()
        if self.out is not None and self.world.main:
            info = {"epoch": self.state.epoch, "step": self.state.step, "metrics": metrics}
            ckpt.save_checkpoint(self.out / BEST, self.model, info)

    def close(self) -> None:
        self.log.close()
        self.progress.close()


def _refill(result: FitResult, records: list[dict[str, Any]]) -> None:
    """Put the records of an interrupted run's metrics.jsonl back into ``result``."""
    for record in records:
        kind = record.pop("kind", None)
        record.pop("time_s", None)
        if kind == "epoch":
            result.history.append(record)
            if _is_better(record, result.best):
                result.best = dict(record)
        elif kind == "step":
            result.step_records.append(record)


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
    continues from ``out_dir/last`` (ValueError if there is none). Hooks (``hooks`` plus those
    ``config.balance`` / ``config.monitor_gradients`` ask for) run after backward, before clipping
    (and ``after_clip`` after it, see `crossfuse.hooks`). Raises `TrainingDiverged` on a NaN/Inf loss
    or weight; every option and the DDP environment are checked before anything on disk changes.
    On return the model holds the last weights (not the best ones).

    Shapes: see the module docstring for the batch layout of the default `FusionObjective`.
    """
    check_config(config)
    check_environment()
    if config.tensorboard:
        check_tensorboard()
    if resume and out_dir is None:
        raise ValueError("resume: needs out_dir (the run directory to continue), got out_dir=None")
    objective = objective or FusionObjective(config.task)
    out = None if out_dir is None else Path(out_dir)
    world = Distributed.join()
    try:
        setup = _Setup.build(model, train_data, val_data, config, objective, out, list(hooks), resume, metadata, world)
        try:
            while setup.state.epoch < config.epochs:
                _train_epoch(setup)
            if setup.val_loader is None:  # no validation: the best is the last
                setup.save_best({})
        finally:
            setup.close()
        world.barrier()
        result = setup.result
        result.final = dict(result.history[-1]) if result.history else {}
        result.steps = setup.state.step
        result.messages = [message for hook in setup.hooks for message in hook.messages()]
        result.wall_time_s = setup.elapsed()
        return result
    finally:
        world.leave()


def _train_step(s: _Setup, batch: Any) -> float:
    """One optimisation step on ``batch``; returns the loss. Hook points: see `crossfuse.hooks`."""
    with autocast(s.device, s.config.precision):
        loss, output = s.objective.loss(s.train_model, batch)
    if not bool(torch.isfinite(loss.detach()).all()):  # stop before a NaN reaches the weights
        raise TrainingDiverged(f"training diverged at {s.where()}: the loss is {loss.item()}; {s.causes()}")
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.optimizer)  # hooks and clipping see the true gradients (no-op unless fp16)
    for hook in s.hooks:
        hook.after_backward(s.train_model, batch, output, s.state.step)
    if s.config.grad_clip:
        nn.utils.clip_grad_norm_(s.model.parameters(), s.config.grad_clip)
    run_after_clip(s.hooks, s.train_model, batch, output, s.state.step)
    s.scaler.step(s.optimizer)  # fp16: skipped when a gradient overflowed, and the scale shrinks
    s.scaler.update()
    s.scheduler.step()
    return loss.item()


def _train_epoch(s: _Setup) -> None:
    """The rest of epoch ``s.state.epoch`` (from batch ``s.state.batch``), its record, and its checkpoints."""
    state, config = s.state, s.config
    s.train_model.train()
    batches = s.order.batches(state.epoch)
    s.progress.start(state.epoch, len(batches), state.batch)
    for position in range(state.batch, len(batches)):
        batch = to_device(fetch_batch(s.train_data, batches[position]), s.device)
        state.epoch_losses.append(_train_step(s, batch))
        record: dict[str, Any] = {}
        for hook in s.hooks:
            record.update(hook.step_record())
        if record:
            s.result.step_records.append({"step": state.step, **record})
            state.metrics_size = s.log.write({"kind": "step", "step": state.step, **record})
        state.step += 1
        s.progress.step(state.epoch_losses[-1])
        every = config.checkpoint_every_steps
        if every and state.step % every == 0 and position + 1 < len(batches):
            state.batch = position + 1
            s.save_last()
    s.check_weights()  # before the epoch's record and checkpoints, so the message names this epoch
    losses = state.epoch_losses
    record = {
        "epoch": state.epoch + 1,
        "step": state.step,
        "lr": s.scheduler.get_last_lr()[0],
        "train_loss": s.world.mean(float(np.mean(losses))) if losses else math.nan,
    }
    if s.val_loader is not None:
        with autocast(s.device, config.precision):
            record.update({f"val_{k}": v for k, v in s.objective.evaluate(s.model, s.val_loader).items()})
    s.result.history.append(record)
    state.metrics_size = s.log.write({"kind": "epoch", **record, "time_s": round(s.elapsed(), 3)})
    s.progress.end(record)
    state.epoch, state.batch, state.epoch_losses = state.epoch + 1, 0, []
    if _is_better(record, s.result.best):
        s.result.best = dict(record)
        s.save_best(record)
    s.save_last()
