"""Smoke run of the report experiment; the report metrics on an oracle (gradient_highway: test_lab_highway.py)."""

import json

import numpy as np
import pytest
import torch

from crossfuse.data.radiographs import generate_studies, tokenize
from crossfuse.lab import report_generation
from crossfuse.lab.grounding import FINDING_WORDS
from crossfuse.lab.result import Result, run_experiment

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def check_result(result: Result, name: str) -> None:
    assert isinstance(result, Result) and result.name == name
    assert result.verdict == "inconclusive" and result.size == "smoke"
    assert result.claim and result.criterion and result.measured and result.tables
    assert all(data.startswith(PNG) for data in result.figures.values()) and result.figures
    json.dumps(result.to_json(), allow_nan=False)  # strict JSON: no NaN in raw or tables


def test_report_smoke_run_and_explorer_schema() -> None:
    stages: list[str] = []
    result = run_experiment("report", "smoke", 3, progress=stages.append)
    check_result(result, "report")
    assert result.seeds == [3] and any("training" in s for s in stages)
    explorer = result.extras["explorer"]
    assert explorer["kind"] == "report" and len(explorer["examples"]) == report_generation.EXPLORER_EXAMPLES
    plan = report_generation.PLANS["smoke"]
    for example in explorer["examples"]:
        assert example["image"].startswith("data:image/png;base64,")
        assert example["image_size"] == [64, 64] and example["grid"] == [8, 8]
        heads = {f"layer {layer} / head {head}" for layer in (1, 2) for head in range(1, plan.num_heads + 1)}
        assert set(example["attention"]) == {"mean"} | heads
        for maps in example["attention"].values():
            assert len(maps) == len(example["tokens"]) and all(len(row) == 64 for row in maps)
            assert all(abs(sum(row) - 1) < 1e-4 for row in maps)
        assert all(len(box["xyxy"]) == 4 and box["label"] for box in example["boxes"])
    assert any(example["boxes"] for example in explorer["examples"])


def test_report_metrics_on_an_oracle() -> None:
    """Reference reports with attention on the finding's box score perfectly; uniform attention does not."""
    studies = [s for s in generate_studies(40, seed=5) if s.findings][:12]
    words = [tokenize(s.report) for s in studies]
    focused, uniform = [], []
    for s, w in zip(studies, words, strict=True):
        att = torch.full((len(w), 2, 4, 64), 1 / 64)
        uniform.append(att.clone())
        for t, word in enumerate(w):
            finding = next((f for f in s.findings if f.kind == FINDING_WORDS.get(word)), None)
            if finding is not None:
                x0, y0, x1, y1 = finding.xyxy
                cell = ((y0 + y1) // 2 // 8) * 8 + (x0 + x1) // 2 // 8
                att[t] = 0.0
                att[t, :, :, cell] = 1.0
        focused.append(att)
    metrics, per_kind = report_generation.evaluate_reports(words, focused, studies)
    present = {f.kind for s in studies for f in s.findings}
    assert all(per_kind[kind]["f1"] == 1.0 and per_kind[kind]["pointing"] == 1.0 for kind in present)
    assert metrics["bleu4"] == pytest.approx(100.0) and metrics["f1"] == 1.0 and metrics["exact"] == 1.0
    assert metrics["pointing"] == 1.0 and metrics["grounded_words"] >= len(studies)
    assert metrics["mass_in_box"] > metrics["box_share"]
    assert 0.0 < report_generation.reworded_bleu(studies) < 100.0  # phrasing varies even for the same findings
    flat, _ = report_generation.evaluate_reports(words, uniform, studies)
    assert flat["f1"] == 1.0 and flat["mass_in_box"] == pytest.approx(flat["box_share"])
    # a report that drops its findings: recall 0, precision 1 (nothing false asserted)
    clear = [["lungs", "are", "clear", "."]] * len(studies)
    empty, _ = report_generation.evaluate_reports(clear, [torch.full((4, 2, 4, 64), 1 / 64)] * len(studies), studies)
    assert empty["recall"] == 0.0 and empty["f1"] == 0.0 and np.isnan(empty["pointing"])
