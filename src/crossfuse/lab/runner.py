"""Runs lab experiments, one after another or ``jobs`` at a time in worker processes: progress, logs, failures.

An experiment that raises, returns something that is not a `Result`, or whose module is missing is
recorded as failed with its error and traceback; the others still run. Nothing written before is lost:
the output directory is new (timestamped) or an existing empty one.

Layout of an output directory::

    results.json            # every number: environment, and per experiment status, error, Result record
    <name>/log.txt          # the experiment's stdout/stderr, its stages with times, any traceback
    <name>/<figure>.png     # the figures of the Result

``results.json`` is rewritten after each experiment, so an interrupted run keeps what finished. The HTML
report is rendered from it by `crossfuse.viz.html.write_report` (the report layer sits above the lab).

Each experiment is seeded before it starts, so a parallel run gives the results of a serial one. Expected
times (``Plan.expected_s``, measured on `crossfuse.lab.result.REFERENCE_MACHINE`) are scaled by a speed
probe (`crossfuse.lab.speed`); the records and the run's environment live in `crossfuse.lab.records`.

Shapes: no tensors; ``run_lab(names, size, seed, num_seeds, out, jobs)  ->  LabRun`` (records in ``names`` order).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from crossfuse.embed import jsonable
from crossfuse.lab import result as lab_result
from crossfuse.lab.progress import ParallelProgress, ProgressDisplay
from crossfuse.lab.records import (
    RESULTS_FORMAT,
    ExperimentRecord,
    LabRun,
    environment,
    new_output_dir,
    safe_filename,
)
from crossfuse.lab.result import SIZES, Result, Size
from crossfuse.lab.speed import SpeedProbe, speed_factor
from crossfuse.lab.units import unit_workers_set

__all__ = [
    "RESULTS_FORMAT",
    "ExperimentRecord",
    "LabRun",
    "ProgressDisplay",
    "auto_jobs",
    "environment",
    "new_output_dir",
    "resolve_jobs",
    "run_lab",
    "safe_filename",
]


def expected_seconds(name: str, size: Size) -> float | None:
    """Expected duration of ``name`` at ``size`` (its plan's ``expected_s``); None when unknown."""
    try:
        return lab_result.resolve_plan(lab_result.load_experiment(name), size).expected_s
    except (ImportError, AttributeError, ValueError):
        return None


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
    display: ProgressDisplay | Callable[[str], None] | None = None,
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
            if isinstance(display, ProgressDisplay):
                display.stage(text)
            elif display is not None:
                display(text)

        try:
            seed_everything(seed)  # results do not depend on what ran before in this process
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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (before each experiment, in any process)."""
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cpu_times() -> tuple[int, int] | None:
    """(idle + iowait, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def busy_cores(sample_s: float = 0.5) -> float:
    """Cores kept busy by other work now: measured over ``sample_s`` from /proc/stat (the 1-minute load
    average, used where /proc/stat is missing, still counts work that ended seconds ago, e.g. an install)."""
    cores = os.cpu_count() or 1
    first = _cpu_times()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0.0
    idle = (second[0] - first[0]) / (second[1] - first[1])
    return max(0.0, 1.0 - idle) * cores


def auto_jobs(cores: int | None = None, load: float | None = None) -> int:
    """Experiments to run at once: up to 2, one per core left idle by other work (`busy_cores`), at least 1."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = busy_cores()
    return max(1, min(2, cores, round(cores - load)))


def resolve_jobs(jobs: int | str) -> int:
    """``jobs`` as a count: an int >= 1, or "auto": `auto_jobs` divided by this process's torch threads (each
    process uses that many), at least 1."""
    if jobs == "auto":
        import torch

        return max(1, auto_jobs() // torch.get_num_threads())
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1 or 'auto', got {jobs!r}")
    return jobs


def resolve_names(only: str | Sequence[str] | None, argument: str = "only") -> list[str]:
    """Experiment names to run, in registry order for None; ``only`` may be "a,b" or a list.

    ``argument`` names the argument the names came from in error messages."""
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
    jobs: int | str = 1,
    speed: SpeedProbe | None = None,
) -> LabRun:
    """Run ``names`` (all experiments when None) into a new output directory, ``jobs`` at a time.

    ``jobs`` > 1 (or "auto", see `auto_jobs`) runs experiments in spawned worker processes with this
    process's torch threads each (experiments built at run time, which a worker cannot import, run here);
    when experiments run one at a time (a single name), ``jobs`` processes run the independent units of
    each (`crossfuse.lab.units`). Every experiment and unit seeds itself, so the results equal a ``jobs=1``
    run; records stay in ``names`` order. Expected times are ``Plan.expected_s`` scaled by ``speed`` (measured by
    `speed_factor` when None). ``on_record`` is called after each experiment (after ``results.json`` is
    rewritten). On Ctrl-C the run stops, unfinished experiments are recorded as failed, ``interrupted`` is set.
    """
    if size not in SIZES:
        raise ValueError(f"size: expected one of {list(SIZES)}, got {size!r}")
    if num_seeds is not None and num_seeds < 1:
        raise ValueError(f"num_seeds: expected an integer >= 1, got {num_seeds}")
    count = resolve_jobs(jobs)
    names = resolve_names(names, "names")
    directory = new_output_dir(out)
    speed = speed if speed is not None else speed_factor()
    lab = LabRun(
        out=directory,
        size=size,
        seed=seed,
        num_seeds=num_seeds,
        environment=environment(size, seed, num_seeds, count, speed),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    expected = {name: speed.scale(expected_seconds(name, size)) for name in names}
    t0 = time.monotonic()
    lab.save()

    def add(record: ExperimentRecord) -> None:
        lab.records.append(record)
        lab.records.sort(key=lambda r: names.index(r.name))
        lab.interrupted = lab.interrupted or record.interrupted
        lab.wall_time_s = time.monotonic() - t0
        lab.save()
        if on_record is not None:
            on_record(lab)

    if count == 1 or len(names) == 1 or not all(_importable(lab_result.EXPERIMENTS[n]) for n in names):
        display = ProgressDisplay(total=len(names), stream=stream, tty=tty)
        with unit_workers_set(count):  # one experiment at a time: its independent units may use the cores
            for index, name in enumerate(names, start=1):
                display.start(index, name, expected[name])
                record = run_experiment(name, size, seed, num_seeds, directory, display)
                display.finish(_outcome(record))
                add(record)
                if lab.interrupted:
                    break
        return lab
    _run_parallel(names, min(count, len(names)), size, seed, num_seeds, directory, expected, stream, add)
    return lab


def _outcome(record: ExperimentRecord) -> str:
    if record.status == "ok" and record.result is not None:
        return f"{record.result.verdict} ({record.wall_time_s:.1f}s)"
    return f"FAILED: {record.error}"


def _importable(module: str) -> bool:
    """False for a module that exists only in this process (built at run time), which a worker cannot import."""
    try:
        return sys.modules[module].__spec__ is not None if module in sys.modules else True
    except AttributeError:
        return False


def _worker(
    name: str,
    registry: dict[str, str],
    size: Size,
    seed: int,
    num_seeds: int | None,
    out: Path,
    stages: Any,
    threads: int,
) -> ExperimentRecord:
    """Runs in a spawned process: the parent's torch threads and experiment registry, stages sent to ``stages``."""
    import torch

    torch.set_num_threads(threads)
    lab_result.EXPERIMENTS = registry
    return run_experiment(name, size, seed, num_seeds, out, lambda text: stages.put((name, text)))


def _run_parallel(
    names: list[str],
    count: int,
    size: Size,
    seed: int,
    num_seeds: int | None,
    directory: Path,
    expected: dict[str, float | None],
    stream: TextIO | None,
    add: Callable[[ExperimentRecord], None],
) -> None:
    """Run ``names`` ``count`` at a time in spawned processes; each finished record goes to ``add``."""
    import torch

    display = ParallelProgress(total=len(names), stream=stream)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    registry = {name: lab_result.EXPERIMENTS[name] for name in names}
    threads = torch.get_num_threads()
    with context.Manager() as manager, ProcessPoolExecutor(count, mp_context=context) as pool:
        stages = manager.Queue()
        pending = list(enumerate(names, start=1))
        running: dict[Future, tuple[str, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < count:
                    index, name = pending.pop(0)
                    display.start(index, name, expected[name])
                    future = pool.submit(_worker, name, registry, size, seed, num_seeds, directory, stages, threads)
                    running[future] = (name, time.monotonic())
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                while not stages.empty():
                    display.stage(*stages.get())
                for future in done:
                    name, started = running.pop(future)
                    try:
                        record = future.result()
                    except Exception as exc:  # the worker process itself died (killed, out of memory)
                        record = ExperimentRecord(name, "failed", time.monotonic() - started, error=f"worker: {exc!r}")
                    display.finish(name, _outcome(record))
                    add(record)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            for name, started in [*running.values(), *((n, time.monotonic()) for _, n in pending)]:
                record = ExperimentRecord(name, "failed", time.monotonic() - started, error="interrupted by the user")
                record.interrupted = True
                add(record)
