"""Needle generator and experiment: seeded data, a target set by the needle alone, a complete record."""

import json

import pytest
import torch

from crossfuse.data.needle import NeedleConfig, generate_needle
from crossfuse.lab import needle
from crossfuse.lab.result import Result, run_experiment


def test_generator_is_seeded() -> None:
    a, b, c = generate_needle(20, 8, seed=4), generate_needle(20, 8, seed=4), generate_needle(20, 8, seed=5)
    for x, y in ((a.items, b.items), (a.query, b.query), (a.y, b.y), (a.needle, b.needle)):
        assert torch.equal(x, y)
    assert not torch.equal(a.items, c.items)


def test_target_is_the_needles_class_and_the_query_its_key() -> None:
    config = NeedleConfig(value_noise=0.0, query_noise=0.0)
    data = generate_needle(50, 32, seed=1, config=config)
    rows = torch.arange(50)
    needle_item = data.items[rows, data.needle]
    torch.testing.assert_close(data.query[:, 0], needle_item[:, : config.key_dim])
    assert torch.equal(needle_item[:, config.key_dim :].argmax(-1), data.y)
    assert data.oracle_accuracy() == 1.0
    # the other items' classes carry no information: their majority class is not the target more than by chance
    values = data.items[..., config.key_dim :].argmax(-1)
    others = values.clone()
    others[rows, data.needle] = -1
    majority = torch.stack([torch.bincount(o[o >= 0], minlength=4).argmax() for o in others])
    assert (majority == data.y).float().mean() < 0.5


def test_default_noise_keeps_the_needle_findable() -> None:
    assert generate_needle(500, 256, seed=0).oracle_accuracy() > 0.98


def test_parameters_cross_constant_flatten_grows_as_its_formula() -> None:
    budget = needle.PLANS["quick"]
    dim, c = budget.dim, needle.DATA.num_classes
    cross = {n: needle.build_model("cross", n, budget).num_parameters for n in (16, 256)}
    assert cross[16] == cross[256]
    for n in (16, 256):
        flat = needle.build_model("flatten", n, budget).num_parameters
        # D * sum_m N_m D_m + D (input bias) + D * C + C (head), one hidden layer
        assert flat == dim * (needle.DATA.key_dim + n * needle.DATA.item_dim) + dim + dim * c + c


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_items"):
        generate_needle(4, 0, seed=0)


def test_smoke_run_gives_a_complete_record() -> None:
    stages: list[str] = []
    result = run_experiment(needle, "smoke", 3, progress=stages.append)
    assert isinstance(result, Result) and result.name == "needle"
    assert result.claim == needle.CLAIM and result.criterion == needle.CRITERION
    assert result.verdict == "inconclusive" and result.size == "smoke" and result.seeds == [3]
    assert "cross" in result.measured and result.wall_time_s > 0
    assert any("training cross" in s for s in stages) and any("training flatten" in s for s in stages)
    table = result.tables[0]
    assert [row[0] for row in table.rows] == list(needle.PLANS["smoke"].sizes)
    assert all(len(row) == len(table.columns) for row in table.rows)
    assert result.figures and all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in result.figures.values())
    raw = json.loads(json.dumps(result.raw))
    for variant in ("flatten", "cross", "cross (scratch)"):
        for n in needle.PLANS["smoke"].sizes:
            assert 0.0 <= raw["accuracy"][variant][str(n)][0] <= 1.0
    assert raw["flops_per_example"]["cross"]["16"] > raw["flops_per_example"]["cross"]["8"]
