"""Runs lab experiments one after another: progress display, per-experiment logs, failures, ``results.json``.

An experiment that raises, returns something that is not a `Result`, or whose module is missing is
recorded as failed with its error and traceback; the others still run. Nothing written before is lost:
the output directory is new (timestamped) or an existing empty one.

Layout of an output directory::

    results.json            # every number: environment, and per experiment status, error, Result record
    <name>/log.txt          # the experiment's stdout/stderr, its stages with times, any traceback
    <name>/<figure>.png     # the figures of the Result

``results.json`` is rewritten after each experiment, so an interrupted run keeps what finished. The HTML
report is rendered from it by `crossfuse.viz.html.write_report` (the report layer sits above the lab).

Shapes: no tensors; ``run_lab(names, size, seed, num_seeds, out)  ->  LabRun`` (records in run order).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from crossfuse.atomic import atomic_write_text
from crossfuse.embed import jsonable
from crossfuse.lab import result as lab_result
from crossfuse.lab.result import SIZES, Result, Size

RESULTS_FORMAT = 1
"""Version of the ``results.json`` layout (bump on incompatible changes)."""

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def expected_seconds(name: str, size: Size) -> float | None:
    """Expected duration of ``name`` at ``size`` (its plan's ``expected_s``); None when unknown."""
    try:
        return lab_result.resolve_plan(lab_result.load_experiment(name), size).expected_s
    except (ImportError, AttributeError, ValueError):
        return None


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


def environment(size: Size, seed: int, num_seeds: int | None) -> dict[str, Any]:
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
    }


# ----------------------------------------------------------------------------------------------------------
# Progress display


class ProgressDisplay:
    """One line per experiment: name, current stage, elapsed / expected seconds.

    On a terminal the line updates in place (redrawn twice a second); otherwise plain lines are printed
    when the stage changes, at most one every ``min_interval_s`` so a chatty experiment cannot flood a log.
    """

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None, min_interval_s: float = 2.0):
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._index = 0
        self._name = ""
        self._stage = ""
        self._expected: float | None = None
        self._t0 = 0.0
        self._last_print = -math.inf

    def _prefix(self) -> str:
        return f"[{self._index}/{self.total}] {self._name}"

    def _timing(self) -> str:
        elapsed = time.monotonic() - self._t0
        expected = f"~{self._expected:.0f}s" if self._expected is not None else "?"
        return f"{elapsed:6.1f}s / {expected}"

    def _redraw(self, final: str | None = None) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        text = f"{self._prefix():<26} {self._timing():>16}  {final if final is not None else self._stage}"
        self.stream.write("\r\x1b[2K" + text[: max(width - 1, 20)] + ("\n" if final is not None else ""))
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._redraw()

    def start(self, index: int, name: str, expected_s: float | None) -> None:
        with self._lock:
            self._index, self._name, self._expected = index, name, expected_s
            self._stage, self._t0, self._last_print = "starting", time.monotonic(), -math.inf
            if self.tty:
                self._redraw()
            else:
                expected = f"~{expected_s:.0f}s" if expected_s is not None else "unknown"
                self._write(f"{self._prefix()}: started (expected {expected})")
        if self.tty:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def stage(self, text: str) -> None:
        with self._lock:
            self._stage = " ".join(str(text).split())[:200]
            if self.tty:
                self._redraw()
            elif time.monotonic() - self._last_print >= self.min_interval_s:
                self._last_print = time.monotonic()
                self._write(f"{self._prefix()} {self._timing()}: {self._stage}")

    def finish(self, outcome: str) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self.tty:
                self._redraw(final=outcome)
            else:
                self._write(f"{self._prefix()} {self._timing()}: {outcome}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------------------------------------
# Running


def _check_result(value: Any, size: Size) -> tuple[str | None, list[str]]:
    """An error if ``value`` is not a usable Result, and warnings about rules it breaks."""
    if not isinstance(value, Result):
        return f"run() returned {type(value).__name__}; expected crossfuse.lab.Result", []
    if value.verdict not in lab_result.VERDICTS:
        return f"run() returned verdict {value.verdict!r}; expected one of {list(lab_result.VERDICTS)}", []
    warnings = []
    if size == "smoke" and value.verdict != "inconclusive":
        warnings.append(f"verdict {value.verdict!r} at size 'smoke'; expected 'inconclusive' (too small to judge)")
    if value.size != size:
        warnings.append(f"Result.size is {value.size!r} but the run asked for {size!r}")
    return None, warnings


def _write_figures(result: Result, directory: Path) -> dict[str, str]:
    """Write each figure under a safe, unique file name; map figure name -> path relative to the run dir."""
    written: dict[str, str] = {}
    used: set[str] = set()
    for name, data in result.figures.items():
        base = safe_filename(name)
        stem, dot, ext = base.rpartition(".")
        candidate, k = base, 1
        while candidate in used or candidate == "log.txt":
            k += 1
            candidate = f"{stem}-{k}.{ext}" if dot else f"{base}-{k}"
        used.add(candidate)
        (directory / candidate).write_bytes(bytes(data))
        written[name] = f"{directory.name}/{candidate}"
    return written


def run_experiment(
    name: str,
    size: Size,
    seed: int,
    num_seeds: int | None,
    out: Path,
    display: ProgressDisplay | None = None,
) -> ExperimentRecord:
    """Run one experiment with its stdout/stderr and stages going to ``out/<name>/log.txt``.

    Never raises for the experiment's errors: they are recorded. Ctrl-C is recorded too (``interrupted``).
    """
    directory = out / safe_filename(name)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "log.txt"
    t0 = time.monotonic()
    record = ExperimentRecord(name=name, status="failed", wall_time_s=0.0, log=f"{directory.name}/log.txt")
    with open(log_path, "w", encoding="utf-8", buffering=1) as log:
        log.write(f"experiment {name!r}: size={size} seed={seed} num_seeds={num_seeds} ")
        log.write(f"started {datetime.now().isoformat(timespec='seconds')}\n")

        def progress(text: str) -> None:
            log.write(f"[{time.monotonic() - t0:8.1f}s] stage: {text}\n")
            if display is not None:
                display.stage(text)

        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                value = lab_result.run_experiment(name, size, seed, num_seeds, progress)
            error, record.warnings = _check_result(value, size)
            if error is None:
                record.result, record.status = value, "ok"
                record.figure_files = _write_figures(value, directory)
                json.dumps(jsonable(record.to_json()))  # fails here, not later in results.json
            else:
                record.error = error
        except KeyboardInterrupt:
            record.status, record.result, record.interrupted = "failed", None, True
            record.error, record.traceback = "interrupted by the user", traceback.format_exc()
        except Exception as exc:  # the experiment's own failure: record it, keep going with the others
            record.status, record.result = "failed", None
            record.error = f"{type(exc).__name__}: {exc}"
            record.traceback = traceback.format_exc()
        finally:
            record.wall_time_s = time.monotonic() - t0
            for warning in record.warnings:
                log.write(f"warning: {warning}\n")
            if record.traceback:
                log.write(record.traceback)
            detail = f": {record.error}" if record.error else ""
            log.write(f"{record.status} after {record.wall_time_s:.1f}s{detail}\n")
    return record


def resolve_names(only: str | Sequence[str] | None, argument: str = "only") -> list[str]:
    """Experiment names to run, in registry order for None; ``only`` may be "a,b" or a list.

    ``argument`` names the option the names came from in error messages."""
    known = list(lab_result.EXPERIMENTS)
    if only is None:
        return known
    parts = only.split(",") if isinstance(only, str) else list(only)
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise ValueError(f"{argument}: expected experiment names separated by commas, got {only!r}")
    unknown = [n for n in names if n not in lab_result.EXPERIMENTS]
    if unknown:
        raise ValueError(f"{argument}: unknown experiment(s) {unknown}; expected names from {known}")
    return list(dict.fromkeys(names))


def run_lab(
    names: Sequence[str] | None = None,
    size: Size = "quick",
    seed: int = 0,
    num_seeds: int | None = None,
    out: str | Path | None = None,
    stream: TextIO | None = None,
    tty: bool | None = None,
    on_record: Callable[[LabRun], None] | None = None,
) -> LabRun:
    """Run ``names`` (all experiments when None) in order into a new output directory.

    ``on_record`` is called after each experiment (after ``results.json`` is rewritten). On Ctrl-C the
    run stops, the current experiment is recorded as failed and ``interrupted`` is set.
    """
    if size not in SIZES:
        raise ValueError(f"size: expected one of {list(SIZES)}, got {size!r}")
    if num_seeds is not None and num_seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {num_seeds}")
    names = resolve_names(names)
    directory = new_output_dir(out)
    lab = LabRun(
        out=directory,
        size=size,
        seed=seed,
        num_seeds=num_seeds,
        environment=environment(size, seed, num_seeds),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    display = ProgressDisplay(total=len(names), stream=stream, tty=tty)
    t0 = time.monotonic()
    lab.save()
    for index, name in enumerate(names, start=1):
        display.start(index, name, expected_seconds(name, size))
        record = run_experiment(name, size, seed, num_seeds, directory, display)
        lab.interrupted = record.interrupted
        outcome = record.result.verdict if record.result is not None else f"FAILED: {record.error}"
        display.finish(f"{outcome} ({record.wall_time_s:.1f}s)" if record.status == "ok" else outcome)
        lab.records.append(record)
        lab.wall_time_s = time.monotonic() - t0
        lab.save()
        if on_record is not None:
            on_record(lab)
        if lab.interrupted:
            break
    return lab
