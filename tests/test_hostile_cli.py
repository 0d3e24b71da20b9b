"""Issue 12's hostile inputs to the `crossfuse` command, each run as a user would (a subprocess).

Every case asserts one line on stderr, the exit status, and that every file that existed before the
command is byte-identical afterwards (and nothing was added). Subprocesses are few (each pays ~2 s
of imports); one real run is trained once, in-process, and copied where a case needs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crossfuse.cli import main
from crossfuse.run_dir import LOCK_FILE
from snapshots import snapshot

SMALL = ["--epochs", "1", "--batch-size", "32", "--dim", "8", "--heads", "2", "--layers", "1", "--quiet"]
pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "crossfuse.cli", *args], capture_output=True, text=True, timeout=300, env=environ
    )


def assert_refused(run: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == code, run.stderr
    assert len(lines) == 1 and lines[0].startswith("crossfuse: error: ") and "Traceback" not in run.stderr, run.stderr
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good.npz and one finished fusion run (trained in-process)."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    n = 60
    a, b = rng.normal(size=(n, 4, 3)).astype(np.float32), rng.normal(size=(n, 2, 2)).astype(np.float32)
    np.savez(root / "good.npz", a=a, b=b, y=(a[:, :, 0].mean(1) > 0).astype(np.int64))
    np.savez(root / "empty.npz", a=a[:0], b=b[:0])
    assert main(["train", "--data", str(root / "good.npz"), "--out", str(root / "run"), *SMALL]) == 0
    assert not (root / "run" / LOCK_FILE).exists()  # released when the command returns, not only at exit
    return root


def copy_run(world: Path, tmp_path: Path) -> Path:
    run = tmp_path / "existing_run"
    shutil.copytree(world / "run", run, symlinks=True)
    return run


def test_force_never_deletes_a_directory_that_only_looks_like_a_run(world: Path, tmp_path: Path) -> None:
    p = tmp_path / "p"
    (p / "src").mkdir(parents=True)
    (p / "config.json").write_text("{}")
    (p / "src" / "thesis.tex").write_text("x")
    before = snapshot(tmp_path)
    run = cli("train", "--data", str(world / "good.npz"), "--out", str(p), "--force", *SMALL)
    assert_refused(run, "--out:", "not created by crossfuse", "not deleting it")
    assert snapshot(tmp_path) == before


def test_force_with_a_bad_option_leaves_the_old_run_intact(world: Path, tmp_path: Path) -> None:
    existing = copy_run(world, tmp_path)
    before = snapshot(tmp_path)
    base = ["train", "--data", str(world / "good.npz"), "--out", str(existing), "--force", *SMALL]
    assert_refused(cli(*base, "--batch-size", "0"), "--batch-size:", "got 0")
    assert_refused(cli(*base, "--checkpoint-every", "0"), "--checkpoint-every:")
    assert_refused(cli(*base, env={"WORLD_SIZE": "2"}), "RANK:", "WORLD_SIZE=2")
    if not torch.cuda.is_available():
        assert_refused(cli(*base, "--device", "cuda"), "--device:", "no CUDA GPU")
    assert snapshot(tmp_path) == before


def test_caption_train_force_into_a_fusion_run_is_refused(world: Path, tmp_path: Path) -> None:
    existing = copy_run(world, tmp_path)
    before = snapshot(tmp_path)
    run = cli("caption-train", "--out", str(existing), "--force", "--size", "smoke")
    assert_refused(run, "--out:", "is a crossfuse fusion run, not a captioner run")
    assert snapshot(tmp_path) == before


def test_symlinked_out_and_foreign_files_are_not_followed_or_deleted(world: Path, tmp_path: Path) -> None:
    existing = copy_run(world, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(existing)
    (existing / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for out, needle in ((link, "is a symbolic link"), (existing, "did not write (notes.txt)")):
        run = cli("train", "--data", str(world / "good.npz"), "--out", str(out), "--force", *SMALL)
        assert_refused(run, "--out:", needle)
    assert snapshot(tmp_path) == before


def test_a_second_writer_is_kept_out_while_the_first_lives(world: Path, tmp_path: Path) -> None:
    existing = copy_run(world, tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (existing / LOCK_FILE).write_text(f"{sleeper.pid}\n")
        before = snapshot(tmp_path)
        run = cli("train", "--data", str(world / "good.npz"), "--out", str(existing), "--resume", *SMALL)
        assert_refused(run, "--out:", f"in use by process {sleeper.pid}")
        assert snapshot(tmp_path) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_unclear_errors_become_one_line(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """In-process (same code path as the command, no extra subprocesses); nothing on disk changes."""
    existing = copy_run(world, tmp_path)
    (tmp_path / "taken.csv").write_text("keep")
    (tmp_path / "a_dir").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    before = snapshot(tmp_path)
    good = str(world / "good.npz")
    cases = [
        (
            ["train", "--data", good, "--out", str(tmp_path / "missing"), "--resume", *SMALL],
            "--out:",
            "no run to resume",
        ),
        (["train", "--data", good, "--out", str(tmp_path / "r0"), "--epochs", "0"], "--epochs:", ">= 1"),
        (["predict", "--run", str(existing), "--data", good, "--out", str(tmp_path / "a_dir")], "--out:", "directory"),
        (
            ["predict", "--run", str(existing), "--data", str(world / "empty.npz"), "--out", str(tmp_path / "e.csv")],
            "--data:",
            "0 rows",
        ),
        (["compare", "--data", good, "--out", str(tmp_path / "taken.csv"), *SMALL[:-1]], "--out:", "not a directory"),
    ]
    for config_text, needle in (("[]", "holds a JSON list"), ('{"format": "crossfuse-run/1"}', "lacks the section")):
        (broken / "config.json").write_text(config_text)
        assert main(["evaluate", "--run", str(broken)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--run:" in err and needle in err, err
    (broken / "config.json").unlink()
    nan_run, cut_run = tmp_path / "nan_run", tmp_path / "cut_run"
    for run in (nan_run, cut_run):
        shutil.copytree(existing, run)
    weights = load_file(str(nan_run / "best" / "model.safetensors"))
    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in weights.items()}, str(nan_run / "best" / "model.safetensors")
    )
    model_file = cut_run / "best" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    cases += [
        (["evaluate", "--run", str(nan_run)], "checkpoint: ", "NaN/Inf value(s)", "diverged"),
        (["evaluate", "--run", str(cut_run)], "model.safetensors"),
    ]
    before = snapshot(tmp_path)
    for argv, *needles in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("crossfuse: error: "), err
        assert all(n in err for n in needles), err
    assert snapshot(tmp_path) == before
