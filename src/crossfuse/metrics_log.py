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


def check_tensorboard() -> None:
    """ValueError saying how to install TensorBoard when ``torch.utils.tensorboard`` cannot be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"config.tensorboard: needs the tensorboard package ({error}); pip install 'crossfuse[tensorboard]'"
        ) from None


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (or nowhere for ``path=None``); ``write`` returns the file size.

    With ``tensorboard`` every numeric value of every record also goes to TensorBoard event files in the
    same directory: epoch records as ``epoch/<key>`` and step records as ``step/<key>``, at the record's
    ``step`` (the optimisation steps done).
    """

    def __init__(self, path: Path | None, append: bool, tensorboard: bool = False) -> None:
        self.handle = None if path is None else open(path, "a" if append else "w")  # noqa: SIM115 (close())
        self.writer = None
        if tensorboard and path is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(path.parent))

    def write(self, record: dict[str, Any]) -> int:
        if self.handle is None:
            return 0
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.writer is not None:
            kind, step = record.get("kind", "epoch"), int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)
            self.writer.flush()
        return self.handle.tell()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
