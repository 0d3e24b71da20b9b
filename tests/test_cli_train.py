"""`crossfuse train / evaluate / predict / compare` on a user .npz: exit codes, files, messages."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import crossfuse.train
from crossfuse.cli import main
from crossfuse.data.npz import load_npz, seeded_split
from crossfuse.run_dir import MARKER_FILE
from crossfuse.runs import load_run
from crossfuse.train import classification_metrics, predict, regression_metrics

SMALL = ["--epochs", "2", "--batch-size", "32", "--dim", "8", "--heads", "2", "--layers", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toy.npz (labels 2/5/9, a masked modality), reg.npz (float targets), new.npz (no y), bad.npz (NaN)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    n = 120
    image = rng.normal(size=(n, 6, 4)).astype(np.float32)
    text = rng.normal(size=(n, 3, 2)).astype(np.float32)
    score = image[:, :, 0].mean(1) + text[:, :, 1].mean(1)
    labels = np.array([2, 5, 9])[np.digitize(score, [-0.3, 0.3])]
    mask = rng.random((n, 3)) > 0.2
    np.savez(root / "toy.npz", image=image, text=text, text__mask=mask, y=labels)
    np.savez(root / "reg.npz", image=image, text=text, y=(100 + 20 * score).astype(np.float32))
    np.savez(root / "new.npz", image=image[:7], text=text[:7])
    bad = image.copy()
    bad[3, 2, :2] = np.nan
    np.savez(root / "bad.npz", image=bad, text=text, y=labels)
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a fresh interpreter (one intra-op thread: tiny models, shared CI cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "crossfuse.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossfuse: error: "), stderr
    assert "Traceback" not in stderr and all(n in lines[0] for n in needles), lines[0]


def test_train_subprocess_writes_the_run_and_refuses_to_overwrite(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = cli(
        "train", "--data", str(data_dir / "toy.npz"), "--fusion", "cross", "--out", str(out), "--threads", "1", *SMALL
    )
    assert run.returncode == 0, run.stderr
    assert "split train 84 / val 18 / test 18 (seeded" in run.stdout
    assert "task classification, 3 classes [2, 5, 9]" in run.stdout
    assert "final (epoch 2): val accuracy" in run.stdout and "epoch 1/2  train_loss" in run.stdout
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "best",
        "last",
        "curves.png",
        MARKER_FILE,
    }
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    again = cli("train", "--data", str(data_dir / "toy.npz"), "--out", str(out), *SMALL)
    assert again.returncode == 2
    assert_one_line_error(again.stderr, str(out), "already exists", "--force", "--resume")


def test_bad_data_subprocess_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    run = cli("train", "--data", str(data_dir / "bad.npz"), "--out", str(tmp_path / "run"))
    assert run.returncode == 2
    assert_one_line_error(run.stderr, "--data", "'image' contains 2 NaN and 0 Inf values")
    assert not (tmp_path / "run").exists()  # nothing created for a failed start


def test_evaluate_and_predict_in_process(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(data_dir / "toy.npz"), "--fusion", "late", "--out", str(out), "--quiet", *SMALL])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 0
    printed = capsys.readouterr().out
    # the same numbers by hand: the test rows of the seeded split, the best checkpoint
    run = load_run(out)
    data, _ = load_npz(data_dir / "toy.npz")
    rows = torch.from_numpy(np.flatnonzero(seeded_split(len(data), 0) == 2))
    test = data.subset(rows)
    metrics = classification_metrics(predict(run.model, test), run.targets.encode(test.y))
    assert printed.startswith("test (18 rows of") and "best checkpoint" in printed
    assert f"accuracy {metrics['accuracy']:.4f}  macro_f1 {metrics['macro_f1']:.4f}" in printed

    preds = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(out), "--data", str(data_dir / "new.npz"), "--out", str(preds)]) == 0
    table = list(csv.reader(preds.open()))
    assert table[0] == ["row", "prediction", "prob_2", "prob_5", "prob_9"] and len(table) == 8
    new, _ = load_npz(data_dir / "new.npz", require_y=False)
    expected = run.targets.decode(predict(run.model, new)).tolist()
    assert [int(r[1]) for r in table[1:]] == expected
    assert all(abs(sum(float(p) for p in r[2:]) - 1) < 1e-4 for r in table[1:])
    assert main(["predict", "--run", str(out), "--data", str(data_dir / "new.npz"), "--out", str(preds)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(out), "--data", str(data_dir / "reg.npz")]) == 2
    assert "classification needs integer labels" in capsys.readouterr().err


def test_force_resume_and_messages(data_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    base = ["train", "--data", str(data_dir / "toy.npz"), "--fusion", "early", "--out", str(out), "--quiet", *SMALL]
    real_fit = crossfuse.train.fit

    def fit_with_a_warning(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        result.messages.append("modality 'text' gradient share stayed below 10% for 60 steps (steps 0-59)")
        return result

    monkeypatch.setattr(crossfuse.train, "fit", fit_with_a_warning)
    assert main(base) == 0
    first = capsys.readouterr().out
    assert "warning: modality 'text' gradient share stayed below 10%" in first
    final = next(line for line in first.splitlines() if line.startswith("final"))
    assert main([*base, "--resume"]) == 0  # finished run: nothing left to train, same result
    assert final in capsys.readouterr().out
    assert main([*base, "--resume", "--lr", "0.5"]) == 2
    refused = capsys.readouterr().err
    assert "lr=0.001 (now 0.5)" in refused and refused.rstrip().endswith("start over with --force or a new --out")
    assert main([*base, "--force"]) == 0  # same seed: the same run again
    assert final in capsys.readouterr().out
    assert main([*base[:4], "cross", *base[5:], "--resume"]) == 2  # another model for this run
    assert "holds a different model (early)" in capsys.readouterr().err


def test_regression_metrics_are_in_the_users_units(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reg"
    assert (
        main(["train", "--data", str(data_dir / "reg.npz"), "--fusion", "late", "--out", str(out), "--quiet", *SMALL])
        == 0
    )
    trained = capsys.readouterr().out
    assert "task regression" in trained
    # training logs the validation mse in units of y too, under its own name (final weights = last/)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["val_mse_y_units"] for r in records if "val_mse_y_units" in r]
    assert logged and "mse_y_units" in trained and not any("val_mse" in r for r in records)
    assert main(["evaluate", "--run", str(out), "--split", "val", "--checkpoint", "last"]) == 0
    assert f"mse {logged[-1]:.4f}" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(out), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    run = load_run(out)
    data, _ = load_npz(data_dir / "reg.npz")
    val = data.subset(torch.from_numpy(np.flatnonzero(seeded_split(len(data), 0) == 1)))
    values = run.targets.decode(predict(run.model, val)).float()
    metrics = regression_metrics(values[:, None], val.y[:, None])
    assert f"r2 {metrics['r2']:.4f}  mse {metrics['mse']:.4f}" in printed
    assert metrics["mse"] > 1  # raw units (targets ~ 100 +- 20), not standardised


def test_compare_table_files_and_unknown_names(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(data_dir / "toy.npz"), "--fusions", "early,flatten", "--seeds", "2"]
    assert main([*args, "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "mean ± std over 2 seed(s)" in printed and printed.count("flatten seed") == 2
    header = next(line for line in printed.splitlines() if line.startswith("fusion"))
    assert header.split() == [
        "fusion",
        "val_accuracy",
        "val_macro_f1",
        "test_accuracy",
        "test_macro_f1",
        "parameters",
        "train_time_s",
        "gap_test_accuracy",
    ]
    summary = json.loads((out / "compare.json").read_text())
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the bar chart over seeds
    assert (out / "compare_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # per-epoch curves
    epochs = int(SMALL[SMALL.index("--epochs") + 1])
    for name in ("early", "flatten"):  # one curve per seed, one value per epoch; the last is the table's
        curves = summary["curves"][name]
        assert len(curves) == 2 and all(len(c["train_loss"]) == len(c["val_accuracy"]) == epochs for c in curves)
        final = [c["val_accuracy"][-1] for c in curves]
        assert final == pytest.approx([r["val_accuracy"] for r in summary["raw"][name]])
    assert [r["fusion"] for r in rows] == ["baseline", "early", "flatten"]
    for row, entry in zip(rows, summary["table"], strict=True):
        accuracies = [r["test_accuracy"] for r in summary["raw"][row["fusion"]]]
        assert float(row["test_accuracy_mean"]) == pytest.approx(np.mean(accuracies), abs=1e-5)
        assert entry["test_accuracy"]["std"] == pytest.approx(np.std(accuracies))
    assert main([*args, "--out", str(out)]) == 2  # compare.csv exists
    assert "pass --force" in capsys.readouterr().err
    assert main(["compare", "--data", str(data_dir / "toy.npz"), "--fusions", "cross,attn,early"]) == 2
    assert (
        "unknown fusion strategy 'attn'; known: bicross, cross, early, flatten, gated, late" in capsys.readouterr().err
    )


def test_precision_device_and_tensorboard_flags(data_dir: Path, tmp_path: Path, capsys) -> None:
    """bf16 autocast on CPU end to end; TensorBoard events beside metrics.jsonl; --force accepts them as ours."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "bf16"
    base = ["train", "--data", str(data_dir / "toy.npz"), "--out", str(out), "--quiet", *SMALL]
    assert main([*base, "--precision", "bf16", "--device", "auto", "--tensorboard"]) == 0
    stored = json.loads((out / "config.json").read_text())["train"]
    assert (stored["precision"], stored["device"], stored["tensorboard"]) == ("bf16", "auto", True)
    events = sorted(out.glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    logged = [e.value for e in accumulator.Scalars("epoch/train_loss")]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([r["train_loss"] for r in records if r.get("kind", "epoch") == "epoch"])
    capsys.readouterr()
    preds = tmp_path / "p.csv"
    args = ["--run", str(out), "--data", str(data_dir / "new.npz"), "--out", str(preds), "--precision", "bf16"]
    assert main(["predict", *args]) == 0
    assert main(["evaluate", "--run", str(out), "--precision", "bf16"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main([*base, "--force"]) == 0  # the event files are crossfuse's own: --force may delete them
    assert not list(out.glob("events.out.tfevents.*"))
    with pytest.raises(SystemExit) as parse_error:  # argparse exits during parsing
        main(["evaluate", "--run", str(out), "--precision", "fp8"])
    assert parse_error.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
