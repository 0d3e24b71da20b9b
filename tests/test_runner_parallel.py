"""Parallel lab runs (``run_lab(jobs=...)``), the jobs choice and the speed probe that scales expected times."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
import torch

from crossfuse import cli
from crossfuse.lab import runner
from crossfuse.lab.runner import auto_jobs, resolve_jobs, run_lab
from crossfuse.lab.speed import FACTOR_RANGE, REFERENCE_STEP_MS, speed_factor
from fake_experiments import install, run_ok

SEEDED = "fake_seeded_experiment"
FIXED_SPEED = speed_factor(step_ms=2 * REFERENCE_STEP_MS)  # factor 2, no probe run in tests


def _draws(out) -> dict[str, dict]:
    record = json.loads((out / "results.json").read_text())
    return {e["name"]: e["result"]["raw"] for e in record["experiments"]}


def test_two_jobs_give_the_results_of_one_job_in_order(tmp_path, monkeypatch) -> None:
    install(monkeypatch, {"a": SEEDED, "b": SEEDED, "c": SEEDED})
    one = run_lab(size="smoke", seed=3, out=tmp_path / "one", jobs=1, speed=FIXED_SPEED, stream=io.StringIO())
    stream = io.StringIO()
    two = run_lab(size="smoke", seed=3, out=tmp_path / "two", jobs=2, speed=FIXED_SPEED, stream=stream)
    assert [r.name for r in two.records] == ["a", "b", "c"] and not two.failed
    serial, parallel = _draws(tmp_path / "one"), _draws(tmp_path / "two")
    assert {n: r["draws"] for n, r in serial.items()} == {n: r["draws"] for n, r in parallel.items()}
    assert serial["a"]["draws"] == serial["b"]["draws"]  # seeded before each, not once per process
    assert all(r["pid"] == os.getpid() for r in serial.values())
    assert all(r["pid"] != os.getpid() for r in parallel.values())  # ran in workers
    assert {r["threads"] for r in parallel.values()} == {torch.get_num_threads()}  # the parent's threads
    printed = stream.getvalue()
    assert "[1/3] a: started (expected ~2s)" in printed  # expected_s 1.0 scaled by the factor 2
    assert "b" in printed and "inconclusive" in printed
    env = json.loads((tmp_path / "two" / "results.json").read_text())["environment"]
    assert env["jobs"] == 2 and env["speed_probe"]["factor"] == pytest.approx(2.0)
    assert one.environment["jobs"] == 1


def test_experiments_built_at_run_time_run_in_process(tmp_path, monkeypatch) -> None:
    install(monkeypatch, {"ok": run_ok, "also": run_ok})  # modules only in this process's sys.modules
    lab = run_lab(size="smoke", out=tmp_path / "o", jobs=2, speed=FIXED_SPEED, stream=io.StringIO())
    assert [r.status for r in lab.records] == ["ok", "ok"]


@pytest.mark.parametrize(
    ("cores", "load", "expected"), [(2, 0.0, 2), (2, 0.4, 2), (2, 1.2, 1), (2, 3.9, 1), (1, 0.0, 1), (16, 2.0, 2)]
)
def test_auto_jobs_uses_idle_cores_up_to_two(cores: int, load: float, expected: int) -> None:
    assert auto_jobs(cores, load) == expected


@pytest.mark.parametrize(("idle_jobs", "threads", "expected"), [(2, 1, 2), (2, 2, 1), (1, 4, 1)])
def test_auto_jobs_leave_room_for_each_process_threads(monkeypatch, idle_jobs, threads, expected) -> None:
    """With --threads 2 on two idle cores, one process at a time (2 x 2 threads would oversubscribe)."""
    monkeypatch.setattr(runner, "auto_jobs", lambda: idle_jobs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert resolve_jobs("auto") == expected
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("jobs", [0, -1, "two", 1.5, True])
def test_bad_jobs_name_the_argument(jobs) -> None:
    with pytest.raises(ValueError, match=r"^jobs: expected an integer >= 1 or 'auto', got"):
        resolve_jobs(jobs)


def test_cli_jobs_errors_name_the_flag(tmp_path, monkeypatch, capsys) -> None:
    install(monkeypatch, {"ok": run_ok})
    assert cli.main(["lab", "--size", "smoke", "--jobs", "x", "--out", str(tmp_path / "a")]) == 2
    assert cli.main(["lab", "--size", "smoke", "--jobs", "0", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("--jobs:" in line for line in err)


def test_speed_factor_scales_and_clips() -> None:
    assert speed_factor(step_ms=REFERENCE_STEP_MS).factor == pytest.approx(1.0)
    assert speed_factor(step_ms=3 * REFERENCE_STEP_MS).scale(10.0) == pytest.approx(30.0)
    assert speed_factor(step_ms=1e6).factor == FACTOR_RANGE[1]
    assert speed_factor(step_ms=1e-6).factor == FACTOR_RANGE[0]
    with pytest.raises(ValueError, match="step_ms"):
        speed_factor(step_ms=0.0)
    measured = runner.speed_factor()  # the real probe: a positive time, a factor in range
    assert measured.step_ms > 0 and FACTOR_RANGE[0] <= measured.factor <= FACTOR_RANGE[1]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="busy_cores samples /proc/stat (Linux)")
def test_busy_cores_sees_a_spinning_process() -> None:
    """`auto_jobs` judges idleness from a short /proc/stat sample, not the 1-minute load average."""
    import subprocess
    import sys

    from crossfuse.lab.runner import busy_cores

    assert 0.0 <= busy_cores(0.2) <= (os.cpu_count() or 1)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()
