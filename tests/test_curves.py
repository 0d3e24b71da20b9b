"""Run curves: every recorded series is drawn with the recorded values; the PNG lands where asked."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from crossfuse.curves import compare_curves_figure, compare_curves_plot, compare_figure, curves_figure, plot_run


def records() -> list[dict]:
    epochs = [
        {
            "kind": "epoch",
            "epoch": e,
            "step": 10 * e,
            "lr": 1e-3 / e,
            "train_loss": 2.0 / e,
            "val_accuracy": 0.5 + e / 10,
        }
        for e in (1, 2, 3)
    ]
    steps = [
        {"kind": "step", "step": s, "grad_share/image": 0.8, "grad_share/text": 0.2, "grad_norm/image": 1.0}
        for s in range(30)
    ]
    return epochs + steps


def test_each_series_is_drawn_with_its_values() -> None:
    fig = curves_figure(records())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["training loss", "validation", "learning rate", "gradient share per modality"]
    loss, val, lr, share = fig.axes
    np.testing.assert_allclose(loss.lines[0].get_ydata(), [2.0, 1.0, 2.0 / 3])
    np.testing.assert_allclose(val.lines[0].get_ydata(), [0.6, 0.7, 0.8])
    np.testing.assert_allclose(lr.lines[0].get_ydata(), [1e-3, 5e-4, 1e-3 / 3])
    assert sorted(line.get_label().split()[0] for line in share.lines) == ["image", "text"]
    np.testing.assert_allclose(share.lines[0].get_ydata(), 0.8)
    plt.close(fig)
    no_monitor = curves_figure([r for r in records() if r["kind"] == "epoch"])
    assert len(no_monitor.axes) == 3
    plt.close(no_monitor)


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    path = plot_run(tmp_path)
    assert path == tmp_path / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    elsewhere = plot_run(tmp_path, tmp_path / "sub" / "c.png")
    assert elsewhere.is_file()
    with pytest.raises(ValueError, match=r"out: expected a \.png"):
        plot_run(tmp_path, tmp_path / "c.pdf")
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        plot_run(tmp_path / "missing")


def test_compare_figure_bars_are_means_with_std(tmp_path: Path) -> None:
    path = compare_figure({"cross": [0.8, 0.9], "late": [0.7]}, "accuracy", tmp_path / "bars.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_compare_curves_are_means_over_seeds_without_nan(tmp_path: Path) -> None:
    curves = {
        "cross": [{"loss": [1.0, 0.5], "acc": [0.5, float("nan")]}, {"loss": [3.0, 1.5], "acc": [0.7, 0.9]}],
        "late": [{"loss": [2.0], "acc": []}],
    }
    fig = compare_curves_plot(curves, ["loss", "acc"])
    loss, acc = fig.axes
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss.lines}
    assert drawn == {"cross": ([1, 2], [2.0, 1.0]), "late": ([1], [2.0])}
    (cross,) = acc.lines  # late has no accuracy: no line
    assert list(cross.get_ydata()) == pytest.approx([0.6, 0.9])  # the NaN of seed 0 is left out
    plt.close(fig)
    path = compare_curves_figure(curves, ["loss", "acc"], tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
