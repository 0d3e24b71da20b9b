"""A seeded two-modality classification task where one modality dominates training.

Generative model (C classes, label ``y ~ Uniform{0..C-1}``):

- ``"easy"`` (T_e tokens of size D_e): a class prototype ``mu_c ~ N(0, I)`` per class. With
  probability ``easy_reliability`` (the sample is *reliable*) every token is ``mu_y + sigma_e * eps``;
  otherwise it shows the prototype of a class drawn uniformly at random, independent of y
  (a misleading shortcut). The label is linearly readable from the mean token, with low noise, so a
  network fits it within a few steps, but alone it caps accuracy at ``r + (1 - r) / C``.
- ``"hard"`` (T_h tokens of size D_h): orthonormal class directions ``u_c``; token t is
  ``s_t * a * u_y + sigma_h * eps_t`` with a random sign ``s_t = ±1`` per token. The mean token is
  zero in expectation, so the label is *not* linearly readable from pooled raw inputs; it lies in
  the second moment (which direction carries extra energy), which an encoder must learn to
  compute. It determines the label for every sample: the oracle ``argmax_c sum_t (x_t·u_c)^2``
  (`hard_oracle_predict`) is right about 96% of the time with the defaults, against the easy
  modality's 85%.

So joint training first fits the easy modality, after which only the unreliable ~15% of samples
push the hard encoder; robustness to losing the easy modality needs the hard one.

Shapes: inputs {"easy": (N, T_e, D_e), "hard": (N, T_h, D_h)}, y (N,) long, reliable (N,) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset


@dataclass(frozen=True)
class DominanceConfig:
    """Sizes and noise levels of the dominance task (fixed before any experiment was run)."""

    num_classes: int = 4
    easy_tokens: int = 4
    easy_dim: int = 8
    easy_noise: float = 0.5
    easy_reliability: float = 0.8
    hard_tokens: int = 16
    hard_dim: int = 16
    hard_amplitude: float = 1.25
    hard_noise: float = 1.0

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        for name in ("num_classes", "easy_tokens", "easy_dim", "hard_tokens", "hard_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{name}: expected a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"config.num_classes: expected >= 2, got {self.num_classes}")
        if self.num_classes > self.hard_dim:
            raise ValueError(
                f"config.hard_dim: needs >= num_classes={self.num_classes} orthonormal directions, got {self.hard_dim}"
            )
        if not 0.0 <= self.easy_reliability <= 1.0:
            raise ValueError(f"config.easy_reliability: expected a probability in [0, 1], got {self.easy_reliability}")
        for name in ("easy_noise", "hard_amplitude", "hard_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.{name}: expected >= 0, got {getattr(self, name)}")


@dataclass
class DominanceSplit:
    """One split: the data set and which samples' easy modality shows the true class.

    Shapes: data: inputs {"easy": (N, T_e, D_e), "hard": (N, T_h, D_h)}, y (N,)  reliable: (N,) bool
    """

    data: MultimodalDataset
    reliable: Tensor


@dataclass
class DominanceTask:
    """The class prototypes and directions shared by all splits.

    Shapes: prototypes: (C, D_e)  directions: (C, D_h), orthonormal rows.
    """

    config: DominanceConfig
    prototypes: Tensor
    directions: Tensor


def make_task(config: DominanceConfig, generator: torch.Generator) -> DominanceTask:
    """Draw the easy prototypes ``mu_c`` and orthonormal hard directions ``u_c``."""
    config.validate()
    prototypes = torch.randn(config.num_classes, config.easy_dim, generator=generator)
    q, _ = torch.linalg.qr(torch.randn(config.hard_dim, config.num_classes, generator=generator))
    return DominanceTask(config, prototypes, q.T.contiguous())


def sample(task: DominanceTask, n: int, generator: torch.Generator) -> DominanceSplit:
    """Draw ``n`` samples from the generative model of the module docstring."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    cfg = task.config
    y = torch.randint(cfg.num_classes, (n,), generator=generator)
    reliable = torch.rand(n, generator=generator) < cfg.easy_reliability
    shown = torch.where(reliable, y, torch.randint(cfg.num_classes, (n,), generator=generator))
    easy = task.prototypes[shown][:, None, :] + cfg.easy_noise * torch.randn(
        n, cfg.easy_tokens, cfg.easy_dim, generator=generator
    )
    signs = torch.randint(2, (n, cfg.hard_tokens, 1), generator=generator).float() * 2 - 1
    hard = signs * cfg.hard_amplitude * task.directions[y][:, None, :] + cfg.hard_noise * torch.randn(
        n, cfg.hard_tokens, cfg.hard_dim, generator=generator
    )
    return DominanceSplit(MultimodalDataset({"easy": easy, "hard": hard}, y), reliable)


def dominance_splits(
    sizes: dict[str, int], seed: int = 0, config: DominanceConfig | None = None
) -> tuple[DominanceTask, dict[str, DominanceSplit]]:
    """The task and one split per entry of ``sizes`` (e.g. {"train": 2000, "test": 1000}), seeded.

    Shapes: -> task, {split: DominanceSplit with N = sizes[split]}
    """
    if not sizes:
        raise ValueError("sizes: expected at least one split, e.g. {'train': 2000, 'test': 1000}, got {}")
    generator = torch.Generator().manual_seed(seed)
    task = make_task(config or DominanceConfig(), generator)
    return task, {name: sample(task, n, generator) for name, n in sizes.items()}


def hard_oracle_predict(task: DominanceTask, hard: Tensor) -> Tensor:
    """The known-direction classifier ``argmax_c sum_t (x_t·u_c)^2`` on the hard modality.

    Shapes: hard: (N, T_h, D_h)  ->  (N,) long
    """
    return (hard @ task.directions.T).pow(2).sum(dim=1).argmax(dim=-1)
