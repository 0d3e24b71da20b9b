"""Units for tests/test_lab_units.py, importable by a spawned worker: each seeds itself and draws."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def draw(seed: int, count: int, say: Callable[[str], None]) -> tuple[list[float], int]:
    """``count`` draws of a generator seeded with ``seed``, and the process that drew them."""
    torch.manual_seed(seed)
    say(f"drawing {count} with seed {seed}")
    print(f"printed by unit {seed}")
    return torch.rand(count).tolist(), os.getpid()


def fail(message: str, say: Callable[[str], None]) -> None:
    """A unit that raises ``ValueError(message)``."""
    raise ValueError(message)


def sleep(seconds: float, say: Callable[[str], None]) -> float:
    """A unit that sleeps ``seconds`` (to see it stopped when another unit fails)."""
    import time

    time.sleep(seconds)
    return seconds


def fail_or_sleep(kind: str, value, say: Callable[[str], None]):
    """``fail(value)`` or ``sleep(value)`` by ``kind`` (one function for units of both kinds)."""
    return fail(value, say) if kind == "fail" else sleep(value, say)
