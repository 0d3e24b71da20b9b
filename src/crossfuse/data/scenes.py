"""Seeded "is there a <color> <shape>?" scenes for the compositional-binding experiment.

Each example is a small RGB scene (default 32x32) holding 2-4 coloured shapes at random
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

Objects are ``object_size`` pixels wide and placed on a lattice of ``align`` pixels. With the
defaults (size 8, align 8) and 8x8 patches every object fills exactly one patch, so the visual part
is easy and a model's errors come from the binding; with 4x4 patches an object covers 2x2 patches,
and ``align=1`` places objects at any pixel.

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
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
QUESTION = ("is", "there", "a")
VOCAB: tuple[str, ...] = ("<pad>", *QUESTION, *COLORS, *SHAPES)
QUESTION_LENGTH = len(QUESTION) + 2
HELD_OUT: tuple[tuple[str, str], ...] = tuple((c, SHAPES[(i + 2) % len(SHAPES)]) for i, c in enumerate(COLORS))
"""One held-out combination per colour and per shape (a Latin transversal), so every colour and
every shape is still asked about in training: red triangle, green cross, blue square, yellow circle."""

KINDS = ("yes", "yes_distractors", "distractor", "absent")


@dataclass(frozen=True)
class SceneObject:
    """One object: its shape, colour and top-left corner; it fills a ``size`` x ``size`` box."""

    shape: str
    color: str
    x0: int
    y0: int
    size: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """Bounding box in pixels, end-exclusive: (x0, y0, x1, y1)."""
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


@dataclass(frozen=True)
class SceneConfig:
    """Scene generator settings; defaults give 32x32 scenes of 8-pixel objects on an 8-pixel lattice."""

    image_size: int = 32
    object_size: int = 8
    align: int = 8
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
        if self.align < 1:
            raise ValueError(f"align: expected >= 1, got {self.align}")
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


@lru_cache(maxsize=64)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``size`` x ``size`` stencil of a shape, drawn with a one-pixel margin (cached: do not modify)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    lo, hi = 1.0, size - 1.0
    centre, half = size / 2, (hi - lo) / 2
    if shape == "square":
        return (xx > lo) & (xx < hi) & (yy > lo) & (yy < hi)
    if shape == "circle":
        return (xx - centre) ** 2 + (yy - centre) ** 2 <= half**2
    if shape == "triangle":  # apex at the top centre, base at the bottom
        inside_rows = (yy > lo) & (yy < hi)
        return inside_rows & (np.abs(xx - centre) <= (yy - lo) / (hi - lo) * half + 0.25)
    if shape == "cross":
        arm = max(1.0, size / 8)
        vertical = (np.abs(xx - centre) <= arm) & (yy > lo) & (yy < hi)
        horizontal = (np.abs(yy - centre) <= arm) & (xx > lo) & (xx < hi)
        return vertical | horizontal
    raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")


def render_scene(objects: Sequence[SceneObject], config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw objects on a black background with per-object brightness and Gaussian pixel noise.

    Shapes: -> (3, H, W) float32
    """
    size = config.image_size
    image = np.zeros((3, size, size), dtype=np.float32)
    for obj in objects:
        stencil = shape_mask(obj.shape, obj.size)
        colour = np.asarray(COLOR_RGB[obj.color], dtype=np.float32) * rng.uniform(*config.brightness)
        region = image[:, obj.y0 : obj.y0 + obj.size, obj.x0 : obj.x0 + obj.size]
        region[:, stencil] = colour[:, None]
    image += rng.normal(0.0, config.noise, image.shape).astype(np.float32)
    return image


def _place(attributes: list[tuple[str, str]], config: SceneConfig, rng: np.random.Generator) -> list[SceneObject]:
    """Random non-overlapping lattice positions for each (colour, shape) in ``attributes``."""
    corners = np.arange(0, config.image_size - config.object_size + 1, config.align)
    for _ in range(1000):
        xs, ys = rng.choice(corners, len(attributes)), rng.choice(corners, len(attributes))
        separated = all(
            abs(xs[i] - xs[j]) >= config.object_size or abs(ys[i] - ys[j]) >= config.object_size
            for i in range(len(xs))
            for j in range(i)
        )
        if separated:
            return [
                SceneObject(shape, colour, int(x), int(y), config.object_size)
                for (colour, shape), x, y in zip(attributes, xs, ys, strict=True)
            ]
    raise ValueError(
        f"max_objects: {len(attributes)} objects of size {config.object_size} do not fit in a "
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
