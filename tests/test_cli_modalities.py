"""CLI for issue 14: --modality-dropout, evaluate --drop, compare's baseline row / gap / ablation, --task multilabel."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossfuse.ablation import drop
from crossfuse.baseline import LinearBaseline, baseline_metrics
from crossfuse.cli import main
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.npz import load_npz, seeded_split, split_dataset
from crossfuse.multilabel import multilabel_metrics
from crossfuse.runs import load_run
from crossfuse.train import classification_metrics, predict

SMALL = ["--epochs", "2", "--batch-size", "32", "--dim", "8", "--heads", "2", "--layers", "1"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """two.npz (classes 0/1/2, a's presence flags), multi.npz ((N, 3) 0/1 labels)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    n = 150
    a, b = rng.normal(size=(n, 4, 3)).astype(np.float32), rng.normal(size=(n, 2, 2)).astype(np.float32)
    score = a[:, :, 0].mean(1) + b[:, :, 1].mean(1)
    present = rng.random(n) > 0.1
    np.savez(root / "two.npz", a=a, b=b, a__present=present, y=np.digitize(score, [-0.3, 0.3]))
    labels = np.stack([a[:, :, 0].mean(1) > 0, b[:, :, 0].mean(1) > 0, score > 0], axis=1).astype(np.int64)
    np.savez(root / "multi.npz", a=a, b=b, y=labels)
    return root


def test_train_with_modality_dropout_records_it_and_evaluate_drop(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(data_dir / "two.npz"), "--out", str(out), "--quiet", *SMALL,
                 "--modality-dropout", "0.4"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "task: classification (integer labels y); pass --task regression to override" in printed
    assert "modality dropout 0.4" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["fusion_config"]["modality_dropout"] == 0.4
    assert main(["evaluate", "--run", str(out), "--drop", "a"]) == 0
    line = capsys.readouterr().out
    # the reference: the same rows, a's masks all False, through the library
    run = load_run(out)
    data, _ = load_npz(data_dir / "two.npz")
    test = split_dataset(data, seeded_split(len(data), 0))["test"]
    want = classification_metrics(predict(run.model, drop(test, ["a"])), test.y)
    assert "without a" in line and f"accuracy {want['accuracy']:.4f}" in line
    assert main(["evaluate", "--run", str(out), "--drop", "c"]) == 2
    assert "--drop: unknown modalities ['c']" in capsys.readouterr().err
    assert main(["train", "--data", str(data_dir / "two.npz"), "--out", str(tmp_path / "r2"), "--modality-dropout",
                 "1"]) == 2  # fmt: skip
    assert "--modality-dropout: expected a probability in [0, 1), got 1.0" in capsys.readouterr().err


def test_compare_prints_baseline_row_gap_and_ablation(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(data_dir / "two.npz"), "--fusions", "early,late", "--seeds", "2"]
    assert main([*args, "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("fusion")))
    assert lines[table + 1].startswith("baseline") and lines[table + 1].split()[-1] == "-"
    # the baseline row is a LinearBaseline fitted on the training rows, scored on the test rows
    data, _ = load_npz(data_dir / "two.npz")
    parts = split_dataset(MultimodalDataset(data.inputs, data.y, data.masks), seeded_split(len(data), 0))
    want = baseline_metrics(LinearBaseline("classification", 3).fit(parts["train"]), parts["test"])
    rows = {r["fusion"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert float(rows["baseline"]["test_accuracy_mean"]) == pytest.approx(want["accuracy"], abs=1e-5)
    for name in ("early", "late"):
        gap = float(rows[name]["test_accuracy_mean"]) - float(rows["baseline"]["test_accuracy_mean"])
        assert float(rows[name]["gap"]) == pytest.approx(gap, abs=1e-5)
    # ablation table: one row per fusion, the full metric then each modality dropped
    start = lines.index(next(line for line in lines if line.startswith("ablation on test")))
    assert lines[start + 1].split() == ["accuracy", "-a", "-b"]
    assert [lines[start + 2].split()[0], lines[start + 3].split()[0]] == ["early", "late"]
    summary = json.loads((out / "compare.json").read_text())
    raw = summary["raw"]["early"]
    assert summary["ablation"]["early"]["full"] == pytest.approx(np.mean([r["test_accuracy"] for r in raw]))
    assert set(summary["ablation"]["early"]["dropped"]) == {"a", "b"}


def test_multilabel_is_inferred_trained_evaluated_and_predicted(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "multi"
    assert main(["train", "--data", str(data_dir / "multi.npz"), "--out", str(out), "--quiet", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "task: multilabel (y is (N, 3) with values in {0, 1}); pass --task regression to override" in printed
    assert "task multilabel, 3 labels" in printed and "map " in printed
    assert main(["evaluate", "--run", str(out)]) == 0
    line = capsys.readouterr().out
    run = load_run(out)
    data, _ = load_npz(data_dir / "multi.npz")
    test = split_dataset(data, seeded_split(len(data), 0))["test"]
    want = multilabel_metrics(predict(run.model, test), test.y.float())
    assert f"micro_f1 {want['micro_f1']:.4f}  macro_f1 {want['macro_f1']:.4f}  map {want['map']:.4f}" in line
    csv_path = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(out), "--data", str(data_dir / "multi.npz"), "--out", str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    logits = predict(run.model, data)
    assert [int(rows[0][f"label_{k}"]) for k in range(3)] == (logits[0] > 0).long().tolist()
    assert float(rows[0]["prob_2"]) == pytest.approx(torch.sigmoid(logits[0, 2]).item(), rel=1e-5)
    assert main(["train", "--data", str(data_dir / "two.npz"), "--out", str(tmp_path / "bad"), "--task",
                 "multilabel", *SMALL]) == 2  # fmt: skip
    assert "multilabel needs label indicators of shape (N, K)" in capsys.readouterr().err
