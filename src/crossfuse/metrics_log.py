"""The run's ``metrics.jsonl``: one JSON record per line, appended while training, read back on resume.

Records: ``{"kind": "epoch", "epoch": e, "step": s, "lr", "train_loss", "val_*", "time_s"}`` per epoch
and ``{"kind": "step", "step": s, ...}`` per step whose hooks reported values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossfuse.atomic import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (or nowhere for ``path=None``); ``write`` returns the file size."""

    def __init__(self, path: Path | None, append: bool) -> None:
        self.handle = None if path is None else open(path, "a" if append else "w")  # noqa: SIM115 (close())

    def write(self, record: dict[str, Any]) -> int:
        if self.handle is None:
            return 0
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        return self.handle.tell()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def read_metrics(path: Path, size: int, cut: bool) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` within its first ``size`` bytes; with ``cut`` the file is cut there.

    The cut rewrites the kept bytes atomically, so the file never grows (no NUL padding) and a crash
    leaves the old or the cut file.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    kept = data[:size]
    if cut and len(kept) != len(data):
        atomic_write_bytes(path, kept)
    return [json.loads(line) for line in kept.decode().splitlines() if line.strip()]


def iter_metrics(run_dir: Path, kind: str | None = "epoch") -> Iterator[dict[str, Any]]:
    """Records of ``run_dir/metrics.jsonl`` (only those of ``kind`` "epoch" / "step", or all for None)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"run_dir: no {METRICS_FILE} in {run_dir}")
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if kind is None or record.get("kind") == kind:
                yield record
