"""Smoke runs of the report and gradient-highway experiments; the report metrics on an oracle."""

import json

import pytest
import torch

from crossfuse.data.radiographs import VARIANT_KINDS, generate_studies, tokenize
from crossfuse.lab import gradient_highway, report_generation
from crossfuse.lab.gradient_highway import EncoderGradientRecorder, layer_gradient_norms
from crossfuse.lab.pointing import PrefixModel, score_report
from crossfuse.lab.result import Result, run_experiment
from crossfuse.models.attention_maps import METHODS
from crossfuse.models.captioner import Captioner, CaptionerConfig, CaptionObjective

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


def test_gradient_highway_smoke_run() -> None:
    result = run_experiment("gradient_highway", "smoke", 1)
    check_result(result, "gradient_highway")
    raw = result.raw
    assert set(raw["median"]) == {"cross", "pooled"} and set(raw["median"]["cross"]) == {"embed", "block 1", "block 2"}
    assert raw["ratio_block1"] == pytest.approx(raw["median"]["cross"]["block 1"] / raw["median"]["pooled"]["block 1"])
    # a mean hands every patch the same gradient; cross-attention does not
    assert raw["patch_gradient_cosine"]["pooled"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert max(raw["patch_gradient_cosine"]["cross"]) < 0.999
    for name in ("cross", "pooled"):
        steps = raw["curves"][name][0]
        assert steps and all(r["grad block 1"] > 0 and r["loss"] > 0 for r in steps)


def test_layer_gradient_norms_match_autograd() -> None:
    torch.manual_seed(0)
    model = Captioner(CaptionerConfig(vocab_size=9, image_size=32, dim=16, num_heads=2, max_len=8))
    batch = {"image": torch.rand(2, 1, 32, 32), "tokens": torch.randint(1, 9, (2, 6))}
    loss, output = CaptionObjective().loss(model, batch)
    loss.backward()
    norms = layer_gradient_norms(model)
    block = model.encoder.blocks[0]
    grads = torch.autograd.grad(CaptionObjective().loss(model, batch)[0], list(block.parameters()))
    assert norms["block 1"] == pytest.approx(torch.cat([g.flatten() for g in grads]).norm().item(), rel=1e-5)
    recorder = EncoderGradientRecorder(pad_id=0)
    recorder.after_backward(model, batch, output, step=0)
    assert recorder.step_record()["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert gradient_highway.PLANS["quick"].seeds >= 3  # a median needs several seeds
