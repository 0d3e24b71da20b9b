"""Fake lab experiments for the runner, report and browser tests (the real ones are written elsewhere).

`install` registers fake modules under ``EXPERIMENTS`` so the real runner imports them; each fake is a tiny
module with ``CLAIM``, ``CRITERION`` and ``run`` like a real experiment.
"""

from __future__ import annotations

import struct
import sys
import types
import zlib
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossfuse.lab import result as lab_result
from crossfuse.lab.result import Result, Table

EVIL = "<script>alert(1)</script>"
RunFn = Callable[..., Any]


def png_bytes(rgb: np.ndarray) -> bytes:
    """A minimal PNG encoder (RGB, 8 bit) so the fakes need no matplotlib.

    Shapes: rgb: (H, W, 3) uint8  ->  PNG file bytes.
    """
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb.astype(np.uint8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# Explorer scene: a 64x64 image, 8x8 patches of 8 px; a red square on patches (1..2, 1..2), a blue one on (5..6, 5..6).
GRID, PATCH = 8, 8
RED_CELLS = [(1, 1), (1, 2), (2, 1), (2, 2)]
BLUE_CELLS = [(5, 5), (5, 6), (6, 5), (6, 6)]
TOKENS = ["the", "red", "square", "and", "the", "blue", "square"]


def _peaked(cells: list[tuple[int, int]]) -> list[float]:
    """Attention row with 80% of the mass on ``cells`` and 20% spread over the rest; sums to 1."""
    row = np.full(GRID * GRID, 0.2 / (GRID * GRID - len(cells)))
    for r, c in cells:
        row[r * GRID + c] = 0.8 / len(cells)
    return row.tolist()


def explorer_data(tokens: list[str] | None = None, box_label: str = "red square") -> dict[str, Any]:
    """One example in the ``extras["explorer"]`` schema. In "mean" "red" looks at the red square and "blue" at
    the blue one; "layer 2 / head 3" and the "gradient" method swap them; "layer 1 / head 1" is uniform."""
    tokens = tokens or TOKENS
    image = np.full((GRID * PATCH, GRID * PATCH, 3), 235, dtype=np.uint8)
    for cells, colour in ((RED_CELLS, (214, 39, 40)), (BLUE_CELLS, (31, 119, 180))):
        for r, c in cells:
            image[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = colour
    uniform = [1.0 / GRID**2] * GRID**2
    by_word = {"red": _peaked(RED_CELLS), "blue": _peaked(BLUE_CELLS)}
    swapped = {"red": by_word["blue"], "blue": by_word["red"]}
    example = {
        "image": "data:image/png;base64," + b64encode(png_bytes(image)).decode(),
        "image_size": [GRID * PATCH, GRID * PATCH],
        "grid": [GRID, GRID],
        "text": " ".join(tokens),
        "reference": "a red square and a blue square",
        "tokens": tokens,
        "attention": {
            "layer 1 / head 1": [uniform for _ in tokens],
            "mean": [by_word.get(t, uniform) for t in tokens],
            "layer 2 / head 3": [swapped.get(t, uniform) for t in tokens],
            "gradient": [swapped.get(t, uniform) for t in tokens],
        },
        "methods": ["mean", "gradient"],
        "boxes": [{"label": box_label, "xyxy": [8, 8, 24, 24]}, {"label": "blue square", "xyxy": [40, 40, 56, 56]}],
    }
    return {"kind": "binding", "examples": [example]}


def ok_result(size: str = "quick", seed: int = 0, extras: dict[str, Any] | None = None) -> Result:
    figure = png_bytes(np.tile(np.arange(16, dtype=np.uint8)[:, None, None] * 16, (1, 16, 3)))
    return Result(
        name="ok",
        claim="fake: cross-attention wins",
        criterion="accuracy >= 0.9",
        verdict="inconclusive" if size == "smoke" else "supported",
        measured="accuracy 0.912345",
        tables=[Table("accuracy by strategy", ["strategy", "accuracy", "seeds"], [["cross", 0.912345, 2]])],
        figures={"curve.png": figure},
        raw={"accuracy": [0.9, 0.924690]},
        wall_time_s=0.01,
        size=size,  # type: ignore[arg-type]
        seeds=[seed, seed + 1],
        extras=extras or {},
    )


@dataclass(frozen=True)
class FakePlan:
    """The fakes' plan: what the runner reads (seeds, expected_s) plus the size, so results can echo it."""

    seeds: int
    expected_s: float | None
    size: str


FAKE_PLANS = {size: FakePlan(2, 1.0, size) for size in ("smoke", "quick", "full")}


def run_ok(plan: FakePlan, seeds: list[int], progress: Any) -> Result:
    for stage in ("making data", "training cross, seed 1/2", "training cross, seed 2/2"):
        progress(stage)
    print("stdout line from ok")
    print("stderr line from ok", file=sys.stderr)
    return ok_result(plan.size, seeds[0])


def run_boom(plan: FakePlan, seeds: list[int], progress: Any) -> Result:
    progress("about to fail")
    raise RuntimeError("boom: the fake experiment failed on purpose")


def run_not_a_result(plan: FakePlan, seeds: list[int], progress: Any) -> Any:
    return {"verdict": "supported"}


def run_interrupt(plan: FakePlan, seeds: list[int], progress: Any) -> Result:
    raise KeyboardInterrupt


def evil_result(size: str = "quick", seed: int = 0) -> Result:
    """Every user-visible string carries a script tag; figure names try to leave the directory."""
    data = explorer_data(tokens=["the", EVIL, "square"], box_label=EVIL)
    data["examples"][0]["attention"][EVIL] = data["examples"][0]["attention"]["mean"]
    data["examples"][0]["reference"] = EVIL + "</script><!--"
    return Result(
        name=EVIL,
        claim=f"claim {EVIL}",
        criterion=f"criterion {EVIL}",
        verdict="not supported",
        measured=f"measured {EVIL}",
        tables=[Table(f"title {EVIL}", [EVIL, "value"], [[EVIL, 1.5]])],
        figures={"../evil.png": ok_result().figures["curve.png"], "notpng.svg": b"<svg onload=alert(1)>"},
        raw={EVIL: EVIL},
        size=size,  # type: ignore[arg-type]
        seeds=[seed],
        extras={"explorer": data},
    )


def run_evil(plan: FakePlan, seeds: list[int], progress: Any) -> Result:
    progress(EVIL)
    return evil_result(plan.size, seeds[0])


def run_explorer(plan: FakePlan, seeds: list[int], progress: Any) -> Result:
    return ok_result(plan.size, seeds[0], extras={"explorer": explorer_data()})


def make_module(name: str, run: RunFn, claim: str = "fake claim") -> types.ModuleType:
    module = types.ModuleType(name)
    module.CLAIM, module.CRITERION, module.run = claim, "fake criterion", run  # type: ignore[attr-defined]
    module.PRECONDITION, module.PLANS = "fake precondition", FAKE_PLANS  # type: ignore[attr-defined]
    return module


def install(monkeypatch: Any, runs: dict[str, RunFn | str]) -> None:
    """Point ``EXPERIMENTS`` at fakes: a run function becomes module ``fake_lab_<name>``; a string is a module path
    used as is (e.g. one that does not exist)."""
    registry = {}
    for name, run in runs.items():
        if isinstance(run, str):
            registry[name] = run
            continue
        module_name = f"fake_lab_{name}"
        monkeypatch.setitem(sys.modules, module_name, make_module(module_name, run, claim=f"claim of {name}"))
        registry[name] = module_name
    monkeypatch.setattr(lab_result, "EXPERIMENTS", registry)
