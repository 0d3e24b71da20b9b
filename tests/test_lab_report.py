"""Smoke run of the report experiment; the report scores on an oracle (gradient_highway: test_lab_highway.py)."""

import json

import pytest
import torch

from crossfuse.data.radiographs import VARIANT_KINDS, generate_studies, tokenize
from crossfuse.lab import report_generation
from crossfuse.lab.pointing import PrefixModel, score_report
from crossfuse.lab.result import Result, run_experiment
from crossfuse.models.attention_maps import METHODS

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
    assert result.precondition and result.precondition_met is not None
    assert "report_heatmaps_local_vs_vit.png" in result.figures
    assert [row[0] for row in result.tables[0].rows] == [r.name for r in report_generation.ROWS]
    method = result.raw["method"]
    assert method in METHODS and set(result.raw["validation_pointing"]) == set(METHODS)
    explorer = result.extras["explorer"]
    assert explorer["kind"] == "report" and 0 < len(explorer["examples"]) <= report_generation.EXPLORER_EXAMPLES
    for example in explorer["examples"]:
        assert example["image"].startswith("data:image/png;base64,")
        assert example["image_size"] == [64, 64] and example["grid"] == [8, 8]
        assert set(example["attention"]) == set(METHODS) and example["methods"][0] == method
        for maps in example["attention"].values():
            assert len(maps) == len(example["tokens"]) and all(len(row) == 64 for row in maps)
            assert all(abs(sum(row) - 1) < 1e-4 for row in maps)
        assert all(len(box["xyxy"]) == 4 and box["label"] for box in example["boxes"])


def test_report_scores_on_an_oracle() -> None:
    """Reference reports with heatmaps peaked in the finding's box score perfectly; uniform maps score chance."""
    studies = [s for s in generate_studies(60, seed=5) if s.findings][:20]
    words = [tokenize(s.report) for s in studies]
    prefix = PrefixModel([tokenize(s.report) for s in generate_studies(300, seed=6)])
    focused, uniform = [], []
    for s, w in zip(studies, words, strict=True):
        heat = torch.full((len(w), 64), 1 / 64)
        uniform.append(heat.clone())
        for f in s.findings:  # every token of a finding's sentence peaks on that finding's box centre
            x0, y0, x1, y1 = f.xyxy
            cell = ((y0 + y1) // 2 // 8) * 8 + (x0 + x1) // 2 // 8
            for t in range(len(w)):
                if any(step.position == t for step in score_report(w, heat, [f], prefix, 8, 64)):
                    heat[t] = 0.0
                    heat[t, cell] = 1.0
        focused.append(heat)
    kinds = VARIANT_KINDS["standard"]
    perfect = report_generation.score(words, focused, studies, prefix, kinds)
    present = {f.kind for s in studies for f in s.findings}
    assert perfect["bleu4"] == pytest.approx(100.0) and perfect["f1_micro"] == 1.0
    assert all(perfect["f1"][k] == 1.0 and perfect["pointing"][k]["corrected"] == 1.0 for k in present)
    flat = report_generation.score(words, uniform, studies, prefix, kinds)
    assert flat["pointing"]["macro"]["corrected"] == pytest.approx(0.0, abs=1e-9)
    assert flat["pointing"]["macro"]["mass"] == pytest.approx(flat["pointing"]["macro"]["box_share"])
    assert flat["pointing"]["macro"]["all_above_chance"] == 0.0
