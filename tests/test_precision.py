"""Devices and precision: "auto", autocast to bf16/fp16 (scaler for fp16), fp32 checkpoints, exact resume;
TensorBoard scalars equal to metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from crossfuse.precision import autocast, check_device, make_scaler, resolve_device
from crossfuse.train import FusionObjective, TrainConfig, fit, predict
from tiny_fusion import Interrupt, StopAt, task, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN, VAL = task(96, 0), task(40, 1)
CONFIG = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=0)


def test_device_names() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(ValueError, match=rf"device: expected one of .*, got {bad!r}"):
            check_device(bad)
    with pytest.raises(ValueError, match=r"config\.device: expected one of"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match=r"config\.precision: expected one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"):
        TrainConfig(precision="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_named() -> None:
    with pytest.raises(ValueError, match=r"device: 'cuda' asked for, but torch finds no CUDA GPU"):
        resolve_device("cuda")


class DtypeSeen(FusionObjective):
    """Records the dtype of the logits the loss sees (autocast must reach the model's forward)."""

    def __init__(self) -> None:
        super().__init__("classification")
        self.seen: set[torch.dtype] = set()

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, Any]:
        loss, output = super().loss(model, batch)
        self.seen.add(output.logits.dtype)
        return loss, output


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_low_precision_trains_close_to_fp32_and_saves_fp32(tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    reference = fit(tiny(), TRAIN, VAL, CONFIG).history[-1]["train_loss"]
    objective = DtypeSeen()
    model = tiny()
    config = TrainConfig(**{**CONFIG.__dict__, "precision": precision})
    result = fit(model, TRAIN, VAL, config, objective=objective, out_dir=tmp_path)
    assert objective.seen == {dtype}
    loss = result.history[-1]["train_loss"]
    assert abs(loss - reference) <= 0.02 * reference  # the low-precision rounding barely moves the loss
    if precision != "fp32":
        assert loss != reference  # and it did run in low precision
    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert predict(model, VAL, precision=precision).dtype == torch.float32
    state = json.loads((tmp_path / "last" / "training_state.json").read_text())
    assert (state["scaler"] is not None) == (precision == "fp16")  # the fp16 loss scale is resumed too


def test_autocast_and_scaler_pass_through_in_fp32() -> None:
    layer = nn.Linear(3, 2)
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(4, 3)).dtype == torch.float32
    assert not make_scaler(torch.device("cpu"), "fp32").is_enabled()
    assert make_scaler(torch.device("cpu"), "fp16").is_enabled()


def test_tensorboard_holds_the_same_scalars_as_metrics_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(**{**CONFIG.__dict__, "tensorboard": True, "monitor_gradients": True})
    fit(tiny(), TRAIN, VAL, config, out_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("kind", "step"):
                expected.setdefault(f"{record['kind']}/{key}", []).append((record["step"], value))
    assert set(events.Tags()["scalars"]) == set(expected) and "epoch/val_accuracy" in expected
    for tag, values in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in values]
        assert [v for _, v in got] == pytest.approx([v for _, v in values], rel=1e-6)  # stored as float32


def test_tensorboard_missing_is_refused_before_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r"config\.tensorboard: needs the tensorboard package .*\[tensorboard\]"):
        fit(tiny(), TRAIN, VAL, TrainConfig(**{**CONFIG.__dict__, "tensorboard": True}), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fp16_resume_reaches_the_uninterrupted_weights(tmp_path: Path) -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "precision": "fp16", "checkpoint_every_steps": 4})
    straight = tiny()
    fit(straight, TRAIN, VAL, config, out_dir=tmp_path / "straight")
    with pytest.raises(Interrupt):
        fit(tiny(), TRAIN, VAL, config, out_dir=tmp_path / "cut", hooks=[StopAt(9)])
    resumed = tiny(seed=5)
    fit(resumed, TRAIN, VAL, config, out_dir=tmp_path / "cut", resume=True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
