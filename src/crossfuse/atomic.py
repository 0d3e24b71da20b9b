"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

The data go to a hidden temporary sibling (``.<name>.tmp``), are flushed to disk, and replace the target
with ``os.replace`` (atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> Path:
    """The hidden staging name used for ``path``: ``<dir>/.<name>.tmp``."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (pass it through `crossfuse.embed.jsonable` first for
    strict JSON: Python's ``json`` writes NaN/inf as ``NaN``/``Infinity``)."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")
