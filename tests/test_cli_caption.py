"""`crossfuse caption-train` then `crossfuse caption` end to end, in subprocesses; one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossfuse.checkpoint import load_captioner
from crossfuse.cli import main
from crossfuse.data.radiographs import SPECIALS, save_png, tokenize

pytestmark = pytest.mark.usefixtures("one_thread")


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: one thread is as fast and immune to busy cores


def crossfuse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossfuse.cli", *args], capture_output=True, text=True, env=ENV, timeout=300
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caption") / "run"
    done = crossfuse("caption-train", "--out", str(out), "--size", "smoke", "--samples", "2")
    assert done.returncode == 0, done.stderr
    assert "captioner saved to" in done.stdout
    return out


def test_caption_train_writes_a_loadable_run(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "model.safetensors", "samples"}
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "study_00.png",
        "study_00.txt",
        "study_01.png",
        "study_01.txt",
    ]
    model, vocab = load_captioner(run_dir)
    assert model.config.image_size == 64 and tuple(vocab.tokens[:4]) == SPECIALS
    assert model.config.encoder == "local"  # the default: tokens that stay local


def check_heatmaps(report: str, summary: str, out: Path, run_dir: Path) -> None:
    _, vocab = load_captioner(run_dir)
    words = tokenize(report)
    assert all(w in vocab.index for w in words)
    alphabetic = [w for w in words if w.isalpha()]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == len(alphabetic) and summary.startswith(f"{len(alphabetic)} word heatmaps")
    assert all((out / f).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for f in files)
    assert [f.split("_", 1)[1][:-4] for f in files] == alphabetic


def test_caption_end_to_end(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "heatmaps"
    image = run_dir / "samples" / "study_00.png"
    done = crossfuse(
        "caption",
        "--run",
        str(run_dir),
        "--image",
        str(image),
        "--beam",
        "3",
        "--heatmaps",
        str(out),
        "--method",
        "gradient",
    )
    assert done.returncode == 0, done.stderr
    report, summary = done.stdout.strip().splitlines()
    check_heatmaps(report, summary, out, run_dir)
    assert "gradient attention maps" in summary


def test_caption_train_encoder_flags(tmp_path: Path) -> None:
    out = tmp_path / "vit"
    args = ("--size", "smoke", "--samples", "0", "--encoder", "vit", "--registers", "2", "--finding-loss", "0")
    done = crossfuse("caption-train", "--out", str(out), *args)
    assert done.returncode == 0, done.stderr
    config = load_captioner(out)[0].config
    assert config.encoder == "vit" and config.registers == 2
    bad = crossfuse("caption-train", "--out", str(tmp_path / "x"), "--encoder", "cnn")
    assert bad.returncode == 2 and "--encoder" in bad.stderr


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--finding-loss", "-1"), "--finding-loss: expected a finite weight >= 0"),
        (("--finding-loss", "nan"), "--finding-loss: expected a finite weight >= 0"),
        (("--registers", "2"), "--registers: expected >= 0, and only with the vit encoder; got 2 with 'local'"),
        (("--encoder", "vit", "--registers", "-1"), "--registers: expected >= 0"),
    ],
)
def test_caption_train_bad_flags_leave_no_run(tmp_path: Path, capsys, flags: tuple, needle: str) -> None:
    out = tmp_path / "run"
    code = main(["caption-train", "--out", str(out), "--size", "smoke", *flags])
    one_line_error(code, capsys.readouterr().err, needle)
    assert not out.exists()  # refused before the run directory is made


def test_caption_greedy_in_process(run_dir: Path, tmp_path: Path, capsys) -> None:
    image = str(run_dir / "samples" / "study_01.png")
    assert main(["caption", "--run", str(run_dir), "--image", image, "--heatmaps", str(tmp_path / "h")]) == 0
    report, summary = capsys.readouterr().out.strip().splitlines()
    check_heatmaps(report, summary, tmp_path / "h", run_dir)
    # without --heatmaps: the same report (decoding is deterministic) and nothing else
    assert main(["caption", "--run", str(run_dir), "--image", image, "--beam", "1"]) == 0
    assert capsys.readouterr().out.strip() == report


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_missing_run_is_a_one_line_error(tmp_path: Path) -> None:
    done = crossfuse("caption", "--run", str(tmp_path / "none"), "--image", "x.png")
    one_line_error(done.returncode, done.stderr, "run:", "caption-train")


def test_bad_inputs_are_one_line_errors(run_dir: Path, tmp_path: Path, capsys) -> None:
    image = str(run_dir / "samples" / "study_00.png")

    def check(args: list[str], *needles: str) -> None:
        code = main(args)
        one_line_error(code, capsys.readouterr().err, *needles)

    small = save_png(np.zeros((32, 48)), tmp_path / "small.png")
    check(["caption", "--run", str(run_dir), "--image", str(small)], "expected a 64x64", "48x32")
    junk = tmp_path / "junk.png"
    junk.write_text("not a png")
    check(["caption", "--run", str(run_dir), "--image", str(junk)], "cannot read")
    check(["caption", "--run", str(run_dir), "--image", str(tmp_path / "missing.png")], "image:", "no such file")
    check(["caption", "--run", str(run_dir), "--image", image, "--beam", "0"], "--beam")
    check(["caption-train", "--out", str(run_dir), "--size", "smoke"], "--out", "--force")
