"""Seeded schematic frontal chest films with findings, ground-truth boxes and templated reports.

Each study is a grayscale ``S x S`` image (default 64) drawn from simple shapes: a body outline,
two dark lung fields, a heart shadow, a spine, curved ribs, a smooth intensity gradient and
Gaussian noise. Findings are drawn in anatomical zones:

- ``opacity`` and ``nodule``: a lung zone (right/left x upper/middle/lower);
- ``pleural effusion``: a costophrenic angle (right/left), a meniscus at the lung base;
- ``cardiomegaly``: the heart, an enlarged heart shadow;
- ``rib fracture``: a lung zone, a rib interrupted with displaced ends (``"hard"`` variant only).

Two variants (sizes in pixels at S = 64; they scale with S):

- ``"standard"`` (default): findings a from-scratch encoder detects at the lab's quick budget
  (~1,500 steps). Opacity: soft blob of radius 6-7.5 and amplitude 0.35-0.45; nodule: dense disc
  of radius 3-4 and amplitude 0.5-0.6; effusion and cardiomegaly as in ``"hard"``; no rib
  fractures. Why: in the hard films a 2 px nodule covers ~12 pixels of one 8x8 patch, near the
  noise and rib texture, and a classifier on the encoder trained for the same steps found no
  nodules or fractures at all (issue 16); at radius 3-4 a nodule fills most of a patch and
  stands well above the noise. Every lung zone (about 11 px tall, 9 px wide per lung) still
  spans more than one patch of an 8x8 grid, so the location is resolvable on a 64x64 film.
- ``"hard"``: the original small findings (opacity radius 4-5.5, amplitude 0.25-0.35; nodule
  radius 1.6-2.4, amplitude 0.35-0.45; rib fractures), kept and reported on their own row.

Radiographic convention: the patient's right is on the image's left. Every finding changes pixels
only inside its box (``xyxy`` in pixels, end-exclusive), which the tests check by rendering with
and without it. Reports, tokens and `Vocabulary` live in `crossfuse.data.report_text`.

Shapes: ``Study.image``: (S, S) float32 in [0, 1];  ``RadiographDataset[i]``: {"image": (1, S, S),
"tokens": (max_len,) long, BOS ... EOS then PAD, "index": ()}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crossfuse.data.report_text import (  # noqa: F401 - re-exported: the report grammar lives there
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    Vocabulary,
    detokenize,
    tokenize,
    write_report,
)

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
KINDS = ("opacity", "nodule", "pleural effusion", "cardiomegaly", "rib fracture")
VARIANTS = ("standard", "hard")
VARIANT_KINDS = {"standard": KINDS[:4], "hard": KINDS}
"""Finding kinds each variant draws."""
LUNG_ZONES = tuple(f"{side} {zone}" for side in SIDES for zone in ZONES)
"""Locations of lung findings; effusions are located by side, cardiomegaly at ``"heart"``."""


@dataclass(frozen=True)
class Finding:
    """One abnormality: its kind, its location label and where it is drawn.

    ``location`` is ``"right lower"`` (lung zone), ``"left"`` (effusion side) or ``"heart"``;
    ``xyxy`` is the ground-truth box in pixels ``(x0, y0, x1, y1)``, end-exclusive; ``params``
    holds the drawing parameters (centre, radius, amplitude, ...).
    """

    kind: str
    location: str
    xyxy: tuple[int, int, int, int]
    params: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.location})"


@dataclass(frozen=True)
class Anatomy:
    """The normal film a study starts from; ellipses are ``(cx, cy, rx, ry)`` in pixels."""

    size: int
    body: tuple[float, float, float, float]
    lungs: tuple[tuple[float, float, float, float], tuple[float, float, float, float]]  # (right, left)
    heart: tuple[float, float, float, float]
    rib_top: float
    rib_spacing: float
    rib_drop: float
    tissue: float
    lung_level: float
    gradient: float
    gamma: float
    noise_sigma: float
    noise_seed: int

    def lung(self, side: str) -> tuple[float, float, float, float]:
        return self.lungs[SIDES.index(side)]

    def zone_rows(self, side: str, zone: str) -> tuple[float, float]:
        """Top and bottom row of a lung zone (the lung's height split in thirds)."""
        _, cy, _, ry = self.lung(side)
        third = 2 * ry / 3
        i = ZONES.index(zone)
        return cy - ry + i * third, cy - ry + (i + 1) * third


@dataclass
class Study:
    """One generated film: the image, its findings (empty = normal) and its report."""

    image: np.ndarray
    findings: list[Finding]
    report: str
    anatomy: Anatomy
    seed: tuple[int, ...] = field(default=())

    @property
    def finding_set(self) -> set[tuple[str, str]]:
        """Ground truth as ``{(kind, location)}`` pairs, the unit of finding-level F1."""
        return {(f.kind, f.location) for f in self.findings}


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    return x, y


def _ellipse(size: int, ellipse: tuple[float, float, float, float], ramp: float = 1.5) -> np.ndarray:
    """1 inside the ellipse, 0 outside, a linear ramp of ``ramp`` pixels at the edge (compact support)."""
    x, y = _grid(size)
    cx, cy, rx, ry = ellipse
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1.0 - r) * min(rx, ry) / ramp + 0.5, 0.0, 1.0)


def _box_mask(size: int, xyxy: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = xyxy
    mask[y0:y1, x0:x1] = True
    return mask


def _clip_box(size: int, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    return (
        max(0, int(np.floor(x0))),
        max(0, int(np.floor(y0))),
        min(size, int(np.ceil(x1))),
        min(size, int(np.ceil(y1))),
    )


def _rib_curve(anatomy: Anatomy, side: str, k: int, x: np.ndarray) -> np.ndarray:
    """Row of rib ``k`` at column ``x``: ribs run down and outwards from the spine."""
    mid = anatomy.size / 2
    lung_rx = anatomy.lung(side)[2]
    lateral = np.abs(x - mid) / (2.2 * lung_rx)
    return anatomy.rib_top + k * anatomy.rib_spacing + anatomy.rib_drop * lateral**2


def _ribs(anatomy: Anatomy, fracture: Finding | None = None) -> np.ndarray:
    """Rib intensity map (0..1); a fracture replaces the rib inside its box by a broken, displaced one."""
    size = anatomy.size
    x, y = _grid(size)
    u = size / 64
    thickness = 1.3 * u
    total = np.zeros((size, size), dtype=np.float32)
    mid = size / 2
    for side in SIDES:
        half = x < mid if side == "right" else x >= mid
        for k in range(6):
            row = _rib_curve(anatomy, side, k, x)
            profile = np.clip(1.0 - np.abs(y - row) / thickness, 0.0, 1.0)
            if fracture is not None and fracture.params[0] == SIDES.index(side) and fracture.params[1] == k:
                xf, shift, gap = fracture.params[2], fracture.params[3], fracture.params[4]
                outward = (x - xf) * (1 if side == "left" else -1) > 0
                broken = np.clip(1.0 - np.abs(y - row - shift * outward) / thickness, 0.0, 1.0)
                broken = broken * (np.abs(x - xf) > gap)
                inside = _box_mask(size, fracture.xyxy)
                profile = np.where(inside, broken, profile)
            total += profile * half
    return np.clip(total, 0.0, 1.0)


def _effusion(anatomy: Anatomy, side: str, level: float, rise: float) -> np.ndarray:
    """Fluid fraction (0..1) in the lung base below a meniscus that climbs the lateral wall."""
    size = anatomy.size
    x, y = _grid(size)
    cx, cy, rx, ry = anatomy.lung(side)
    lateral = np.abs(x - cx) / rx
    outward = (x < cx) if side == "right" else (x > cx)
    meniscus = level - rise * lateral**2 * outward
    return np.clip((y - meniscus) / (1.5 * size / 64), 0.0, 1.0) * _ellipse(size, (cx, cy, rx, ry))


def render(anatomy: Anatomy, findings: list[Finding]) -> np.ndarray:
    """Draw the film with the given findings; deterministic given ``anatomy`` (noise included).

    Shapes: -> (S, S) float32 in [0, 1].
    """
    size = anatomy.size
    x, y = _grid(size)
    u = size / 64
    by_kind = {f.kind: f for f in findings}
    image = 0.04 + anatomy.tissue * _ellipse(size, anatomy.body, ramp=2.0 * u)
    lungs = np.maximum(_ellipse(size, anatomy.lungs[0]), _ellipse(size, anatomy.lungs[1]))
    image = image - (anatomy.tissue - anatomy.lung_level) * lungs
    spine = np.clip(1.0 - np.abs(x - size / 2) / (2.2 * u), 0.0, 1.0) * (y > 6 * u)
    image = np.maximum(image, (anatomy.tissue + 0.08) * spine * _ellipse(size, anatomy.body))
    heart = anatomy.heart
    if "cardiomegaly" in by_kind:
        scale_x, scale_y = by_kind["cardiomegaly"].params[:2]
        heart = (heart[0], heart[1], heart[2] * scale_x, heart[3] * scale_y)
    image = np.maximum(image, (anatomy.tissue + 0.1) * _ellipse(size, heart))
    image = image + 0.16 * _ribs(anatomy, by_kind.get("rib fracture")) * _ellipse(size, anatomy.body)
    for finding in findings:
        if finding.kind in ("opacity", "nodule"):
            cx, cy, radius, amplitude = finding.params
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            if finding.kind == "opacity":  # a soft Gaussian blob cut at 2 sigma
                blob = np.exp(-0.5 * (d / (radius / 2)) ** 2) * (d < radius)
            else:  # a small dense disc with a one-pixel soft edge
                blob = np.clip(radius - d + 0.5, 0.0, 1.0)
            image = image + amplitude * blob
        elif finding.kind == "pleural effusion":
            fluid = _effusion(anatomy, finding.location, *finding.params)
            image = image + 0.85 * (anatomy.tissue - anatomy.lung_level) * fluid
    image = image * (1.0 + anatomy.gradient * (x - size / 2) / size)
    noise = np.random.default_rng(anatomy.noise_seed).normal(0.0, anatomy.noise_sigma, (size, size))
    image = np.clip(image + noise, 0.0, 1.0) ** anatomy.gamma
    return image.astype(np.float32)


# --------------------------------------------------------------------------- sampling


def sample_anatomy(rng: np.random.Generator, size: int = 64) -> Anatomy:
    """A normal film's geometry and intensities, with patient-to-patient variation."""
    u = size / 64
    j = lambda scale: rng.uniform(-scale, scale) * u  # noqa: E731 - a jitter of ``scale`` pixels
    lung_ry = 17.0 * u + j(1.5)
    lung_cy = 29.0 * u + j(1.5)
    lung_rx = 9.0 * u + j(1.0)
    gap = 12.0 * u + j(1.0)
    right = (size / 2 - gap, lung_cy + j(0.5), lung_rx, lung_ry)
    left = (size / 2 + gap, lung_cy + j(0.5), lung_rx + j(0.5), lung_ry + j(0.5))
    heart = (size / 2 + 4.0 * u + j(1.0), lung_cy + 9.0 * u + j(1.0), 10.0 * u + j(0.8), 7.5 * u + j(0.6))
    return Anatomy(
        size=size,
        body=(size / 2 + j(1.0), 34.0 * u + j(1.0), 28.0 * u + j(1.5), 31.0 * u + j(1.0)),
        lungs=(right, left),
        heart=heart,
        rib_top=lung_cy - lung_ry + 1.5 * u + j(0.8),
        rib_spacing=5.6 * u + j(0.4),
        rib_drop=6.0 * u + j(1.0),
        tissue=float(rng.uniform(0.45, 0.55)),
        lung_level=float(rng.uniform(0.12, 0.2)),
        gradient=float(rng.uniform(-0.15, 0.15)),
        gamma=float(rng.uniform(0.85, 1.15)),
        noise_sigma=float(rng.uniform(0.02, 0.04)),
        noise_seed=int(rng.integers(2**31)),
    )


def _point_in_zone(
    rng: np.random.Generator, anatomy: Anatomy, side: str, zone: str, margin: float
) -> tuple[float, float]:
    """A point well inside the lung zone (``margin`` pixels from the lung edge)."""
    cx, cy, rx, ry = anatomy.lung(side)
    top, bottom = anatomy.zone_rows(side, zone)
    third = bottom - top
    for _ in range(100):
        py = rng.uniform(top + 0.25 * third, bottom - 0.25 * third)
        half = rx * np.sqrt(max(0.0, 1 - ((py - cy) / ry) ** 2)) - margin
        if half > 0.5:
            return float(cx + rng.uniform(-half, half)), float(py)
    return float(cx), float((top + bottom) / 2)


_LUNG_FINDING_SIZES = {  # (radius range in pixels at S = 64, amplitude range); see the module docstring
    ("standard", "opacity"): ((6.0, 7.5), (0.35, 0.45)),
    ("standard", "nodule"): ((3.0, 4.0), (0.5, 0.6)),
    ("hard", "opacity"): ((4.0, 5.5), (0.25, 0.35)),
    ("hard", "nodule"): ((1.6, 2.4), (0.35, 0.45)),
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")


def sample_finding(
    rng: np.random.Generator, anatomy: Anatomy, kind: str, location: str, variant: str = "standard"
) -> Finding:
    """Draw the parameters and the box of one finding of ``kind`` at ``location`` (sizes per ``variant``)."""
    _check_variant(variant)
    size, u = anatomy.size, anatomy.size / 64
    if kind in ("opacity", "nodule"):
        side, zone = location.split()
        (r_lo, r_hi), (a_lo, a_hi) = _LUNG_FINDING_SIZES[(variant, kind)]
        radius, amplitude = rng.uniform(r_lo, r_hi) * u, rng.uniform(a_lo, a_hi)
        cx, cy = _point_in_zone(rng, anatomy, side, zone, margin=radius * 0.5)
        reach = radius + (0.5 if kind == "nodule" else 0.0)
        box = _clip_box(size, cx - reach, cy - reach, cx + reach, cy + reach)
        return Finding(kind, location, box, (cx, cy, radius, amplitude))
    if kind == "pleural effusion":
        cx, cy, rx, ry = anatomy.lung(location)
        level = cy + ry * rng.uniform(0.55, 0.7)
        rise = rng.uniform(2.0, 4.0) * u
        rows, cols = np.nonzero(_effusion(anatomy, location, level, rise))
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        return Finding(kind, location, box, (level, rise))
    if kind == "cardiomegaly":
        scale_x, scale_y = rng.uniform(1.35, 1.5), rng.uniform(1.15, 1.25)
        hx, hy, hrx, hry = anatomy.heart
        box = _clip_box(
            size, hx - hrx * scale_x - 1, hy - hry * scale_y - 1, hx + hrx * scale_x + 1, hy + hry * scale_y + 1
        )
        return Finding(kind, location, box, (scale_x, scale_y))
    if kind == "rib fracture":
        side, zone = location.split()
        cx, _, rx, _ = anatomy.lung(side)
        top, bottom = anatomy.zone_rows(side, zone)
        outward = -1 if side == "right" else 1
        for _ in range(200):  # a rib crossing the zone, broken over the lateral half of the lung
            k = int(rng.integers(6))
            xf = float(cx + outward * rng.uniform(0.0, 0.6) * rx)
            row = float(_rib_curve(anatomy, side, k, np.array(xf)))
            if top + 1.0 <= row <= bottom - 1.0:
                break
        shift, gap = rng.uniform(2.5, 3.5) * u, rng.uniform(1.5, 2.2) * u
        half = 4.5 * u
        box = _clip_box(size, xf - half, row - half, xf + half, row + half)
        return Finding(kind, location, box, (float(SIDES.index(side)), float(k), xf, shift, gap))
    raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")


def _location_for(rng: np.random.Generator, kind: str) -> str:
    if kind in ("opacity", "nodule", "rib fracture"):
        return str(rng.choice(LUNG_ZONES))
    if kind == "pleural effusion":
        return str(rng.choice(SIDES))
    return "heart"


def sample_findings(rng: np.random.Generator, anatomy: Anatomy, variant: str = "standard") -> list[Finding]:
    """0 findings (normal, 30%), 1 (45%) or 2 (25%), at most one per kind, of the variant's kinds."""
    kinds_of = VARIANT_KINDS[variant]
    count = int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))
    kinds = rng.choice(len(kinds_of), size=count, replace=False)
    return [sample_finding(rng, anatomy, kinds_of[k], _location_for(rng, kinds_of[k]), variant) for k in sorted(kinds)]


def generate_study(seed: int, index: int, size: int = 64, variant: str = "standard") -> Study:
    """Study ``index`` of the stream ``seed`` (independent of how many others are drawn)."""
    _check_variant(variant)
    rng = np.random.default_rng([seed, index])
    anatomy = sample_anatomy(rng, size)
    findings = sample_findings(rng, anatomy, variant)
    return Study(render(anatomy, findings), findings, write_report(rng, findings), anatomy, (seed, index))


def generate_studies(count: int, seed: int, size: int = 64, start: int = 0, variant: str = "standard") -> list[Study]:
    """``count`` studies of the stream ``seed``, indices ``start .. start + count - 1``, of one variant."""
    _check_variant(variant)
    if count < 0:
        raise ValueError(f"count: expected >= 0, got {count}")
    if size < 32:
        raise ValueError(f"size: expected >= 32 pixels, got {size}")
    return [generate_study(seed, start + i, size, variant) for i in range(count)]


def without(study: Study, finding: Finding) -> np.ndarray:
    """The same film re-rendered without one of its findings (for checking boxes)."""
    return render(study.anatomy, [f for f in study.findings if f != finding])


# --------------------------------------------------------------------------- data set and image files


class RadiographDataset(Dataset):
    """Studies as tensors for teacher-forced training.

    Shapes: item -> {"image": (1, S, S) float, "tokens": (max_len,) long, "index": () long};
    default collate adds a leading B.
    """

    def __init__(self, studies: list[Study], vocab: Vocabulary, max_len: int) -> None:
        if not studies:
            raise ValueError("studies: expected at least one study, got none")
        self.studies = studies
        self.vocab = vocab
        self.images = torch.from_numpy(np.stack([s.image for s in studies]))[:, None]
        self.tokens = torch.tensor([vocab.encode(s.report, max_len) for s in studies], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "tokens": self.tokens[i], "index": torch.tensor(i)}


def max_report_length(studies: list[Study]) -> int:
    """Longest report in tokens, BOS and EOS included."""
    return max(len(tokenize(s.report)) + 2 for s in studies)


def save_png(image: np.ndarray | Tensor, path: Path) -> Path:
    """Write a (H, W) image in [0, 1] as an 8-bit grayscale PNG."""
    from PIL import Image

    array = image.numpy() if isinstance(image, Tensor) else np.asarray(image)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8), mode="L").save(path)
    return path


def load_png(path: Path, size: int) -> np.ndarray:
    """Read a PNG (any mode) as a (size, size) grayscale float32 image in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: no such file {str(path)!r}")
    try:
        with Image.open(path) as img:  # reads the header only; the size is checked before any pixel is decoded
            width, height = img.size
            if (width, height) != (size, size):
                raise ValueError(f"image: expected a {size}x{size} image, got {width}x{height} ({path})")
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image: cannot read {str(path)!r} as an image ({error})") from None
