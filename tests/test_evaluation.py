"""Metrics and evaluation: analytic values, constant targets, empty data, units of y, non-finite checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crossfuse.checkpoint import (
    MODEL_FILE,
    STATE_JSON_FILE,
    load_captioner,
    load_training_state,
    load_weights,
    save_captioner,
    save_checkpoint,
)
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.radiographs import Vocabulary
from crossfuse.evaluation import FusionObjective, make_loader, predict, regression_metrics
from crossfuse.models.captioner import Captioner, CaptionerConfig
from tiny_fusion import task, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def test_regression_metrics_match_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    y, pred = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    r2 = [1 - ((pred[:, k] - y[:, k]) ** 2).sum() / ((y[:, k] - y[:, k].mean()) ** 2).sum() for k in range(2)]
    metrics = regression_metrics(pred, y)
    assert metrics["r2"] == pytest.approx(float(sum(r2) / 2), rel=1e-5)
    assert metrics["mse"] == pytest.approx(float(((pred - y) ** 2).mean()), rel=1e-6)


def test_a_constant_target_gives_nan_r2_with_a_warning() -> None:
    y = torch.full((40, 1), 0.1)  # its float32 mean is not exactly 0.1: SS_tot would be tiny, R^2 huge and negative
    with pytest.warns(RuntimeWarning, match=r"target column\(s\) \[0\] are constant .* R\^2 is undefined"):
        metrics = regression_metrics(torch.randn(40, 1), y)
    assert metrics["r2"] != metrics["r2"] and metrics["mse"] > 0


def test_val_mse_in_units_of_y() -> None:
    model, data = tiny(outputs=1), task(40, 1, regression=True)
    plain = FusionObjective("regression").evaluate(model, make_loader(data))
    scaled = FusionObjective("regression", target_scale=(3.0,)).evaluate(model, make_loader(data))
    assert set(scaled) == {"r2", "mse_y_units", "score"}
    assert scaled["mse_y_units"] == pytest.approx(9.0 * plain["mse"], rel=1e-5)  # MSE scales with std^2
    assert scaled["r2"] == pytest.approx(plain["r2"], rel=1e-4, abs=1e-6)


def test_predict_on_no_rows_is_a_clear_error() -> None:
    data = task(10, 0)
    empty = MultimodalDataset(
        {k: v[:0] for k, v in data.inputs.items()}, data.y[:0], {k: v[:0] for k, v in data.masks.items()}
    )
    with pytest.raises(ValueError, match="data: expected at least one row"):
        predict(tiny(), empty)


def test_checkpoints_with_nan_weights_are_refused(tmp_path: Path) -> None:
    model = tiny()
    with torch.no_grad():
        next(iter(model.parameters()))[0, 0] = float("nan")
    save_checkpoint(tmp_path / "best", model, {"epoch": 1})
    with pytest.raises(ValueError, match=r"checkpoint: .*model.safetensors: tensor '.*' holds 1 NaN/Inf value"):
        load_weights(tmp_path / "best", tiny())


def test_damaged_checkpoint_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", tiny(), {"epoch": 1})
    weights = tmp_path / "last" / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"checkpoint: {weights} is not a readable safetensors file") as caught:
        load_weights(tmp_path / "last", tiny())
    assert "\n" not in str(caught.value)
    (tmp_path / "last" / STATE_JSON_FILE).write_text("{garbage")
    with pytest.raises(ValueError, match=rf"checkpoint: {tmp_path / 'last' / STATE_JSON_FILE} is not a valid"):
        load_training_state(tmp_path / "last")


def test_captioner_load_refuses_nan_weights(tmp_path: Path) -> None:
    vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", *"abc"])
    model = Captioner(CaptionerConfig(vocab_size=len(vocab), image_size=32, dim=32, num_heads=2, max_len=8))
    save_captioner(tmp_path, model, vocab)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("inf")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor '{name}' holds 1 NaN/Inf"):
        load_captioner(tmp_path)
