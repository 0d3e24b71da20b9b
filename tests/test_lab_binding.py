"""The binding experiment: subsets recomputed correctly, a complete result record from a smoke run."""

import json

import pytest
import torch

from crossfuse.data.scenes import HELD_OUT, binding_splits
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
    assert weights.shape == (2, budget.num_heads, 5, 16)
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
    """With stand-in maps: uniform gives (asked objects)/16, all weight on the asked patch gives 1."""
    _, test = binding_splits(4, 120, seed=3)
    yes = test.answers.bool()

    def uniform(model, data, index):
        return torch.full((len(index), 2, 5, 16), 1 / 16)

    def on_target(model, data, index):
        maps = torch.zeros(len(index), 2, 5, 16)
        for row, i in enumerate(index):
            color, shape = data.questions[i]
            first = next(o for o in data.objects[i] if o.color == color and o.shape == shape)
            maps[row, :, :, (first.y0 // 8) * 4 + first.x0 // 8] = 1.0
        return maps

    counts = [
        sum(o.color == q[0] and o.shape == q[1] for o in objs)
        for objs, q, y in zip(test.objects, test.questions, yes.tolist(), strict=True)
        if y
    ]
    monkeypatch.setattr(binding, "question_attention", uniform)
    assert binding.attention_on_asked_object(None, test, yes) == pytest.approx(sum(counts) / len(counts) / 16)
    monkeypatch.setattr(binding, "question_attention", on_target)
    assert binding.attention_on_asked_object(None, test, yes) == pytest.approx(1.0)
