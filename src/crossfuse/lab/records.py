"""What a lab run records: an `ExperimentRecord` per experiment, the `LabRun`, its directory and environment.

Shapes: no tensors; ``LabRun.save() -> results.json`` (format `RESULTS_FORMAT`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crossfuse.atomic import atomic_write_text
from crossfuse.embed import jsonable
from crossfuse.lab.result import Result, Size
from crossfuse.lab.speed import SpeedProbe

RESULTS_FORMAT = 1
"""Version of the ``results.json`` layout (bump on incompatible changes)."""

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class ExperimentRecord:
    """How one experiment went: ``status`` "ok" or "failed", its `Result` (if any), error and files."""

    name: str
    status: str
    wall_time_s: float
    result: Result | None = None
    error: str | None = None
    traceback: str | None = None
    warnings: list[str] = field(default_factory=list)
    log: str = ""
    figure_files: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "wall_time_s": self.wall_time_s,
            "error": self.error,
            "traceback": self.traceback,
            "warnings": self.warnings,
            "log": self.log,
            "figure_files": self.figure_files,
            "interrupted": self.interrupted,
            "result": None if self.result is None else self.result.to_json(),
        }


@dataclass
class LabRun:
    """A whole lab run: where it was written, the settings, the environment and every record."""

    out: Path
    size: Size
    seed: int
    num_seeds: int | None
    environment: dict[str, Any]
    records: list[ExperimentRecord] = field(default_factory=list)
    started: str = ""
    wall_time_s: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.records if r.status != "ok"]

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "started": self.started,
            "wall_time_s": self.wall_time_s,
            "interrupted": self.interrupted,
            "size": self.size,
            "seed": self.seed,
            "num_seeds": self.num_seeds,
            "environment": self.environment,
            "experiments": [r.to_json() for r in self.records],
        }

    def save(self) -> Path:
        """Write ``results.json`` atomically (a reader never sees half a file)."""
        return atomic_write_text(self.results_path, json.dumps(jsonable(self.to_json()), indent=2))


def safe_filename(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9_.-]`` without leading dots, so it stays inside its directory."""
    cleaned = _SAFE_NAME.sub("_", str(name)).lstrip(".")
    return cleaned or "_"


# ----------------------------------------------------------------------------------------------------------
# Output directory and environment


def new_output_dir(out: str | Path | None, root: str | Path = "runs") -> Path:
    """Create the output directory: ``out`` if it is new or empty, else ``<root>/lab-<timestamp>[-k]``.

    Never reuses a non-empty directory: a user's earlier results are not overwritten.
    """
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"out: {str(path)!r} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise FileExistsError(
                f"out: directory {str(path)!r} exists and is not empty; expected a new or empty directory "
                "(earlier results are never overwritten)"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        path = root / (f"lab-{stamp}" if k == 1 else f"lab-{stamp}-{k}")
        try:
            path.mkdir()  # atomic: two runs started in the same second get different directories
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"out: could not create a new directory under {str(root)!r}")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> str | None:
    """The commit of the crossfuse checkout (``+dirty`` with uncommitted changes), None outside git."""
    where = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def environment(
    size: Size, seed: int, num_seeds: int | None, jobs: int = 1, speed: SpeedProbe | None = None
) -> dict[str, Any]:
    """What a reader needs to reproduce the run: versions, CPU, threads, settings, date, git commit."""
    import numpy
    import torch

    import crossfuse

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "crossfuse": getattr(crossfuse, "__version__", "unknown"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "size": size,
        "num_seeds": num_seeds,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "jobs": jobs,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "speed_probe": None if speed is None else speed.to_json(),
    }
