"""The experiment protocol: what every lab experiment declares and returns, and the registry.

An experiment is a module exposing, written before any run:

- ``CLAIM``: the principle under test, in words a user can check.
- ``PRECONDITION``: the measured condition under which the claim can show at all (e.g. "the hard
  modality is starved"); when it fails the verdict is "inconclusive", never "supported" or
  "not supported" (`verdict`).
- ``CRITERION``: the declared test of the claim.
- ``PLANS: dict[Size, Plan]``: one frozen dataclass per size, named ``Plan`` in every module, with at
  least ``seeds`` (default number of seeds) and ``expected_s`` (wall time on the reference machine,
  see `REFERENCE_MACHINE`), plus the experiment's own budget fields.
- ``run(plan, seeds, progress) -> Result``.

`run_experiment` is the one entry point: it checks the size, resolves the seeds, times the run and
stamps ``size``, ``seeds`` and ``wall_time_s`` on the `Result`. `EXPERIMENTS` maps names to modules.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Literal, Protocol

Size = Literal["smoke", "quick", "full"]
Verdict = Literal["supported", "not supported", "inconclusive"]
SIZES: tuple[Size, ...] = ("smoke", "quick", "full")
VERDICTS: tuple[Verdict, ...] = ("supported", "not supported", "inconclusive")

Progress = Callable[[str], None]
"""Called by an experiment with a short stage description ("training cross, seed 1/3")."""

REFERENCE_MACHINE = "2-core AMD EPYC (AVX2), 1 torch thread per experiment"
"""Where each ``Plan.expected_s`` was measured; the runner scales it by a quick speed probe."""


class Plan(Protocol):
    """What the runner reads from an experiment's plan; each module's ``Plan`` adds its budget fields."""

    @property
    def seeds(self) -> int: ...

    @property
    def expected_s(self) -> float: ...


@dataclass
class Table:
    """A table of results: column names and rows of values (numbers or strings)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Result:
    """What one experiment measured.

    ``figures`` maps a file name to a PNG's bytes; ``raw`` is JSON-serialisable; ``measured`` is
    the one-line figure compared with the criterion; ``extras`` carries data for the report's
    interactive explorer (JSON-serialisable), under ``extras["explorer"]``::

        {"kind": "report" | "binding",
         "examples": [{
             "image": "data:image/png;base64,...",     # the input image as shown to the model
             "image_size": [H, W],                     # pixels
             "grid": [gh, gw],                         # patch grid the attention is over
             "text": "the generated report / the question",
             "reference": "ground-truth report / answer" (optional),
             "tokens": ["there", "is", ...],           # the words one can click
             "attention": {"mean": [[gh*gw floats] per token],            # head/layer average
                           "layer 1 / head 2": [[gh*gw floats] per token], ...},
             "methods": ["raw", "mean", "gradient"] (optional),  # heatmap methods, listed first; first = default
             "boxes": [{"label": "nodule", "xyxy": [x0, y0, x1, y1]}]   # ground truth, pixels
         }, ...]}
    """

    name: str
    claim: str
    criterion: str
    verdict: Verdict
    measured: str
    precondition: str = ""
    precondition_measured: str = ""
    precondition_met: bool | None = None
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    size: Size = "quick"
    seeds: list[int] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Everything but the figure bytes (those are written as PNG files)."""
        record = asdict(self)
        record["figures"] = sorted(self.figures)
        return record


EXPERIMENTS: dict[str, str] = {
    "binding": "crossfuse.lab.binding",
    "needle": "crossfuse.lab.needle",
    "report": "crossfuse.lab.report_generation",
    "gradient_highway": "crossfuse.lab.gradient_highway",
    "jitter": "crossfuse.lab.jitter",
    "critical_noise": "crossfuse.lab.critical_noise",
    "dominance": "crossfuse.lab.dominance",
}
"""Experiment name -> module implementing the protocol of this module's docstring."""


def load_experiment(name: str) -> ModuleType:
    """Import the module of experiment ``name``; unknown names list the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown name {name!r}; expected one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def resolve_plan(module: ModuleType, size: str) -> Any:
    """The experiment's plan for ``size``; an unknown size lists the known ones."""
    plans = module.PLANS
    if size not in plans:
        raise ValueError(f"size: expected one of {list(plans)}, got {size!r}")
    return plans[size]


def resolve_seeds(plan: Plan, seed: int, num_seeds: int | None) -> list[int]:
    """The seeds to run: ``num_seeds`` if given, else ``plan.seeds``, counting up from ``seed``."""
    count = plan.seeds if num_seeds is None else num_seeds
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"num_seeds: expected an int >= 1, got {count!r}")
    return [seed + i for i in range(count)]


def run_experiment(
    experiment: str | ModuleType,
    size: Size = "quick",
    seed: int = 0,
    num_seeds: int | None = None,
    progress: Progress | None = None,
) -> Result:
    """Run one experiment (by name or module) at ``size``; the Result carries size, seeds and wall time."""
    module = load_experiment(experiment) if isinstance(experiment, str) else experiment
    plan = resolve_plan(module, size)
    seeds = resolve_seeds(plan, seed, num_seeds)
    started = time.perf_counter()
    result = module.run(plan, seeds, progress or (lambda _text: None))
    if isinstance(result, Result):
        result.size, result.seeds = size, list(seeds)
        result.wall_time_s = time.perf_counter() - started
    return result
