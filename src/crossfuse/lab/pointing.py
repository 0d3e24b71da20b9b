"""Pointing metrics that measure pointing: scored per finding kind, at words the image decides.

A heatmap can only be expected to point where the image decides the next word. A word forced by
the words before it ("effusion" after "pleural", "opacity" after "an") is predicted from the text
alone, so its attention has no reason to look at the finding. Hence:

- **Image-dependent tokens** (`PrefixModel`): a token is image-dependent when its probability
  given the preceding words *of the same sentence*, counted on the training reports, is below
  ``IMAGE_DEPENDENT_THRESHOLD`` = 0.6 (declared before any run). Location words ("right",
  "lower") and unforced finding words ("cardiomegaly" at the start of a sentence) are; "effusion"
  after "pleural" is not. A prefix never seen in training gives probability 0 (image-dependent).
  Punctuation is never scored.
- **Scored steps**: every image-dependent token of a generated sentence that asserts a finding
  whose kind is in the ground truth (matched as in `crossfuse.lab.grounding.ground_report`: same
  kind, preferring the same location), against that finding's box.
- **Hit**: the heatmap's arg-max patch lies inside the box, a patch counting as inside when the box
  overlaps it (the box rounded out to whole patches; no further dilation). Ties are split evenly:
  a map with ``k`` tied maxima scores the share of them inside the box, so a uniform map scores
  exactly its chance level.
- **Chance** = the box's share of the grid (patches it overlaps / all patches): the hit rate of a
  uniformly random arg-max. **Chance-corrected** = (hit - chance) / (1 - chance), from the kind's
  mean hit rate and mean chance; 0 = chance, 1 = always in the box. Summaries are macro over the
  kinds that have scored steps, so a frequent, large finding (cardiomegaly) cannot dominate.
- **Mass in box** (each patch's weight spread over its pixels) against the box's pixel share.

Shapes: heat: (gh, gw) over the patch grid; box: (x0, y0, x1, y1) pixels, end-exclusive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from crossfuse.data.radiographs import KINDS, Finding
from crossfuse.lab.grounding import _as_array, _box_cells, _sentence_finding, _sentences, attention_mass_in_box

IMAGE_DEPENDENT_THRESHOLD = 0.6
PUNCTUATION = frozenset({".", ","})


class PrefixModel:
    """Next-word probabilities given the preceding words of the same sentence, counted on a corpus.

    ``probability(prefix, word)`` = count(prefix + word) / count(prefix), over sentences split at
    ``.``; 0 for a prefix never seen. ``image_dependent(words)`` marks each token of a report.
    """

    def __init__(self, reports: list[list[str]], threshold: float = IMAGE_DEPENDENT_THRESHOLD) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold: expected a probability in (0, 1], got {threshold}")
        self.threshold = threshold
        self.prefixes: Counter[tuple[str, ...]] = Counter()
        self.continuations: Counter[tuple[str, ...]] = Counter()
        for words in reports:
            for _, sentence in _sentences(list(words)):
                for i in range(len(sentence)):
                    self.prefixes[tuple(sentence[:i])] += 1
                    self.continuations[tuple(sentence[: i + 1])] += 1

    def probability(self, prefix: list[str] | tuple[str, ...], word: str) -> float:
        seen = self.prefixes[tuple(prefix)]
        return self.continuations[(*prefix, word)] / seen if seen else 0.0

    def image_dependent(self, words: list[str]) -> list[bool]:
        """Per token: probability given its sentence prefix < threshold (punctuation: False)."""
        marks = [False] * len(words)
        for start, sentence in _sentences(words):
            for i, word in enumerate(sentence):
                if word not in PUNCTUATION:
                    marks[start + i] = self.probability(sentence[:i], word) < self.threshold
        return marks


def pointing_hit(heat: Tensor | np.ndarray, box: tuple[int, int, int, int], patch_size: int) -> float:
    """Share of the arg-max patches (ties split evenly) inside the patches ``box`` overlaps; 1.0 = hit.

    Shapes: heat: (gh, gw)  box: (x0, y0, x1, y1) pixels.
    """
    array = _as_array(heat)
    top = array.max()
    tied = np.isclose(array, top, rtol=1e-6, atol=1e-12)
    r0, c0, r1, c1 = _box_cells(box, patch_size)
    inside = np.zeros_like(tied)
    inside[r0:r1, c0:c1] = True
    return float((tied & inside).sum() / tied.sum())


def box_grid_share(box: tuple[int, int, int, int], patch_size: int, grid: tuple[int, int]) -> float:
    """Chance level of `pointing_hit`: the share of the ``grid`` patches that ``box`` overlaps."""
    r0, c0, r1, c1 = _box_cells(box, patch_size)
    rows = min(grid[0], r1) - max(0, r0)
    cols = min(grid[1], c1) - max(0, c0)
    return rows * cols / (grid[0] * grid[1])


@dataclass(frozen=True)
class PointingStep:
    """One scored step: a token written while asserting a true finding, and where its heatmap pointed."""

    position: int
    word: str
    kind: str
    hit: float
    chance: float
    mass: float
    box_share: float


def score_report(
    words: list[str],
    heat: Tensor | np.ndarray,
    findings: list[Finding],
    prefix_model: PrefixModel,
    patch_size: int,
    image_size: int,
) -> list[PointingStep]:
    """Pointing at every image-dependent token of the sentences that assert a true finding.

    Shapes: words: T tokens  heat: (T, gh * gw), one heatmap per generated token.
    """
    maps = heat.detach().cpu().numpy() if isinstance(heat, Tensor) else np.asarray(heat)
    side = image_size // patch_size
    if maps.shape != (len(words), side * side):
        raise ValueError(f"heat: expected shape ({len(words)}, {side * side}), got {maps.shape}")
    dependent = prefix_model.image_dependent(words)
    steps = []
    for start, sentence in _sentences(words):
        asserted = _sentence_finding(sentence)
        if asserted is None:
            continue
        kind, location = asserted
        candidates = [f for f in findings if f.kind == kind]
        if not candidates:
            continue  # a false positive has no box to point at
        target = next((f for f in candidates if f.location == location), candidates[0])
        x0, y0, x1, y1 = target.xyxy
        for offset, word in enumerate(sentence):
            if not dependent[start + offset]:
                continue
            grid_map = maps[start + offset].reshape(side, side)
            steps.append(
                PointingStep(
                    position=start + offset,
                    word=word,
                    kind=kind,
                    hit=pointing_hit(grid_map, target.xyxy, patch_size),
                    chance=box_grid_share(target.xyxy, patch_size, (side, side)),
                    mass=attention_mass_in_box(grid_map, target.xyxy, patch_size),
                    box_share=(x1 - x0) * (y1 - y0) / image_size**2,
                )
            )
    return steps


def chance_corrected(hit: float, chance: float) -> float:
    """(hit - chance) / (1 - chance): 0 at chance, 1 for a perfect pointer (Cohen-style correction)."""
    if not 0 <= chance < 1:
        raise ValueError(f"chance: expected a value in [0, 1), got {chance}")
    return (hit - chance) / (1 - chance)


def summarize(steps: list[PointingStep]) -> dict[str, dict[str, float]]:
    """Per kind (and ``"macro"`` over the kinds with steps): hit, chance, corrected, mass, box share, steps.

    A kind without scored steps gets NaN values and is left out of the macro average.
    """
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        mine = [s for s in steps if s.kind == kind]
        if not mine:
            out[kind] = {k: float("nan") for k in ("hit", "chance", "corrected", "mass", "box_share")}
            out[kind]["steps"] = 0.0
            continue
        hit = float(np.mean([s.hit for s in mine]))
        chance = float(np.mean([s.chance for s in mine]))
        out[kind] = {
            "hit": hit,
            "chance": chance,
            "corrected": chance_corrected(hit, chance),
            "mass": float(np.mean([s.mass for s in mine])),
            "box_share": float(np.mean([s.box_share for s in mine])),
            "steps": float(len(mine)),
        }
    scored = [out[k] for k in KINDS if out[k]["steps"] > 0]
    keys = ("hit", "chance", "corrected", "mass", "box_share")
    out["macro"] = {k: float(np.mean([s[k] for s in scored])) if scored else float("nan") for k in keys}
    out["macro"]["steps"] = float(len(steps))
    out["macro"]["all_above_chance"] = float(bool(scored) and all(s["hit"] > s["chance"] for s in scored))
    return out
