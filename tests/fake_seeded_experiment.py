"""A fake experiment importable by a spawned worker: it reports draws from the global generators and its process.

Without seeding before each experiment, two of these run one after another in one process would draw
different numbers than when each runs first in its own worker process.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from crossfuse.lab.result import Result
from fake_experiments import FAKE_PLANS

CLAIM = "fake: the global generators are seeded before each experiment"
PRECONDITION = "fake precondition"
CRITERION = "fake criterion"
PLANS = FAKE_PLANS


def run(plan: Any, seeds: list[int], progress: Any) -> Result:
    progress("drawing")
    draws = [random.random(), float(np.random.rand()), *torch.rand(3).tolist()]
    return Result(
        name="seeded",
        claim=CLAIM,
        criterion=CRITERION,
        verdict="inconclusive",
        measured=f"{draws[0]:.6f}",
        raw={"draws": draws, "pid": os.getpid(), "threads": torch.get_num_threads()},
    )
