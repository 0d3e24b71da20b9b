"""An experiment's independent units on idle cores: the results of a serial run, in unit order."""

import io
import os
import time

import pytest

from crossfuse.lab import units
from crossfuse.lab.result import run_experiment
from crossfuse.lab.runner import run_lab
from fake_units import draw, fail, fail_or_sleep

pytestmark = pytest.mark.usefixtures("one_thread")


def test_worker_count_is_checked_and_restored() -> None:
    assert units.unit_workers() == 1
    with units.unit_workers_set(2):
        assert units.unit_workers() == 2
    assert units.unit_workers() == 1
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="count: expected an integer >= 1"):
            units.set_unit_workers(bad)


def test_one_worker_runs_here_in_order() -> None:
    stages: list[str] = []
    results = units.run_units(draw, [(3, 2), (1, 4)], stages.append, workers=1)
    assert [len(r[0]) for r in results] == [2, 4] and {r[1] for r in results} == {os.getpid()}
    assert stages == ["drawing 2 with seed 3", "drawing 4 with seed 1"]


def test_only_module_level_functions_go_to_workers() -> None:
    assert units.importable(draw) and units.importable(units.run_units)
    assert not units.importable(lambda x: x)

    def local(x, say):
        return x, os.getpid()

    assert not units.importable(local)
    assert units.run_units(local, [(1,), (2,)], lambda _: None, workers=2) == [(1, os.getpid()), (2, os.getpid())]


@pytest.mark.slow
def test_workers_give_the_serial_results_in_unit_order(capsys) -> None:
    args = [(seed, 3) for seed in (5, 0, 7, 2)]
    serial = units.run_units(draw, args, lambda _: None, workers=1)
    stages: list[str] = []
    parallel = units.run_units(draw, args, stages.append, workers=2)
    assert [r[0] for r in parallel] == [r[0] for r in serial]
    assert {r[1] for r in parallel}.isdisjoint({os.getpid()})  # they ran elsewhere
    assert sorted(stages) == sorted(f"drawing 3 with seed {s}" for s, _ in args)
    printed = capsys.readouterr().out
    assert all(f"printed by unit {s}" in printed for s, _ in args)


@pytest.mark.slow
def test_a_units_error_is_raised_here_and_stops_the_others() -> None:
    with pytest.raises(ValueError, match="unit two failed"):
        units.run_units(fail, [("unit two failed",)] * 2, lambda _: None, workers=2)
    started = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        units.run_units(fail_or_sleep, [("sleep", 60.0), ("fail", "boom")], lambda _: None, workers=2)
    assert time.monotonic() - started < 30  # the sleeping unit was terminated, not waited for


@pytest.mark.slow
@pytest.mark.parametrize("name", ["report", "gradient_highway", "binding", "jitter", "dominance", "needle"])
def test_experiments_give_the_same_result_on_two_workers(name: str) -> None:
    seeds = 2 if name == "needle" else None  # needle's unit is a seed
    serial = run_experiment(name, "smoke", 1, seeds)
    with units.unit_workers_set(2):
        parallel = run_experiment(name, "smoke", 1, seeds)
    timing = {"cpu_s", "train_time_s"}  # CPU and wall seconds: measured, not results
    same = repr  # NaN == NaN as text
    assert same({k: v for k, v in parallel.raw.items() if k not in timing}) == same(
        {k: v for k, v in serial.raw.items() if k not in timing}
    )
    assert same(untimed(parallel.tables)) == same(untimed(serial.tables)) and parallel.measured == serial.measured


def untimed(tables: list) -> list:
    """Each table's title and rows without its time columns (binding's "train time (s)")."""
    keep = [[i for i, c in enumerate(t.columns) if "time" not in c] for t in tables]
    return [(t.title, [[row[i] for i in k] for row in t.rows]) for t, k in zip(tables, keep, strict=True)]


def test_the_runner_lends_its_jobs_to_a_single_experiment(tmp_path, monkeypatch) -> None:
    seen: list[int] = []

    def fake(name, size, seed, num_seeds, progress):  # records the worker count the experiment sees
        seen.append(units.unit_workers())
        raise RuntimeError("stop here")

    monkeypatch.setattr("crossfuse.lab.result.run_experiment", fake)
    run_lab(["report"], "smoke", out=tmp_path / "one", jobs=2, stream=io.StringIO())
    assert seen == [2] and units.unit_workers() == 1
