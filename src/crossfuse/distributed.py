"""Distributed data order: the seeded batches of every epoch, each DDP rank's share, and the process group.

Under ``torchrun --nproc_per_node=P`` (``WORLD_SIZE`` > 1) `Distributed.join` joins the process group
(gloo unless already initialised); each rank takes a 1/P share of every global batch, so P processes
see the same global batches as one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def check_environment(environ: Mapping[str, str] | None = None) -> int:
    """Check torchrun's variables before anything touches disk; returns the world size (1 without DDP).

    ValueError naming the variable when ``WORLD_SIZE`` is not an int >= 1, or is > 1 without a valid
    ``RANK``, ``MASTER_ADDR`` or ``MASTER_PORT`` (``init_process_group`` would fail later, or hang).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        world = 0
    if world < 1:
        raise ValueError(f"WORLD_SIZE: expected an int >= 1 (the number of DDP processes), got {raw!r}")
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        return world
    hint = "start DDP with torchrun --nproc_per_node=P, which sets them, or unset WORLD_SIZE"
    rank = env.get("RANK")
    if rank is None or not rank.isdigit() or int(rank) >= world:
        raise ValueError(f"RANK: expected an int in [0, {world}) with WORLD_SIZE={world}, got {rank!r}; {hint}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ValueError(f"{name}: not set although WORLD_SIZE={world}; {hint}")
    return world


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
class Distributed:
    """This process's place in a DDP job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    created: bool = False

    @classmethod
    def join(cls) -> Distributed:
        world = check_environment()
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
