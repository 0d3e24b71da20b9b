"""The binding experiment: subsets recomputed correctly, a complete result record from a smoke run."""

import json

import pytest
import torch

from crossfuse.data.scenes import HELD_OUT, SceneConfig, binding_splits
from crossfuse.lab import binding
from crossfuse.lab.result import Result, run_experiment
from crossfuse.viz.explorer import example_problems


def test_subsets_follow_their_definitions() -> None:
    _, test = binding_splits(10, 300, seed=1)
    masks = binding.subset_masks(test)
    for i, (objects, (color, shape)) in enumerate(zip(test.objects, test.questions, strict=True)):
        held = (color, shape) in HELD_OUT
        present = any(o.color == color and o.shape == shape for o in objects)
        both = any(o.color == color and o.shape != shape for o in objects) and any(
            o.shape == shape and o.color != color for o in objects
        )
        assert masks["held_out"][i] == held and masks["seen"][i] == (not held)
        assert masks["distractor"][i] == (both and not present and not held)
        assert masks["distractor_yes"][i] == (both and present and not held)
        assert masks["held_out_distractor"][i] == (both and held)
    assert masks["distractor"].any() and masks["distractor_yes"].any() and masks["held_out_distractor"].any()


def test_models_share_the_interface_and_cross_reads_text_first() -> None:
    budget = binding.PLANS["smoke"]
    _, test = binding_splits(4, 3, seed=0)
    batch = test.dataset(binding.PATCH).subset(torch.arange(3))
    for strategy in binding.STRATEGIES:
        output = binding.build_model(strategy, budget)(batch.inputs, batch.masks)
        assert output.logits.shape == (3, 2)
    weights = binding.question_attention(binding.build_model("cross", budget), test, [0, 1])
    assert weights.shape == (2, budget.num_heads, 5, 36)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, budget.num_heads, 5))


def test_smoke_run_gives_a_complete_record() -> None:
    stages: list[str] = []
    result = run_experiment(binding, "smoke", 2, progress=stages.append)
    assert isinstance(result, Result) and result.name == "binding"
    assert result.claim == binding.CLAIM and result.criterion == binding.CRITERION
    assert result.verdict == "inconclusive" and result.size == "smoke" and result.seeds == [2]
    assert "cross" in result.measured and result.wall_time_s > 0
    assert [s for s in stages if s.startswith("training")] == [f"training {s}, seed 1/1" for s in binding.STRATEGIES]
    table = result.tables[0]
    assert [row[0] for row in table.rows] == list(binding.STRATEGIES)
    assert all(len(row) == len(table.columns) for row in table.rows)
    assert set(result.figures) == {"binding_attention.png", "binding_accuracy.png"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in result.figures.values())
    raw = json.loads(json.dumps(result.raw))
    assert set(raw["accuracy"]) == set(binding.STRATEGIES)
    assert raw["parameters"]["cross"] > 0
    explorer = json.loads(json.dumps(result.extras["explorer"]))
    assert explorer["kind"] == "binding" and 1 <= len(explorer["examples"]) <= 4
    for example in explorer["examples"]:
        assert example_problems(example) == []
        assert example["image"].startswith("data:image/png;base64,")
        assert example["tokens"][:3] == ["is", "there", "a"]
        rows = torch.tensor(example["attention"]["mean"])
        torch.testing.assert_close(rows.sum(-1), torch.ones(5))
        # boxes are the asked object's, present exactly when the answer is yes
        assert bool(example["boxes"]) == (example["reference"] == "yes")


def test_attention_share_on_the_asked_object(monkeypatch) -> None:
    """With stand-in maps: uniform gives 2 * (asked objects)/36, all weight on the asked object's cells gives 1."""
    _, test = binding_splits(4, 120, seed=3)
    yes = test.answers.bool()

    def uniform(model, data, index):
        return torch.full((len(index), 2, 5, 36), 1 / 36)

    def on_target(model, data, index):
        maps = torch.zeros(len(index), 2, 5, 36)
        for row, i in enumerate(index):
            color, shape = data.questions[i]
            first = next(o for o in data.objects[i] if o.color == color and o.shape == shape)
            (ax, ay), (bx, by) = first.cells()  # the two filled cells, each one 4x4 patch of the 6x6 grid
            maps[row, :, :, (ay // 4) * 6 + ax // 4] = 0.5
            maps[row, :, :, (by // 4) * 6 + bx // 4] = 0.5
        return maps

    counts = [
        sum(o.color == q[0] and o.shape == q[1] for o in objs)
        for objs, q, y in zip(test.objects, test.questions, yes.tolist(), strict=True)
        if y
    ]
    monkeypatch.setattr(binding, "question_attention", uniform)
    assert binding.attention_on_asked_object(None, test, yes) == pytest.approx(2 * sum(counts) / len(counts) / 36)
    monkeypatch.setattr(binding, "question_attention", on_target)
    assert binding.attention_on_asked_object(None, test, yes) == pytest.approx(1.0)


def test_object_tokens_are_the_filled_cells() -> None:
    _, test = binding_splits(2, 40, seed=4)
    for objects in test.objects:
        for o in objects:
            tokens = binding.object_tokens(o, 4, 24)
            assert tokens == sorted((y // 4) * 6 + x // 4 for x, y in o.cells())
            assert len(tokens) == 2
            # an 8x8 patch aligned with the box holds the whole object
            if o.x0 % 8 == 0 and o.y0 % 8 == 0:
                assert binding.object_tokens(o, 8, 24) == [(o.y0 // 8) * 3 + o.x0 // 8]


def test_single_token_probe_reads_pre_bound_tokens_but_not_split_ones() -> None:
    """Known property: a token holding a whole object carries its shape; a token holding one cell does not.

    Pre-bound: 8-pixel objects on an 8-pixel lattice, 8x8 patches (the old design). Split: the experiment's
    scenes, 4x4 patches. With a 4-pixel lattice a cell's position does not tell which cell it is, so the probe
    reads little more than the colour (1/4 of the pair).
    """
    train, test = binding_splits(1500, 500, seed=0, config=SceneConfig(align=8, gap=0))
    pre_bound = binding.single_token_probe(train, test, patch=8)
    train, test = binding_splits(1500, 500, seed=0, config=binding.SCENES)
    split = binding.single_token_probe(train, test, patch=4)
    assert pre_bound > 0.6
    assert 0.2 < split <= binding.PROBE_MAXIMUM


def test_precondition_fails_on_pre_bound_scenes(monkeypatch) -> None:
    """A probe that reads the pair from one token -> verdict inconclusive even at a judged size."""
    monkeypatch.setattr(binding, "single_token_probe", lambda train, test: 0.9)
    plan = binding.Plan(
        1, 1.0, True, n_train=64, n_test=32, epochs=1, dim=8, num_heads=2, num_layers=1, batch_size=32, lr=3e-3
    )
    result = binding.run(plan, [0], lambda _text: None)
    assert result.precondition_met is False and result.verdict == "inconclusive"
    assert "0.900" in result.precondition_measured
