"""Seeded "is there a <color> <shape>?" scenes for the compositional-binding experiment.

Each example is a small RGB scene (default 24x24) holding 2-4 coloured shapes at random
non-overlapping positions, with Gaussian pixel noise, paired with a tokenised question
"is there a <color> <shape>" whose answer is yes or no (balanced). The generator draws four kinds
of scene (a quarter each by default):

- ``"yes"``: an object of the asked colour *and* shape, plus random others;
- ``"yes_distractors"``: the asked object *and* both binding distractors below (answer yes);
- ``"distractor"`` (binding distractor, answer no): the asked colour sits on another shape and
  the asked shape has another colour, but the combination is absent, so a model that only checks
  "colour present" and "shape present" separately answers wrongly;
- ``"absent"`` (answer no): any other scene without the combination.

Scenes holding both distractors are answered yes or no with equal probability, so on them a
model that ignores binding is at chance, and so is one that always answers no.

Held-out combinations (CoGenT-style, Johnson et al., 2017) are colour-shape pairs that are
never asked about in training (they may still appear as other objects in training scenes);
the test split asks about them, so accuracy there measures compositional generalisation.

Shapes need binding across patches. An object's box (``object_size`` = 8 pixels) is a 2x2 grid of
cells (4 pixels each); its shape is which two cells are filled with its colour: ``bar`` (one row of
cells, top or bottom), ``column`` (one column, left or right), ``diagonal`` (top-left and bottom-right)
or ``antidiagonal`` (top-right and bottom-left). Bars and columns take either row/column at random
(`SceneObject.variant`), so each fills every cell half the time. Boxes sit on a lattice of ``align`` = 4
pixels with at least ``gap`` = 4 empty pixels between boxes, so a cell's position mostly does not tell
which cell of its box it is. With 4x4 patches each filled cell is one whole patch of one colour: a single
patch token carries the colour and where it is, but the shape exists only in the relation between two
tokens, so colour and shape must be bound across tokens. (The earlier scenes drew glyphs that filled
exactly one 8x8 patch, so colour and shape arrived bound in one token. A 12-pixel lattice puts boxes at
fixed slots, where a token's position tells which cell it is, and the cell narrows the shape: a linear
probe on one token then reads the pair at about 0.49, against about 0.30 here.)

Shapes:
    images: (N, 3, H, W) float  ->  patches(p): (N, (H/p)*(W/p), p*p*3)
    tokens: (N, L, V) one-hot float  mask: (N, L) bool, True = real word  answers: (N,) long, 1 = yes
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.dataset import MultimodalDataset

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.9, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1),
}
SHAPES: tuple[str, ...] = ("bar", "column", "diagonal", "antidiagonal")
QUESTION = ("is", "there", "a")
VOCAB: tuple[str, ...] = ("<pad>", *QUESTION, *COLORS, *SHAPES)
QUESTION_LENGTH = len(QUESTION) + 2
HELD_OUT: tuple[tuple[str, str], ...] = tuple((c, SHAPES[(i + 2) % len(SHAPES)]) for i, c in enumerate(COLORS))
"""One held-out combination per colour and per shape (a Latin transversal), so every colour and
every shape is still asked about in training: red diagonal, green antidiagonal, blue bar, yellow column."""

KINDS = ("yes", "yes_distractors", "distractor", "absent")


@dataclass(frozen=True)
class SceneObject:
    """One object: its shape, colour and top-left corner of its ``size`` x ``size`` box.

    ``variant`` picks the row of a bar / the column of a column (0 = top / left, 1 = bottom / right).
    """

    shape: str
    color: str
    x0: int
    y0: int
    size: int
    variant: int = 0

    def cells(self) -> list[tuple[int, int]]:
        """Top-left pixel (x, y) of each filled cell (``size // 2`` pixels square)."""
        half = self.size // 2
        return [(self.x0 + c * half, self.y0 + r * half) for r, c in shape_cells(self.shape, self.variant)]

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """Bounding box in pixels, end-exclusive: (x0, y0, x1, y1)."""
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


@dataclass(frozen=True)
class SceneConfig:
    """Scene generator settings; defaults give 24x24 scenes of 8-pixel objects on a 4-pixel lattice, 4 pixels apart."""

    image_size: int = 24
    object_size: int = 8
    align: int = 4
    gap: int = 4
    min_objects: int = 2
    max_objects: int = 4
    noise: float = 0.05
    brightness: tuple[float, float] = (0.75, 1.0)
    p_yes: float = 0.25
    p_yes_distractors: float = 0.25
    p_distractor: float = 0.25

    def __post_init__(self) -> None:
        if self.min_objects < 2 or self.max_objects < self.min_objects:
            raise ValueError(
                f"min_objects/max_objects: expected 2 <= min_objects <= max_objects, "
                f"got {self.min_objects}, {self.max_objects} (a binding distractor needs 2 objects)"
            )
        if self.object_size > self.image_size:
            raise ValueError(f"object_size: expected <= image_size={self.image_size}, got {self.object_size}")
        if self.object_size < 2 or self.object_size % 2:
            raise ValueError(f"object_size: expected an even size >= 2 (a 2x2 grid of cells), got {self.object_size}")
        if self.align < 1:
            raise ValueError(f"align: expected >= 1, got {self.align}")
        if self.gap < 0:
            raise ValueError(f"gap: expected >= 0, got {self.gap}")
        probabilities = (self.p_yes, self.p_yes_distractors, self.p_distractor)
        if min(probabilities) < 0 or sum(probabilities) > 1 + 1e-9:
            raise ValueError(
                f"p_yes, p_yes_distractors, p_distractor: expected non-negative with sum <= 1, got {probabilities}"
            )

    @property
    def kind_probabilities(self) -> list[float]:
        """Probability of each of `KINDS`, in order ("absent" takes the rest)."""
        rest = max(0.0, 1.0 - self.p_yes - self.p_yes_distractors - self.p_distractor)
        return [self.p_yes, self.p_yes_distractors, self.p_distractor, rest]


@dataclass
class BindingSet:
    """Scenes, their object lists, questions and answers.

    Shapes: images: (N, 3, H, W)  answers: (N,) long (1 = yes); ``objects``, ``questions`` and
    ``kinds`` are lists of length N (``kinds`` is the generator's intent, one of `KINDS`).
    """

    images: Tensor
    objects: list[list[SceneObject]]
    questions: list[tuple[str, str]]
    answers: Tensor
    kinds: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.questions)

    def patches(self, patch: int = 4) -> Tensor:
        """Cut every image into non-overlapping ``patch`` x ``patch`` squares, row-major.

        Shapes: images (N, 3, H, W)  ->  (N, (H/patch) * (W/patch), patch * patch * 3)
        """
        n, c, h, w = self.images.shape
        if h % patch or w % patch:
            raise ValueError(f"patch: expected a divisor of the image size {h}x{w}, got {patch}")
        x = self.images.reshape(n, c, h // patch, patch, w // patch, patch)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)

    def tokens(self) -> tuple[Tensor, Tensor]:
        """Questions as one-hot word vectors and their padding mask.

        Shapes: -> tokens (N, L, V) float  mask (N, L) bool, True = real word
        """
        ids = torch.tensor([encode_question(c, s) for c, s in self.questions], dtype=torch.long)
        mask = ids != VOCAB.index("<pad>")
        return torch.nn.functional.one_hot(ids, len(VOCAB)).float(), mask

    def dataset(self, patch: int = 4) -> MultimodalDataset:
        """A `MultimodalDataset` with modalities ``"image"`` (patches) and ``"text"`` (one-hot words)."""
        tokens, mask = self.tokens()
        return MultimodalDataset({"image": self.patches(patch), "text": tokens}, self.answers.clone(), {"text": mask})

    def concat(self, other: BindingSet) -> BindingSet:
        """Both sets, this one first."""
        return BindingSet(
            torch.cat([self.images, other.images]),
            self.objects + other.objects,
            self.questions + other.questions,
            torch.cat([self.answers, other.answers]),
            self.kinds + other.kinds,
        )


def encode_question(color: str, shape: str) -> list[int]:
    """Word ids of "is there a <color> <shape>" (length `QUESTION_LENGTH`)."""
    if color not in COLORS:
        raise ValueError(f"color: expected one of {list(COLORS)}, got {color!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")
    return [VOCAB.index(w) for w in (*QUESTION, color, shape)]


def has_distractors(objects: Sequence[SceneObject], color: str, shape: str) -> bool:
    """Whether the asked colour is on another shape *and* the asked shape has another colour."""
    other_shape_in_color = any(o.color == color and o.shape != shape for o in objects)
    other_color_in_shape = any(o.shape == shape and o.color != color for o in objects)
    return other_shape_in_color and other_color_in_shape


def question_category(objects: Sequence[SceneObject], color: str, shape: str) -> str:
    """What a scene is for a question, recomputed from its objects: one of `KINDS`."""
    present = any(o.color == color and o.shape == shape for o in objects)
    distractors = has_distractors(objects, color, shape)
    if present:
        return "yes_distractors" if distractors else "yes"
    return "distractor" if distractors else "absent"


def all_combinations() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, colour-major."""
    return [(c, s) for c in COLORS for s in SHAPES]


def seen_combinations(held_out: Sequence[tuple[str, str]] = HELD_OUT) -> list[tuple[str, str]]:
    """The pairs asked about in training: all pairs minus ``held_out``."""
    return [pair for pair in all_combinations() if pair not in set(held_out)]


def shape_cells(shape: str, variant: int = 0) -> list[tuple[int, int]]:
    """The (row, column) cells of the 2x2 grid that ``shape`` fills; ``variant`` (0/1) places a bar or a column."""
    if variant not in (0, 1):
        raise ValueError(f"variant: expected 0 or 1, got {variant!r}")
    if shape == "bar":
        return [(variant, 0), (variant, 1)]
    if shape == "column":
        return [(0, variant), (1, variant)]
    if shape == "diagonal":
        return [(0, 0), (1, 1)]
    if shape == "antidiagonal":
        return [(0, 1), (1, 0)]
    raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")


@lru_cache(maxsize=64)
def shape_mask(shape: str, size: int, variant: int = 0) -> np.ndarray:
    """Boolean ``size`` x ``size`` stencil of a shape: its two filled cells (cached: do not modify)."""
    half = size // 2
    mask = np.zeros((size, size), dtype=bool)
    for r, c in shape_cells(shape, variant):
        mask[r * half : (r + 1) * half, c * half : (c + 1) * half] = True
    return mask


def render_scene(objects: Sequence[SceneObject], config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw objects on a black background with per-object brightness and Gaussian pixel noise.

    Shapes: -> (3, H, W) float32
    """
    size = config.image_size
    image = np.zeros((3, size, size), dtype=np.float32)
    for obj in objects:
        stencil = shape_mask(obj.shape, obj.size, obj.variant)
        colour = np.asarray(COLOR_RGB[obj.color], dtype=np.float32) * rng.uniform(*config.brightness)
        region = image[:, obj.y0 : obj.y0 + obj.size, obj.x0 : obj.x0 + obj.size]
        region[:, stencil] = colour[:, None]
    image += rng.normal(0.0, config.noise, image.shape).astype(np.float32)
    return image


def _place(attributes: list[tuple[str, str]], config: SceneConfig, rng: np.random.Generator) -> list[SceneObject]:
    """Random lattice positions, boxes at least ``gap`` pixels apart, for each (colour, shape) in ``attributes``.

    Objects are placed one at a time, each uniformly among the corners still free; a dead end restarts.
    """
    corners = np.arange(0, config.image_size - config.object_size + 1, config.align)
    grid = np.stack(np.meshgrid(corners, corners, indexing="ij"), axis=-1).reshape(-1, 2)  # (P, 2) as (x, y)
    spacing = config.object_size + config.gap
    for _ in range(1000):
        free = np.ones(len(grid), dtype=bool)
        chosen = []
        for _ in attributes:
            options = np.flatnonzero(free)
            if not len(options):
                break
            x, y = grid[options[rng.integers(len(options))]]
            chosen.append((int(x), int(y)))
            free &= (np.abs(grid[:, 0] - x) >= spacing) | (np.abs(grid[:, 1] - y) >= spacing)
        if len(chosen) == len(attributes):
            variants = rng.integers(0, 2, len(attributes))
            return [
                SceneObject(shape, colour, x, y, config.object_size, int(v))
                for (colour, shape), (x, y), v in zip(attributes, chosen, variants, strict=True)
            ]
    raise ValueError(
        f"max_objects: {len(attributes)} objects of size {config.object_size} (gap {config.gap}) do not fit in a "
        f"{config.image_size}x{config.image_size} scene"
    )


def _attributes(kind: str, target: tuple[str, str], count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(colour, shape) of every object in a scene of ``kind`` for question ``target``."""
    color, shape = target
    others = [pair for pair in all_combinations() if pair != target]

    def pick() -> tuple[str, str]:
        return others[rng.integers(len(others))]

    if kind == "yes":
        chosen = [target] + [all_combinations()[rng.integers(len(COLORS) * len(SHAPES))] for _ in range(count - 1)]
    elif kind in ("distractor", "yes_distractors"):
        other_shape = [s for s in SHAPES if s != shape][rng.integers(len(SHAPES) - 1)]
        other_color = [c for c in COLORS if c != color][rng.integers(len(COLORS) - 1)]
        chosen = [(color, other_shape), (other_color, shape)]
        if kind == "yes_distractors":
            chosen.append(target)
        chosen += [pick() for _ in range(count - len(chosen))]
    else:  # absent: resample until the scene is not (accidentally) a binding distractor
        while True:
            chosen = [pick() for _ in range(count)]
            if not (any(c == color for c, _ in chosen) and any(s == shape for _, s in chosen)):
                break
    return [chosen[i] for i in rng.permutation(len(chosen))]


def generate_binding(
    n: int,
    seed: int,
    targets: Sequence[tuple[str, str]] | None = None,
    config: SceneConfig | None = None,
) -> BindingSet:
    """``n`` scenes with questions about ``targets`` (default: every combination), seeded.

    Each example draws its asked pair uniformly from ``targets``, then its kind (one of `KINDS`,
    with `SceneConfig.kind_probabilities`) and 2-4 objects (at least 3 for "yes_distractors").
    """
    config = config or SceneConfig()
    targets = list(targets) if targets is not None else all_combinations()
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    if not targets:
        raise ValueError("targets: expected at least one (colour, shape) pair, got none")
    for color, shape in targets:
        encode_question(color, shape)  # validates the names
    rng = np.random.default_rng(seed)
    images, objects, questions, answers, kinds = [], [], [], [], []
    probabilities = np.asarray(config.kind_probabilities) / sum(config.kind_probabilities)
    for _ in range(n):
        target = targets[rng.integers(len(targets))]
        kind = KINDS[rng.choice(len(KINDS), p=probabilities)]
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        if kind == "yes_distractors":
            count = max(count, 3)
        scene = _place(_attributes(kind, target, count, rng), config, rng)
        images.append(render_scene(scene, config, rng))
        objects.append(scene)
        questions.append(target)
        answers.append(int(kind.startswith("yes")))
        kinds.append(kind)
    return BindingSet(torch.from_numpy(np.stack(images)), objects, questions, torch.tensor(answers), kinds)


def binding_splits(
    n_train: int,
    n_test: int,
    seed: int,
    held_out: Sequence[tuple[str, str]] = HELD_OUT,
    held_out_fraction: float = 0.5,
    config: SceneConfig | None = None,
) -> tuple[BindingSet, BindingSet]:
    """Train split asking only about seen pairs; test split whose ``held_out_fraction`` asks about ``held_out``.

    Train and test scenes come from independent seeds derived from ``seed``.
    """
    if not 0 <= held_out_fraction <= 1:
        raise ValueError(f"held_out_fraction: expected within [0, 1], got {held_out_fraction}")
    train_seed, seen_seed, held_seed = np.random.SeedSequence(seed).generate_state(3)
    if n_test < 1:
        raise ValueError(f"n_test: expected >= 1, got {n_test}")
    train = generate_binding(n_train, int(train_seed), seen_combinations(held_out), config)
    n_held = round(n_test * held_out_fraction)
    parts = [
        generate_binding(count, int(part_seed), targets, config)
        for count, part_seed, targets in (
            (n_test - n_held, seen_seed, seen_combinations(held_out)),
            (n_held, held_seed, list(held_out)),
        )
        if count
    ]
    test = parts[0] if len(parts) == 1 else parts[0].concat(parts[1])
    return train, test
