"""Progress lines of a lab run: one experiment at a time (`ProgressDisplay`) or several at once (`ParallelProgress`).

Shapes: no tensors; ``start(index, name, expected_s)``, ``stage(text)`` / ``stage(name, text)``, ``finish(outcome)``.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from typing import TextIO


def format_expected(expected_s: float | None) -> str:
    """``~85s`` or ``unknown``."""
    return f"~{expected_s:.0f}s" if expected_s is not None else "unknown"


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


class ParallelProgress:
    """Plain lines for experiments running at the same time in worker processes, each line naming its experiment.

    Stages of one experiment print at most one line every ``min_interval_s``.
    """

    def __init__(self, total: int, stream: TextIO | None = None, min_interval_s: float = 5.0):
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._running: dict[str, tuple[int, float, float | None]] = {}  # name -> (index, start, expected)
        self._last_print: dict[str, float] = {}

    def _prefix(self, name: str) -> str:
        index, t0, expected = self._running[name]
        return f"[{index}/{self.total}] {name} {time.monotonic() - t0:6.1f}s / {format_expected(expected)}"

    def start(self, index: int, name: str, expected_s: float | None) -> None:
        with self._lock:
            self._running[name] = (index, time.monotonic(), expected_s)
            self._write(f"[{index}/{self.total}] {name}: started (expected {format_expected(expected_s)})")

    def stage(self, name: str, text: str) -> None:
        with self._lock:
            if (
                name not in self._running
                or time.monotonic() - self._last_print.get(name, -math.inf) < self.min_interval_s
            ):
                return
            self._last_print[name] = time.monotonic()
            self._write(f"{self._prefix(name)}: {' '.join(str(text).split())[:200]}")

    def finish(self, name: str, outcome: str) -> None:
        with self._lock:
            if name in self._running:
                self._write(f"{self._prefix(name)}: {outcome}")
                del self._running[name]

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
