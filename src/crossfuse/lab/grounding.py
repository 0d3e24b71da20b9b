"""Does a report say the right things, and does the model look at the right place when it says them?

- `parse_findings`: the ``{(kind, location)}`` pairs a report asserts (negated sentences such as
  "No pleural effusion." assert nothing); the unit of finding-level precision/recall/F1.
- `pointing_game`: is the arg-max of an attention map inside the finding's box, with a tolerance
  of one patch (Zhang et al., 2018, "Top-down neural attention by excitation backprop", count a hit
  within 15 pixels of the box; here the tolerance is in patches).
- `attention_mass_in_box`: the share of attention that falls inside the box, each patch's weight
  spread evenly over its pixels.
- `ground_report`: both measures for every finding word of a generated report.

Shapes: attention: (gh, gw) over the patch grid, summing to 1; boxes: (x0, y0, x1, y1) in pixels,
end-exclusive; ``patch_size`` pixels per patch side.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from crossfuse.data.radiographs import KINDS, SIDES, ZONES, Finding, tokenize

FINDING_WORDS = {
    "opacity": "opacity",
    "nodule": "nodule",
    "effusion": "pleural effusion",
    "cardiomegaly": "cardiomegaly",
    "enlarged": "cardiomegaly",
    "fracture": "rib fracture",
}
"""Words that name a finding -> the finding's kind."""

_NEGATION = re.compile(r"\b(no|normal|clear)\b")


def _sentence_finding(words: list[str]) -> tuple[str, str | None] | None:
    """The (kind, location) one sentence asserts, or None (negative or no finding)."""
    if _NEGATION.search(" ".join(words)):
        return None
    kind = next((FINDING_WORDS[w] for w in words if w in FINDING_WORDS), None)
    if kind is None:
        return None
    side = next((w for w in words if w in SIDES), None)
    zone = next((w for w in words if w in ZONES), None)
    if kind == "cardiomegaly":
        return kind, "heart"
    if kind == "pleural effusion":
        return kind, side
    return kind, None if side is None or zone is None else f"{side} {zone}"


def _sentences(words: list[str]) -> list[tuple[int, list[str]]]:
    """Split a token list at ``.``: (index of the sentence's first token, its tokens)."""
    out, start = [], 0
    for i, word in enumerate([*words, "."]):
        if word == ".":
            if i > start:
                out.append((start, words[start:i]))
            start = i + 1
    return out


def asserted_finding_positions(words: list[str]) -> list[int]:
    """Positions of the finding words in sentences that assert a finding (not in "No pleural effusion.")."""
    positions = []
    for start, sentence in _sentences(words):
        asserted = _sentence_finding(sentence)
        if asserted is not None:
            positions += [start + i for i, w in enumerate(sentence) if FINDING_WORDS.get(w) == asserted[0]]
    return positions


def parse_findings(report: str | list[str]) -> set[tuple[str, str | None]]:
    """Findings a report asserts, as ``{(kind, location)}``; location None if the report omits it.

    ``report`` is text or a list of tokens (as produced by `crossfuse.data.radiographs.tokenize`).
    """
    words = tokenize(report) if isinstance(report, str) else [w.lower() for w in report]
    found = set()
    for _, sentence in _sentences(words):
        finding = _sentence_finding(sentence)
        if finding is not None:
            found.add(finding)
    return found


def finding_scores(predicted: list[set], truth: list[set]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over ``(kind, location)`` pairs of many reports.

    Also ``exact``: share of reports whose finding set is exactly right (normal studies included).
    Precision (recall) is 1 when nothing was predicted (expected), as no mistake was made.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"predicted: expected {len(truth)} reports (as truth), got {len(predicted)}")
    tp = sum(len(p & t) for p, t in zip(predicted, truth, strict=True))
    fp = sum(len(p - t) for p, t in zip(predicted, truth, strict=True))
    fn = sum(len(t - p) for p, t in zip(predicted, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    exact = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])) if truth else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "exact": exact, "tp": tp, "fp": fp, "fn": fn}


def per_kind_f1(predicted: list[set], truth: list[set]) -> dict[str, float]:
    """Finding F1 restricted to each kind (location must match too)."""
    return {
        kind: finding_scores(
            [{f for f in p if f[0] == kind} for p in predicted], [{f for f in t if f[0] == kind} for t in truth]
        )["f1"]
        for kind in KINDS
    }


def _as_array(attention: Tensor | np.ndarray) -> np.ndarray:
    array = attention.detach().cpu().numpy() if isinstance(attention, Tensor) else np.asarray(attention)
    if array.ndim != 2:
        raise ValueError(f"attention: expected a (gh, gw) map, got shape {array.shape}")
    return array.astype(np.float64)


def _box_cells(box: tuple[int, int, int, int], patch_size: int) -> tuple[int, int, int, int]:
    """Grid cells (r0, c0, r1, c1), end-exclusive, of the patches the box overlaps."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box: expected x0 < x1 and y0 < y1, got {tuple(box)}")
    return y0 // patch_size, x0 // patch_size, -(-y1 // patch_size), -(-x1 // patch_size)


def pointing_game(
    attention: Tensor | np.ndarray, box: tuple[int, int, int, int], patch_size: int, tolerance: int = 1
) -> bool:
    """True if the attention's arg-max patch overlaps ``box`` or lies within ``tolerance`` patches of one.

    Shapes: attention: (gh, gw)  box: (x0, y0, x1, y1) pixels, end-exclusive.
    """
    array = _as_array(attention)
    row, col = np.unravel_index(int(np.argmax(array)), array.shape)
    r0, c0, r1, c1 = _box_cells(box, patch_size)
    d_row = max(r0 - row, row - (r1 - 1), 0)
    d_col = max(c0 - col, col - (c1 - 1), 0)
    return max(d_row, d_col) <= tolerance


def pointing_chance(box: tuple[int, int, int, int], patch_size: int, grid: int, tolerance: int = 1) -> float:
    """Pointing-game accuracy of an arg-max drawn uniformly over the ``grid x grid`` patches (the chance level)."""
    r0, c0, r1, c1 = _box_cells(box, patch_size)
    rows = min(grid, r1 + tolerance) - max(0, r0 - tolerance)
    cols = min(grid, c1 + tolerance) - max(0, c0 - tolerance)
    return rows * cols / grid**2


def attention_mass_in_box(attention: Tensor | np.ndarray, box: tuple[int, int, int, int], patch_size: int) -> float:
    """Share of the attention inside ``box``; a patch's weight is spread evenly over its pixels.

    Shapes: attention: (gh, gw)  box: pixels  ->  float in [0, 1] (for a map summing to 1).
    """
    array = _as_array(attention)
    pixels = np.kron(array, np.ones((patch_size, patch_size))) / patch_size**2
    x0, y0, x1, y1 = box
    return float(pixels[y0:y1, x0:x1].sum() / max(array.sum(), 1e-12))


def matched_sentences(
    words: list[str], findings: list[Finding]
) -> Iterator[tuple[int, list[str], str, str | None, Finding]]:
    """(start, sentence, kind, location, ground-truth finding) for each sentence asserting a finding in the film.

    The finding is the ground truth's of the same kind, preferring the same location; sentences whose kind is
    not in the ground truth (false positives) have no box and are skipped.
    """
    for start, sentence in _sentences(words):
        asserted = _sentence_finding(sentence)
        if asserted is None:
            continue
        kind, location = asserted
        candidates = [f for f in findings if f.kind == kind]
        if candidates:
            yield (
                start,
                sentence,
                kind,
                location,
                next((f for f in candidates if f.location == location), candidates[0]),
            )


def heat_grid(heat: Tensor | np.ndarray, words: list[str], side: int, name: str) -> np.ndarray:
    """``heat`` as an array of shape (T, side * side), checked against the T ``words``; ``name`` for errors."""
    maps = heat.detach().float().cpu().numpy() if isinstance(heat, Tensor) else np.asarray(heat)
    if maps.shape != (len(words), side * side):
        raise ValueError(f"{name}: expected shape ({len(words)}, {side * side}), got {maps.shape}")
    return maps


@dataclass
class Grounding:
    """One finding word of a generated report matched to a ground-truth box."""

    position: int
    word: str
    kind: str
    location: str | None
    box: tuple[int, int, int, int]
    hit: bool
    mass: float
    box_share: float  # the box's share of the image: the mass a uniform map would put there
    chance: float  # the pointing game's chance level for this box


def ground_report(
    words: list[str],
    attention: Tensor | np.ndarray,
    findings: list[Finding],
    patch_size: int,
    image_size: int,
    tolerance: int = 1,
) -> list[Grounding]:
    """Pointing game and mass in box for each finding word whose finding is in the ground truth.

    A finding word (``opacity``, ``effusion``, ...) in a positive sentence is matched to the
    ground-truth finding of the same kind, preferring the same location; words whose kind is not
    in the ground truth (false positives) have no box and are skipped.

    Shapes: words: T generated tokens  attention: (T, gh * gw) per token (head/layer average).
    """
    grid = image_size // patch_size
    maps = heat_grid(attention, words, grid, "attention")
    out = []
    for start, sentence, kind, location, target in matched_sentences(words, findings):
        for offset, word in enumerate(sentence):
            if FINDING_WORDS.get(word) != kind:
                continue
            heat = maps[start + offset].reshape(grid, grid)
            x0, y0, x1, y1 = target.xyxy
            out.append(
                Grounding(
                    position=start + offset,
                    word=word,
                    kind=kind,
                    location=location,
                    box=target.xyxy,
                    hit=pointing_game(heat, target.xyxy, patch_size, tolerance),
                    mass=attention_mass_in_box(heat, target.xyxy, patch_size),
                    box_share=(x1 - x0) * (y1 - y0) / image_size**2,
                    chance=pointing_chance(target.xyxy, patch_size, grid, tolerance),
                )
            )
    return out
