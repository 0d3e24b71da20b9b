"""Training options: `TrainConfig` and its validation.

Every field is checked where the config is built (``__post_init__``) and again by `check_config` at the
entry of `crossfuse.train.fit`, with errors that name the field, the expected and the actual value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from crossfuse.balance import BALANCE_METHODS
from crossfuse.precision import check_device, check_precision

TASKS = ("classification", "multilabel", "regression")
OPTIMIZERS = ("adamw", "sgd")

# Fields that may differ between an interrupted run and its resumption (they do not change the numbers).
RESUMABLE_CHANGES = ("progress", "device", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults suit the small models of the lab.

    ``batch_size`` is the global batch (split across DDP ranks). ``balance`` ("none" | "ogm-ge" |
    "aux"), ``balance_alpha`` and ``monitor_gradients`` install `crossfuse.balance` hooks.
    ``checkpoint_every_steps`` adds mid-epoch ``last/`` checkpoints (every epoch always gets one).
    ``device`` is "cpu", "cuda", "cuda:N", "mps" or "auto" (CUDA when available); ``precision`` and
    ``device`` are checked here, the device's presence when `fit` starts.
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
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast; fp16 with a gradient scaler), see crossfuse.precision
    tensorboard: bool = False  # also write the metrics as TensorBoard event files into out_dir

    def __post_init__(self) -> None:
        _check_fields(self)


def check_config(config: TrainConfig) -> None:
    """ValueError naming the first field of ``config`` that is out of range (see `TrainConfig.__post_init__`)."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    _check_fields(config)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_fields(config: TrainConfig) -> None:
    def fail(name: str, expected: str) -> None:
        raise ValueError(f"config.{name}: expected {expected}, got {getattr(config, name)!r}")

    for name, choices in (("task", TASKS), ("optimizer", OPTIMIZERS), ("balance", BALANCE_METHODS)):
        if getattr(config, name) not in choices:
            fail(name, f"one of {list(choices)}")
    for name, minimum in (("epochs", 0), ("batch_size", 1), ("seed", 0)):
        if not _is_int(getattr(config, name)) or getattr(config, name) < minimum:
            fail(name, f"an int >= {minimum}")
    if not _is_number(config.lr) or not config.lr > 0:
        fail("lr", "a finite positive learning rate")
    if not _is_number(config.weight_decay) or config.weight_decay < 0:
        fail("weight_decay", "a finite number >= 0")
    if not _is_number(config.warmup_fraction) or not 0 <= config.warmup_fraction <= 1:
        fail("warmup_fraction", "a value in [0, 1]")
    if config.grad_clip is not None and (not _is_number(config.grad_clip) or not config.grad_clip > 0):
        fail("grad_clip", "None or a finite positive norm")
    if not _is_number(config.balance_alpha) or config.balance_alpha < 0:
        fail("balance_alpha", "a finite number >= 0")
    if config.balance != "none" and config.task != "classification":
        fail("balance", f"'none' for task {config.task!r} (rebalancing needs task 'classification')")
    every = config.checkpoint_every_steps
    if every is not None and (not _is_int(every) or every < 1):
        fail("checkpoint_every_steps", "None or an int >= 1")
    for name in ("progress", "monitor_gradients", "tensorboard"):
        if not isinstance(getattr(config, name), bool):
            fail(name, "True or False")
    if not isinstance(config.device, str) or not config.device:
        fail("device", "a device name such as 'cpu' or 'cuda'")
    for name, check in (("device", check_device), ("precision", check_precision)):
        try:
            check(getattr(config, name))
        except ValueError as error:
            raise ValueError(f"config.{error}") from None
