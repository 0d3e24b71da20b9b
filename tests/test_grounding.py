"""Grounding metrics on hand-made attention maps, the report parser and finding-level F1."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossfuse.data.radiographs import Finding, tokenize
from crossfuse.lab.grounding import (
    asserted_finding_positions,
    attention_mass_in_box,
    finding_scores,
    ground_report,
    parse_findings,
    pointing_chance,
    pointing_game,
)


def peak(row: int, col: int, grid: int = 8) -> np.ndarray:
    heat = np.full((grid, grid), 0.1 / (grid * grid - 1))
    heat[row, col] = 0.9
    return heat


def test_pointing_game_inside_adjacent_and_far() -> None:
    box = (16, 16, 24, 24)  # exactly patch (2, 2) with 8-pixel patches
    assert pointing_game(peak(2, 2), box, 8)
    assert pointing_game(peak(3, 3), box, 8)  # diagonal neighbour: within one patch
    assert pointing_game(peak(1, 2), box, 8)
    assert not pointing_game(peak(4, 2), box, 8)  # two patches away
    assert not pointing_game(peak(3, 3), box, 8, tolerance=0)
    assert not pointing_game(peak(7, 7), box, 8)


def test_pointing_game_box_spanning_patches() -> None:
    box = (10, 3, 30, 12)  # overlaps patch columns 1..3, rows 0..1
    assert pointing_game(peak(1, 3), box, 8, tolerance=0)
    assert not pointing_game(peak(1, 4), box, 8, tolerance=0)
    assert pointing_game(peak(1, 4), box, 8, tolerance=1)
    assert not pointing_game(peak(3, 1), box, 8, tolerance=0)


def test_pointing_chance_counts_cells_within_tolerance() -> None:
    assert pointing_chance((16, 16, 24, 24), 8, grid=8) == pytest.approx(9 / 64)
    assert pointing_chance((0, 0, 8, 8), 8, grid=8) == pytest.approx(4 / 64)  # clipped at the corner
    assert pointing_chance((0, 0, 64, 64), 8, grid=8) == 1.0
    # the chance level is what a uniformly random arg-max scores
    box, hits = (10, 3, 30, 12), 0
    for cell in range(64):
        hits += pointing_game(peak(*divmod(cell, 8)), box, 8)
    assert pointing_chance(box, 8, grid=8) == pytest.approx(hits / 64)


def test_attention_mass_analytic() -> None:
    uniform = np.full((8, 8), 1 / 64)
    box = (5, 10, 25, 30)
    assert attention_mass_in_box(uniform, box, 8) == pytest.approx(20 * 20 / 64**2)
    assert attention_mass_in_box(peak(2, 2), (16, 16, 24, 24), 8) == pytest.approx(0.9)
    # half of patch (2, 2) -> half of its weight
    assert attention_mass_in_box(peak(2, 2), (16, 16, 20, 24), 8) == pytest.approx(0.45)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(1, 30), st.integers(1, 30), st.integers(0, 10**6))
def test_mass_is_a_share_and_additive(x0: int, y0: int, w: int, h: int, seed: int) -> None:
    heat = np.random.default_rng(seed).random((8, 8))
    heat /= heat.sum()
    x1, y1 = min(64, x0 + w), min(64, y0 + h)
    whole = attention_mass_in_box(heat, (x0, y0, x1, y1), 8)
    assert 0.0 <= whole <= 1.0 + 1e-9
    if x1 - x0 >= 2:  # splitting the box in two splits the mass
        mid = (x0 + x1) // 2
        parts = attention_mass_in_box(heat, (x0, y0, mid, y1), 8) + attention_mass_in_box(heat, (mid, y0, x1, y1), 8)
        assert parts == pytest.approx(whole)
    assert attention_mass_in_box(heat, (0, 0, 64, 64), 8) == pytest.approx(1.0)


def test_bad_maps_and_boxes() -> None:
    with pytest.raises(ValueError, match="attention"):
        pointing_game(np.ones(64), (0, 0, 8, 8), 8)
    with pytest.raises(ValueError, match="box"):
        pointing_game(np.ones((8, 8)), (8, 0, 8, 8), 8)


def test_parser_on_hand_written_reports() -> None:
    assert parse_findings(
        "There is an opacity in the right lower zone. No pleural effusion. Heart size is normal."
    ) == {("opacity", "right lower")}
    assert parse_findings("Left upper zone nodule. Small right pleural effusion. Cardiomegaly.") == {
        ("nodule", "left upper"),
        ("pleural effusion", "right"),
        ("cardiomegaly", "heart"),
    }
    assert parse_findings("The lungs are clear. No effusion. The heart is normal in size. No rib fracture.") == set()
    assert parse_findings("Fracture of a left rib in the middle zone.") == {("rib fracture", "left middle")}
    assert parse_findings("There is an opacity.") == {("opacity", None)}  # location missing


def test_finding_scores_analytic() -> None:
    truth = [{("opacity", "right lower")}, set(), {("nodule", "left upper"), ("cardiomegaly", "heart")}]
    predicted = [{("opacity", "right middle")}, set(), {("nodule", "left upper"), ("cardiomegaly", "heart")}]
    scores = finding_scores(predicted, truth)
    # tp = 2, fp = 1 (wrong zone), fn = 1
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["exact"] == pytest.approx(2 / 3)
    assert finding_scores(truth, truth)["f1"] == 1.0
    with pytest.raises(ValueError, match="predicted"):
        finding_scores(predicted[:2], truth)


def test_ground_report_matches_words_to_boxes() -> None:
    words = tokenize("There is an opacity in the right lower zone. No pleural effusion. Cardiomegaly.")
    findings = [
        Finding("opacity", "right lower", (8, 40, 24, 56)),  # patches rows 5..6, cols 1..2
        Finding("cardiomegaly", "heart", (40, 0, 64, 16)),
    ]
    attention = np.full((len(words), 64), 1 / 64)
    opacity_at, heart_at = words.index("opacity"), words.index("cardiomegaly")
    attention[opacity_at] = peak(6, 1).ravel()
    attention[heart_at] = peak(6, 6).ravel()  # looks far from the heart's box
    result = ground_report(words, attention, findings, patch_size=8, image_size=64)
    assert [(g.word, g.hit) for g in result] == [("opacity", True), ("cardiomegaly", False)]
    assert result[0].mass == pytest.approx(0.9 + 3 * 0.1 / 63)
    assert result[0].box_share == pytest.approx(16 * 16 / 64**2)
    # the negated effusion sentence and a finding absent from the truth give nothing
    assert ground_report(words, attention, findings[:1], 8, 64)[0].word == "opacity"
    assert len(ground_report(words, attention, findings[:1], 8, 64)) == 1


def test_asserted_finding_positions_skip_negated_sentences() -> None:
    words = tokenize("No pleural effusion. Left upper zone nodule. The heart is enlarged. No rib fracture.")
    assert [words[i] for i in asserted_finding_positions(words)] == ["nodule", "enlarged"]
