"""The record every lab experiment returns, and the registry of experiments.

An experiment is a module exposing ``CLAIM`` and ``CRITERION`` (written before any run) and
``run(size: "smoke" | "quick" | "full", seed: int, num_seeds: int | None, progress) -> Result``;
`EXPERIMENTS` maps its name to the module.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

Size = Literal["smoke", "quick", "full"]
Verdict = Literal["supported", "not supported", "inconclusive"]
SIZES: tuple[Size, ...] = ("smoke", "quick", "full")


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
             "boxes": [{"label": "nodule", "xyxy": [x0, y0, x1, y1]}]   # ground truth, pixels
         }, ...]}
    """

    name: str
    claim: str
    criterion: str
    verdict: Verdict
    measured: str
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

    def save(self, directory: Path) -> None:
        """Write ``result.json`` and every figure into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.figures.items():
            (directory / name).write_bytes(data)
        (directory / "result.json").write_text(json.dumps(self.to_json(), indent=2, default=float))


ProgressFn = Callable[[str], None]
"""Called by an experiment with a short stage description ("training cross, seed 1/3")."""

EXPERIMENTS: dict[str, str] = {
    "binding": "crossfuse.lab.binding",
    "needle": "crossfuse.lab.needle",
    "report": "crossfuse.lab.report_generation",
    "gradient_highway": "crossfuse.lab.gradient_highway",
    "jitter": "crossfuse.lab.jitter",
    "critical_noise": "crossfuse.lab.critical_noise",
    "dominance": "crossfuse.lab.dominance",
}
"""Experiment name -> module. Each module exposes ``CLAIM``, ``CRITERION`` and
``run(size="quick", seed=0, num_seeds=None, progress=None) -> Result``."""


def load_experiment(name: str) -> ModuleType:
    """Import the module of experiment ``name``; unknown names list the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown name {name!r}; expected one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
