"""A seeded two-modality classification task where one modality dominates training.

Generative model (C classes, label ``y ~ Uniform{0..C-1}``). Both modalities hide their class in
the *second moment* of their tokens: token t is ``s_t * a * u_c + sigma * eps_t`` with a random sign
``s_t = ±1`` per token, ``u_c`` orthonormal class directions drawn at random, so the mean token is
zero in expectation and the class is not linearly readable from pooled raw inputs (nor from an
untrained encoder's pooled features, up to the small even part a random network has); an encoder
must learn to compute which direction carries extra energy (``argmax_c sum_t (x_t·u_c)^2``).

- ``"easy"`` (T_e = 4 tokens x D_e = 256 features, amplitude a_e = 4, unit noise): per token the
  signal energy a_e^2 = 16 stands far above the noise along any one direction, so once the encoder
  learns the 4 directions (within about an epoch) it reads the shown class almost perfectly; the
  256 features make the directions a needle a random projection does not find (untrained probe
  near chance: 0.268 ± 0.002 on 4 classes, 3 seeds). Measured learning speed (2000 samples, SGD
  momentum 0.9, lr 0.05 with 5% warmup, cosine over 10 epochs, seeds 0-2, joint training): easy
  probe 0.29-0.30 after epoch 1, 0.46-0.63 after 2, 0.70-0.84 after 3, so it is learned within
  two to three epochs, not one as the issue asked (the hard encoder's probe, 0.54-0.75 after
  epoch 1, is learned about as early, which limits the starvation). With probability ``easy_reliability`` (the sample is
  *reliable*) the shown class is y; otherwise a class drawn uniformly at random, independent of
  y (a misleading shortcut), so alone it caps accuracy at ``r + (1 - r) / C`` (0.85).
- ``"hard"`` (T_h = 16 tokens x D_h = 16 features, amplitude a_h = 1.25, unit noise): the same
  structure at a much lower signal-to-noise ratio per token, so it is learned slowly; but it shows
  y for every sample: the oracle ``argmax_c sum_t (x_t·u_c)^2`` (`hard_oracle_predict`) is right
  about 96% of the time, against the easy modality's 85%. It carries what the easy one lacks on
  the misleading 20%.

So joint training first fits the easy modality, after which only the misleading ~15% of samples
push the hard encoder; robustness to losing the easy modality needs the hard one. Both modalities
need encoder learning, so OGM-GE, which modulates encoder gradients only, has a lever on the
dominance (the premise of Peng et al., 2022).

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
    easy_dim: int = 256
    easy_amplitude: float = 4.0
    easy_noise: float = 1.0
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
        for name in ("easy_dim", "hard_dim"):
            if self.num_classes > getattr(self, name):
                raise ValueError(
                    f"config.{name}: needs >= num_classes={self.num_classes} orthonormal directions, "
                    f"got {getattr(self, name)}"
                )
        if not 0.0 <= self.easy_reliability <= 1.0:
            raise ValueError(f"config.easy_reliability: expected a probability in [0, 1], got {self.easy_reliability}")
        for name in ("easy_amplitude", "easy_noise", "hard_amplitude", "hard_noise"):
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
    """The class directions of both modalities, shared by all splits.

    Shapes: easy_directions: (C, D_e)  directions: (C, D_h), orthonormal rows.
    """

    config: DominanceConfig
    easy_directions: Tensor
    directions: Tensor


def make_task(config: DominanceConfig, generator: torch.Generator) -> DominanceTask:
    """Draw the orthonormal class directions of the easy and the hard modality."""
    config.validate()
    easy, _ = torch.linalg.qr(torch.randn(config.easy_dim, config.num_classes, generator=generator))
    hard, _ = torch.linalg.qr(torch.randn(config.hard_dim, config.num_classes, generator=generator))
    return DominanceTask(config, easy.T.contiguous(), hard.T.contiguous())


def _second_moment_tokens(
    directions: Tensor, classes: Tensor, tokens: int, amplitude: float, noise: float, generator: torch.Generator
) -> Tensor:
    """Tokens ``s_t * amplitude * u_c + noise * eps_t`` with a random sign per token.

    Shapes: directions: (C, D)  classes: (N,) long  ->  (N, tokens, D)
    """
    n, dim = classes.shape[0], directions.shape[1]
    signs = torch.randint(2, (n, tokens, 1), generator=generator).float() * 2 - 1
    return signs * amplitude * directions[classes][:, None, :] + noise * torch.randn(
        n, tokens, dim, generator=generator
    )


def sample(task: DominanceTask, n: int, generator: torch.Generator) -> DominanceSplit:
    """Draw ``n`` samples from the generative model of the module docstring."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    cfg = task.config
    y = torch.randint(cfg.num_classes, (n,), generator=generator)
    reliable = torch.rand(n, generator=generator) < cfg.easy_reliability
    shown = torch.where(reliable, y, torch.randint(cfg.num_classes, (n,), generator=generator))
    easy = _second_moment_tokens(
        task.easy_directions, shown, cfg.easy_tokens, cfg.easy_amplitude, cfg.easy_noise, generator
    )
    hard = _second_moment_tokens(task.directions, y, cfg.hard_tokens, cfg.hard_amplitude, cfg.hard_noise, generator)
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


def easy_oracle_predict(task: DominanceTask, easy: Tensor) -> Tensor:
    """The known-direction classifier on the easy modality: the class it *shows* (y when reliable).

    Shapes: easy: (N, T_e, D_e)  ->  (N,) long
    """
    return (easy @ task.easy_directions.T).pow(2).sum(dim=1).argmax(dim=-1)
