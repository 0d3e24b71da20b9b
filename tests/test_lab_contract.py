"""The experiment protocol, checked once for every registered experiment (see `crossfuse.lab.result`)."""

from __future__ import annotations

import dataclasses

import pytest

from crossfuse.lab import EXPERIMENTS, SIZES, load_experiment
from crossfuse.lab.common import mean_std, verdict
from crossfuse.lab.result import VERDICTS, Result, resolve_seeds, run_experiment


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_module_declares_the_protocol(name: str) -> None:
    module = load_experiment(name)
    for field in ("CLAIM", "PRECONDITION", "CRITERION"):
        text = getattr(module, field)
        assert isinstance(text, str) and len(text) > 40, f"{name}.{field} must state the {field.lower()} in words"
    assert list(module.PLANS) == list(SIZES)
    for size, plan in module.PLANS.items():
        assert type(plan).__name__ == "Plan" and dataclasses.is_dataclass(plan)
        assert dataclasses.fields(plan)[0].name == "seeds" and plan.seeds >= 1
        assert plan.expected_s is None or plan.expected_s > 0
        assert plan.judged == (size != "smoke")
        with pytest.raises(dataclasses.FrozenInstanceError):
            plan.seeds = 99  # type: ignore[misc]
    assert module.PLANS["quick"].expected_s is not None  # the progress line announces it


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_unknown_size_is_refused_before_any_work(name: str) -> None:
    with pytest.raises(ValueError, match=r"size: expected one of \['smoke', 'quick', 'full'\], got 'huge'"):
        run_experiment(name, "huge")  # type: ignore[arg-type]


def test_seeds_count_up_from_the_first() -> None:
    class Plan:
        seeds, expected_s = 3, 1.0

    assert resolve_seeds(Plan(), 5, None) == [5, 6, 7]
    assert resolve_seeds(Plan(), 0, 1) == [0]
    with pytest.raises(ValueError, match="num_seeds"):
        resolve_seeds(Plan(), 0, 0)


def test_failed_precondition_is_inconclusive_whatever_the_criterion() -> None:
    assert verdict(True) == "supported" and verdict(False) == "not supported"
    assert verdict(True, precondition_met=False) == "inconclusive"
    assert verdict(False, precondition_met=False) == "inconclusive"
    assert verdict(True, precondition_met=None) == "supported"  # no precondition measured
    assert verdict(True, enough_data=False) == "inconclusive"
    assert set(VERDICTS) == {"supported", "not supported", "inconclusive"}


def test_one_seed_is_shown_without_a_spread() -> None:
    assert mean_std([0.5]) == "0.500"
    assert mean_std([0.5, 0.7]) == "0.600 ± 0.100"
    assert mean_std([]) == "-"


def test_run_experiment_stamps_size_seeds_and_time() -> None:
    import types

    @dataclasses.dataclass(frozen=True)
    class Plan:
        seeds: int
        expected_s: float | None
        judged: bool

    seen = {}

    def run(plan: Plan, seeds: list[int], progress) -> Result:
        seen["plan"], seen["seeds"] = plan, seeds
        progress("working")
        return Result("fake", "c", "k", verdict(True, enough_data=plan.judged), "m")

    module = types.ModuleType("fake_contract")
    module.PLANS = {"smoke": Plan(1, 1.0, False), "quick": Plan(2, 1.0, True), "full": Plan(3, None, True)}
    module.run = run
    stages: list[str] = []
    result = run_experiment(module, "quick", seed=4, progress=stages.append)
    assert seen["plan"] is module.PLANS["quick"] and seen["seeds"] == [4, 5] and stages == ["working"]
    assert result.size == "quick" and result.seeds == [4, 5] and result.wall_time_s >= 0.0
    assert run_experiment(module, "smoke").verdict == "inconclusive"
