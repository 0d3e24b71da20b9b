"""Independent units of one experiment (a trained row, a seed, a depth point), run on idle cores.

An experiment whose units are independent hands them to `run_units`. With one worker they run here, one
after another; with more, in spawned worker processes (each with this process's torch threads), and the
results come back in unit order. Every unit seeds itself (`crossfuse.train.fit`, `train_captioner`), so
the results equal a one-worker run (tests/test_lab_units.py checks it on six experiments).

The lab's runner sets the worker count (`set_unit_workers`): its resolved ``--jobs`` when experiments run
one at a time (``crossfuse lab run NAME`` on an idle 2-core machine: 2), 1 inside a parallel run's
experiment workers, whose cores are already taken. A unit's printed output goes to this process's
stdout (the experiment's log), its progress lines to the experiment's progress. Ctrl-C or a unit's error
stops the workers (they leave SIGINT to this process).

Shapes: no tensors; ``run_units(fn, units, progress)  ->  [fn(*unit, say) for unit in units]``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import queue
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
_workers = 1


def unit_workers() -> int:
    """Processes `run_units` may use now (1: run here)."""
    return _workers


def set_unit_workers(count: int) -> None:
    """Let `run_units` use ``count`` processes (>= 1)."""
    global _workers
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected an integer >= 1, got {count!r}")
    _workers = count


@contextlib.contextmanager
def unit_workers_set(count: int) -> Iterator[None]:
    """`set_unit_workers` for the duration of a ``with`` block, then the previous count again."""
    previous = _workers
    set_unit_workers(count)
    try:
        yield
    finally:
        set_unit_workers(previous)


def importable(fn: Callable) -> bool:
    """Whether a spawned process can import ``fn`` by name: a module-level function of a module on disk."""
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    qualname = getattr(fn, "__qualname__", "")
    return (
        module is not None
        and getattr(module, "__spec__", None) is not None
        and "<" not in qualname  # lambdas and functions defined inside functions
        and getattr(module, qualname, None) is fn
    )


_caches: list[Any] = []  # every `unit_cache`, emptied when `run_units` returns


def unit_cache(fn: Callable[..., T]) -> Callable[..., T]:
    """Keep ``fn``'s last result for the next unit in the same process (e.g. the seed's data, which several
    units share); `run_units` empties it when it returns, so the experiment's process does not keep it."""
    cached = functools.lru_cache(maxsize=1)(fn)
    _caches.append(cached)
    return cached


_stages: Any = None  # a worker's queue of (unit index, progress text), set by `_start_worker`


def _start_worker(stages: Any, threads: int) -> None:
    """Runs once in each worker: the parent's torch threads, the progress queue, and Ctrl-C left to the parent
    (which stops the workers), so an interrupt does not print a traceback per worker."""
    global _stages
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _stages = stages


def _call(fn: Callable[..., T], args: tuple, index: int) -> tuple[T, str]:
    """Runs in a worker: ``fn(*args, say)`` with its output captured and its progress sent to the parent."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        value = fn(*args, lambda text: _stages.put((index, str(text))))
    return value, printed.getvalue()


def _forward(stages: Any, progress: Callable[[str], None]) -> None:
    """Hand the progress lines the workers sent so far to ``progress``."""
    while True:
        try:
            progress(stages.get_nowait()[1])
        except queue.Empty:
            return


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the units not started and terminate the workers (Ctrl-C, or a unit's error)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def run_units(
    fn: Callable[..., T],
    units: Sequence[tuple],
    progress: Callable[[str], None],
    workers: int | None = None,
) -> list[T]:
    """``[fn(*unit, progress) for unit in units]``, on up to ``workers`` processes (`unit_workers` when None).

    ``fn`` takes a unit's arguments and then a progress callable; to run in another process it must be a
    module-level function (else the units run here) and its arguments and result picklable. Units start
    in the order given: put the longest first. A unit's exception is raised here and stops the other units;
    so does Ctrl-C.
    """
    units = list(units)
    count = min(unit_workers() if workers is None else workers, len(units))
    try:
        if count <= 1 or not importable(fn):
            return [fn(*args, progress) for args in units]
        return _run_in_workers(fn, units, progress, count)
    finally:
        for cache in _caches:
            cache.cache_clear()


def _run_in_workers(fn: Callable[..., T], units: list[tuple], progress: Callable[[str], None], count: int) -> list[T]:
    """`run_units` on ``count`` spawned worker processes."""
    import torch

    results: list[Any] = [None] * len(units)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    stages = context.Queue()
    pool = ProcessPoolExecutor(
        count, mp_context=context, initializer=_start_worker, initargs=(stages, torch.get_num_threads())
    )
    try:
        futures = {pool.submit(_call, fn, args, i): i for i, args in enumerate(units)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _forward(stages, progress)
            for future in done:
                value, printed = future.result()
                sys.stdout.write(printed)
                results[futures[future]] = value
        _forward(stages, progress)
    except BaseException:
        _stop(pool)
        raise
    finally:
        pool.shutdown(wait=True)
        stages.close()
    return results
