"""Byte-level snapshots of a directory tree, to assert that a failing command changed nothing on disk."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root``: file bytes, symlink target ("-> target"), or "<dir>" for a directory."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = f"-> {os.readlink(path)}" if path.is_symlink() else "<dir>" if path.is_dir() else path.read_bytes()
    return out
