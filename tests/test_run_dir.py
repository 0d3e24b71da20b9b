"""`crossfuse.run_dir`: marker, ownership, symlinks and the lock (library level, no subprocess but one sleeper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossfuse.run_dir import (
    LOCK_FILE,
    MARKER_FILE,
    foreign_files,
    lock_holder,
    prepare_run_dir,
    read_marker,
    release_lock,
)
from snapshots import snapshot


def make_run(path: Path, kind: str = "fusion") -> Path:
    assert prepare_run_dir(path, kind=kind) is False
    release_lock(path)
    (path / "config.json").write_text("{}")
    if kind == "fusion":
        (path / "metrics.jsonl").write_text("{}\n")
        (path / "best").mkdir()
        (path / "best" / "model.safetensors").write_bytes(b"w")
    else:
        (path / "model.safetensors").write_bytes(b"w")
    return path


def test_new_directory_gets_a_marker_and_a_lock_that_is_released(tmp_path: Path) -> None:
    out = tmp_path / "a" / "run"
    assert prepare_run_dir(out) is False
    marker = read_marker(out)
    assert marker is not None and marker["kind"] == "fusion" and len(marker["run_id"]) == 32
    assert int((out / LOCK_FILE).read_text()) == os.getpid()
    release_lock(out)
    assert not (out / LOCK_FILE).exists()
    other = tmp_path / "b"
    prepare_run_dir(other)
    assert read_marker(other)["run_id"] != marker["run_id"]  # a fresh id per run


def test_force_refuses_unmarked_and_foreign_directories_and_changes_nothing(tmp_path: Path) -> None:
    precious = tmp_path / "p"
    (precious / "src").mkdir(parents=True)
    (precious / "config.json").write_text("{}")  # looks like a run by its names (issue 12's first case)
    (precious / "src" / "thesis.tex").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_run_dir(precious)
    with pytest.raises(ValueError, match=r"not created by crossfuse .* not deleting it"):
        prepare_run_dir(precious, force=True)
    run = make_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "best" / "extra.bin").write_bytes(b"z")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"did not write \(best/extra.bin, notes.txt\)"):
        prepare_run_dir(run, force=True)
    assert snapshot(tmp_path) == before


def test_force_empties_an_owned_run_of_the_same_kind_only(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    old_id = read_marker(run)["run_id"]
    assert foreign_files(run, "fusion") == []
    with pytest.raises(ValueError, match="is a crossfuse fusion run, not a captioner run"):
        prepare_run_dir(run, force=True, kind="captioner")
    assert prepare_run_dir(run, force=True) is False
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_FILE, MARKER_FILE])
    assert read_marker(run)["run_id"] != old_id
    release_lock(run)


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    target = make_run(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="is a symbolic link"):
        prepare_run_dir(link, force=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("k")
    (target / "best" / "escape").symlink_to(outside)  # a link inside an owned run
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="best/escape"):
        prepare_run_dir(target, force=True)
    assert snapshot(tmp_path) == before


def test_resume_needs_an_existing_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no run to resume"):
        prepare_run_dir(tmp_path / "missing", resume=True)
    assert not (tmp_path / "missing").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("a")
    with pytest.raises(ValueError, match="not a crossfuse run directory"):
        prepare_run_dir(foreign, resume=True)
    run = make_run(tmp_path / "run")
    assert prepare_run_dir(run, resume=True) is True
    release_lock(run)
    with pytest.raises(ValueError, match="at most one"):
        prepare_run_dir(run, force=True, resume=True)


def test_a_live_lock_keeps_others_out_and_a_dead_one_is_taken_over(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_FILE).write_text(f"{sleeper.pid}\n")
        assert lock_holder(run) == sleeper.pid
        before = snapshot(tmp_path)
        for kwargs in ({"force": True}, {"resume": True}):
            with pytest.raises(ValueError, match=f"in use by process {sleeper.pid}"):
                prepare_run_dir(run, **kwargs)
        assert snapshot(tmp_path) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lock_holder(run) is None  # the process is gone: its lock is stale
    assert prepare_run_dir(run, resume=True) is True
    assert int((run / LOCK_FILE).read_text()) == os.getpid()
    release_lock(run)


def test_marker_must_be_crossfuses(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / MARKER_FILE).write_text(json.dumps({"format": "other/1", "kind": "fusion"}))
    assert read_marker(run) is None
    with pytest.raises(ValueError, match="not created by crossfuse"):
        prepare_run_dir(run, force=True)
