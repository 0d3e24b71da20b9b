"""Seeded needle-in-a-haystack sets: find the one source item whose key matches the query.

Each example holds ``n_items`` source items, each a (key, value) feature vector: the key is a
standard normal vector in ``key_dim`` dimensions (unit variance per feature, as after the usual
standardisation), the value a one-hot class vector plus Gaussian noise. The query is one item's
key (the needle) plus a little Gaussian noise; the target is the class of
the needle's value, so it depends on that one item only (every other item's class is random and
independent of the target).

Shapes:
    items: (N, n_items, key_dim + num_classes)  query: (N, 1, key_dim)  y: (N,) long
    needle: (N,) long, the index of the matching item
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset


@dataclass(frozen=True)
class NeedleConfig:
    """Generator settings: key size, number of classes and noise levels."""

    key_dim: int = 24
    num_classes: int = 4
    value_noise: float = 0.2
    query_noise: float = 0.1  # std of the Gaussian noise added to the needle's key (keys have unit variance)

    def __post_init__(self) -> None:
        if self.key_dim < 1 or self.num_classes < 2:
            raise ValueError(
                "key_dim/num_classes: expected key_dim >= 1 and num_classes >= 2, "
                f"got {self.key_dim}, {self.num_classes}"
            )
        if self.value_noise < 0 or self.query_noise < 0:
            raise ValueError(f"value_noise/query_noise: expected >= 0, got {self.value_noise}, {self.query_noise}")

    @property
    def item_dim(self) -> int:
        """Feature size of one source item: key then value."""
        return self.key_dim + self.num_classes


@dataclass
class NeedleSet:
    """Source items, queries, targets and the needle's position.

    Shapes: items: (N, n, key_dim + C)  query: (N, 1, key_dim)  y: (N,) long  needle: (N,) long
    """

    items: Tensor
    query: Tensor
    y: Tensor
    needle: Tensor
    config: NeedleConfig

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def n_items(self) -> int:
        return self.items.shape[1]

    def dataset(self) -> MultimodalDataset:
        """A `MultimodalDataset` with modalities ``"query"`` (one token) and ``"source"`` (the items).

        Not named "items": modality names become ``nn.ModuleDict`` keys, and ``items`` is a method there.
        """
        return MultimodalDataset({"query": self.query, "source": self.items}, self.y.clone())

    def oracle_accuracy(self) -> float:
        """Accuracy of the rule "take the item whose key is nearest the query, read its value's class".

        A reference ceiling: it fails only on key collisions and on values whose noise moved the argmax.
        """
        keys = self.items[..., : self.config.key_dim]
        best = (keys - self.query).square().sum(-1).argmin(dim=1)  # (N,)
        values = self.items[torch.arange(len(self)), best, self.config.key_dim :]
        return (values.argmax(-1) == self.y).float().mean().item()


def generate_needle(n: int, n_items: int, seed: int, config: NeedleConfig | None = None) -> NeedleSet:
    """``n`` examples with ``n_items`` source items each, seeded."""
    config = config or NeedleConfig()
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    if n_items < 1:
        raise ValueError(f"n_items: expected >= 1, got {n_items}")
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, n_items, config.key_dim)).astype(np.float32)
    classes = rng.integers(config.num_classes, size=(n, n_items))
    values = np.eye(config.num_classes, dtype=np.float32)[classes]
    values += config.value_noise * rng.standard_normal(values.shape).astype(np.float32)
    needle = rng.integers(n_items, size=n)
    rows = np.arange(n)
    perturbation = rng.standard_normal((n, config.key_dim)).astype(np.float32)
    query = keys[rows, needle] + config.query_noise * perturbation
    return NeedleSet(
        items=torch.from_numpy(np.concatenate([keys, values], axis=-1)),
        query=torch.from_numpy(query[:, None, :]),
        y=torch.from_numpy(classes[rows, needle]).long(),
        needle=torch.from_numpy(needle).long(),
        config=config,
    )
