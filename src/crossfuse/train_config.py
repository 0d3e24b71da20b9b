"""Training options: `TrainConfig` and its validation.

Every field is checked where the config is built (``__post_init__``) and again by `check_config` at the
entry of `crossfuse.train.fit`, with errors that name the field, the expected and the actual value.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("classification", "regression")
OPTIMIZERS = ("adamw", "sgd")

# Fields that may differ between an interrupted run and its resumption (they do not change the numbers).
RESUMABLE_CHANGES = ("progress", "device")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults suit the small models of the lab.

    ``batch_size`` is the global batch (split across DDP ranks). ``balance`` ("none" | "ogm-ge" |
    "aux"), ``balance_alpha`` and ``monitor_gradients`` install `crossfuse.balance` hooks.
    ``checkpoint_every_steps`` adds mid-epoch ``last/`` checkpoints (every epoch always gets one).
    """

    task: str = "classification"  # "classification" | "regression"
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
