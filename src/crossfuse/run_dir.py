"""Run directories that crossfuse owns: a marker, a lock, and ``force`` that deletes only its own files.

When crossfuse creates a run directory it writes ``.crossfuse-run.json``
(``{"format": "crossfuse-run-dir/1", "run_id": ..., "kind": "fusion" | "captioner"}``). `prepare_run_dir`
with ``force=True`` empties a directory only when that marker names the same kind and every file in it
is one that crossfuse writes for that kind; otherwise it refuses and names the foreign files. It never
follows a symbolic link: a linked directory, or a link inside one, is refused. A lock file
``.crossfuse.lock`` holding the PID keeps a second process out of a run in progress; a lock left by a
process that no longer exists is taken over. All checks happen before anything on disk changes.

Shapes: no tensors; paths and JSON only.
"""

from __future__ import annotations

import atexit
import fnmatch
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

MARKER_FILE = ".crossfuse-run.json"
LOCK_FILE = ".crossfuse.lock"
MARKER_FORMAT = "crossfuse-run-dir/1"
_CHECKPOINT_FILES = ("model.safetensors", "training_state.json", "training_state.safetensors", ".*.tmp")
# kind -> {top-level name pattern: None (a file) or the patterns allowed inside that directory}
KINDS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "fusion": {
        "config.json": None,
        "metrics.jsonl": None,
        "curves.png": None,
        "best": _CHECKPOINT_FILES,
        "last": _CHECKPOINT_FILES,
        ".best.tmp": _CHECKPOINT_FILES,
        ".best.old": _CHECKPOINT_FILES,
        ".last.tmp": _CHECKPOINT_FILES,
        ".last.old": _CHECKPOINT_FILES,
        "events.out.tfevents.*": None,  # --tensorboard writes its event files beside metrics.jsonl
    },
    "captioner": {
        "config.json": None,
        "model.safetensors": None,
        "samples": ("study_*.png", "study_*.txt"),
        "heatmaps": ("*.png",),
    },
}
_ALWAYS = {MARKER_FILE: None, LOCK_FILE: None, ".*.tmp": None}
_HELD: set[Path] = set()


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of run directory ``path``, or None when it has none (or an unreadable one)."""
    marker = Path(path) / MARKER_FILE
    try:
        record = json.loads(marker.read_text()) if marker.is_file() and not marker.is_symlink() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != MARKER_FORMAT or record.get("kind") not in KINDS:
        return None
    return record


def write_marker(path: Path, kind: str) -> dict[str, Any]:
    """Mark ``path`` as a crossfuse run directory of ``kind``; returns the marker record."""
    record = {"format": MARKER_FORMAT, "run_id": uuid.uuid4().hex, "kind": kind}
    (Path(path) / MARKER_FILE).write_text(json.dumps(record) + "\n")
    return record


def _match(name: str, patterns: dict[str, Any] | tuple[str, ...]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def foreign_files(path: Path, kind: str) -> list[str]:
    """Paths (relative to ``path``) that crossfuse does not write for a run of ``kind``; links are foreign."""
    allowed = {**KINDS[kind], **_ALWAYS}
    foreign: list[str] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        pattern = _match(entry.name, allowed)
        inner = allowed.get(pattern) if pattern is not None else None
        if entry.is_symlink() or pattern is None or (inner is None) != entry.is_file(follow_symlinks=False):
            foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
            continue
        if inner is not None:
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if sub.is_symlink() or not sub.is_file(follow_symlinks=False) or _match(sub.name, inner) is None:
                    foreign.append(f"{entry.name}/{sub.name}")
    return foreign


def lock_holder(path: Path) -> int | None:
    """PID of a live process (not this one) holding the lock of ``path``, or None."""
    try:
        pid = int((Path(path) / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        return pid
    return pid


def _release(path: Path) -> None:
    lock = path / LOCK_FILE
    try:
        if int(lock.read_text().strip()) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass
    _HELD.discard(path)


def acquire_lock(path: Path) -> None:
    """Write this process's PID into ``path``'s lock (taking over a dead process's); released at exit."""
    path = Path(path)
    holder = lock_holder(path)
    if holder is not None:
        raise ValueError(f"out: {path} is in use by process {holder} (lock {path / LOCK_FILE}); wait for it to finish")
    staging = path / f".{LOCK_FILE}.{os.getpid()}.tmp"
    staging.write_text(f"{os.getpid()}\n")
    os.replace(staging, path / LOCK_FILE)
    if not _HELD:
        atexit.register(release_all)
    _HELD.add(path)


def release_lock(path: Path) -> None:
    """Remove ``path``'s lock if this process holds it."""
    _release(Path(path))


def release_all() -> None:
    """Remove every lock this process holds (the end of a command; also run at interpreter exit)."""
    for path in list(_HELD):
        _release(path)


def _empty_children(path: Path) -> None:
    """Delete everything in ``path`` except the lock; never follows links (checked before)."""
    for entry in os.scandir(path):
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def prepare_run_dir(path: Path, force: bool = False, resume: bool = False, kind: str = "fusion") -> bool:
    """Create (or, with ``force``, empty) the run directory ``path`` and lock it; True when resuming.

    ``force`` empties a directory only if its marker says it is a crossfuse run of ``kind`` and it holds
    nothing foreign; ``resume`` needs an existing run of ``kind``. ValueError / FileExistsError naming
    ``out`` (and nothing on disk changed) otherwise.
    """
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    if force and resume:
        raise ValueError("force and resume: expected at most one of them, got both")
    if path.is_symlink():
        raise ValueError(f"out: {path} is a symbolic link; crossfuse writes a run only into a real directory")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"out: {path} exists and is not a directory")
    existing = path.is_dir() and any(e.name != LOCK_FILE for e in os.scandir(path))
    marker = read_marker(path) if existing else None
    if marker is not None and marker["kind"] != kind:
        raise ValueError(f"out: {path} is a crossfuse {marker['kind']} run, not a {kind} run; not touching it")
    if resume:
        if not existing:
            raise FileNotFoundError(f"out: {path} holds no run to resume; drop resume (--resume) to start a new one")
        if marker is None and not (path / "config.json").is_file():
            raise ValueError(f"out: {path} is not a crossfuse run directory (no {MARKER_FILE}); cannot resume it")
        acquire_lock(path)
        return True
    if existing:
        if not force:
            raise FileExistsError(
                f"out: {path} already exists; start over with force (--force) or continue it with resume (--resume)"
            )
        if marker is None:
            raise ValueError(
                f"out: {path} was not created by crossfuse (no {MARKER_FILE}); not deleting it, remove it yourself"
            )
        foreign = foreign_files(path, kind)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(f"out: {path} holds files crossfuse did not write ({shown}); not deleting it")
    holder = lock_holder(path) if path.is_dir() else None
    if holder is not None:
        raise ValueError(f"out: {path} is in use by process {holder} (lock {path / LOCK_FILE}); wait for it to finish")
    path.mkdir(parents=True, exist_ok=True)
    acquire_lock(path)
    if existing:
        _empty_children(path)
    write_marker(path, kind)
    return False
