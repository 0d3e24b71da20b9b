"""Pointing metrics: hand-made heatmaps, chance levels and the image-dependent-token rule."""

import numpy as np
import pytest

from crossfuse.data.radiographs import Finding, tokenize
from crossfuse.lab.pointing import (
    PrefixModel,
    box_grid_share,
    chance_corrected,
    pointing_hit,
    score_report,
    summarize,
)

GRID, PATCH, SIZE = 8, 8, 64


def test_peaked_map_in_box_hits_and_outside_misses() -> None:
    box = (16, 24, 30, 40)  # columns 2-3, rows 3-4 of the 8x8 grid
    heat = np.full((GRID, GRID), 0.01)
    heat[4, 3] = 1.0
    assert pointing_hit(heat, box, PATCH) == 1.0
    heat = np.full((GRID, GRID), 0.01)
    heat[0, 7] = 1.0
    assert pointing_hit(heat, box, PATCH) == 0.0


def test_uniform_map_scores_its_chance_level() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0 = rng.integers(0, 56, size=2)
        w, h = rng.integers(1, 64 - max(x0, y0), size=2)
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        chance = box_grid_share(box, PATCH, (GRID, GRID))
        assert pointing_hit(np.full((GRID, GRID), 1 / 64), box, PATCH) == pytest.approx(chance)
        assert chance_corrected(pointing_hit(np.ones((GRID, GRID)), box, PATCH), chance) == pytest.approx(0.0)
    # a box covering 2x2 patches has chance 4 / 64
    assert box_grid_share((8, 8, 24, 24), PATCH, (GRID, GRID)) == pytest.approx(4 / 64)


def test_random_argmax_hit_rate_approaches_chance() -> None:
    rng = np.random.default_rng(1)
    box = (0, 0, 20, 12)  # 3 x 2 patches
    hits = [pointing_hit(rng.random((GRID, GRID)), box, PATCH) for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(box_grid_share(box, PATCH, (GRID, GRID)), abs=0.015)


def test_chance_corrected_values() -> None:
    assert chance_corrected(1.0, 0.3) == pytest.approx(1.0)
    assert chance_corrected(0.3, 0.3) == pytest.approx(0.0)
    assert chance_corrected(0.65, 0.3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="chance"):
        chance_corrected(0.5, 1.0)


def test_image_dependent_tokens_on_a_toy_corpus() -> None:
    corpus = [tokenize(t) for t in ["Right pleural effusion. Heart is big.", "Left pleural effusion. Heart is small."]]
    corpus += [tokenize("Left pleural effusion. Heart is big.")]
    model = PrefixModel(corpus, threshold=0.6)
    # sentence starts: 1 "right", 2 "left", 3 "heart" of 6; p(pleural | left) = 1; p(big | heart is) = 2/3
    assert model.probability([], "right") == pytest.approx(1 / 6)
    assert model.probability([], "heart") == pytest.approx(1 / 2)
    assert model.probability(["left"], "pleural") == pytest.approx(1.0)
    assert model.probability(["heart", "is"], "small") == pytest.approx(1 / 3)
    words = tokenize("Right pleural effusion. Heart is small.")
    marks = model.image_dependent(words)
    assert dict(zip(words, marks, strict=False)) == {
        "right": True,
        "pleural": False,
        "effusion": False,
        ".": False,
        "heart": True,  # 1/2 of sentence starts
        "is": False,
        "small": True,
    }
    assert model.image_dependent(tokenize("Heart is big."))[2] is False  # 2/3 >= 0.6
    assert model.image_dependent(tokenize("Huge heart."))[:2] == [True, True]  # unseen prefix/word


def test_score_report_uses_image_dependent_tokens_and_the_true_box() -> None:
    corpus = [tokenize(f"There is a {s} pleural effusion.") for s in ("right", "left")]
    model = PrefixModel(corpus)
    words = tokenize("There is a left pleural effusion.")
    box = (40, 40, 56, 56)
    finding = Finding("pleural effusion", "left", box)
    heat = np.full((len(words), GRID * GRID), 1 / 64)
    peaked = np.full((GRID, GRID), 0.001)
    peaked[6, 6] = 1.0
    heat[words.index("left")] = peaked.ravel()
    steps = score_report(words, heat, [finding], model, PATCH, SIZE)
    assert [s.word for s in steps] == ["left"] and steps[0].hit == 1.0
    assert steps[0].chance == pytest.approx(4 / 64) and steps[0].box_share == pytest.approx(256 / 4096)
    assert score_report(words, heat, [], model, PATCH, SIZE) == []  # no true finding: nothing to point at
    summary = summarize(steps)
    assert summary["pleural effusion"]["corrected"] == pytest.approx(1.0)
    assert np.isnan(summary["opacity"]["hit"]) and summary["macro"]["hit"] == pytest.approx(1.0)
    assert summary["macro"]["all_above_chance"] == 1.0
    with pytest.raises(ValueError, match="heat"):
        score_report(words, heat[:2], [finding], model, PATCH, SIZE)
