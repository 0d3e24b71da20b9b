"""The hand-built demo: the word's attention lands on patches of its colour."""

import subprocess
import sys

import pytest

from crossfuse.demo import COLOURS, toy_image, word_attention


@pytest.mark.parametrize("word", ["red", "green", "blue"])
def test_word_attends_to_its_colour(word: str) -> None:
    image = toy_image(seed=3)
    weights = word_attention(image, word)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    target = image == COLOURS.index(word)
    # every target patch outweighs every other patch
    assert weights[target].min() > weights[~target].max()


def test_cli_demo_writes_png(tmp_path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "crossfuse.cli", "attention-demo", "--out", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "attention mass on red patches" in run.stdout
    assert (out / "attention_demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_word_is_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "crossfuse.cli", "attention-demo", "--word", "pink"], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "--word" in run.stderr and "Traceback" not in run.stderr
