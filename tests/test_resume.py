"""Non-finite training stops with the last good checkpoints kept; resume is exact or refused before any change."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from crossfuse.checkpoint import load_weights
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.metrics_log import read_metrics
from crossfuse.resume import data_fingerprint
from crossfuse.train import TrainConfig, TrainingDiverged, fit
from tiny_fusion import task, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN, VAL = task(64, 0), task(24, 1)
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0, checkpoint_every_steps=2)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path: Path) -> None:
    x = {k: v.clone() for k, v in TRAIN.inputs.items()}
    x["a"][5, 0, :] = torch.inf  # the library takes tensors as given; inf - inf in the encoder gives NaN
    data = MultimodalDataset(x, TRAIN.y, TRAIN.masks)
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1, step \d+: the loss is (nan|inf).*lr="):
        fit(tiny(), data, VAL, CONFIG, out_dir=tmp_path)
    assert not (tmp_path / "best").exists() or load_weights(tmp_path / "best", tiny())


class PoisonAtStep:
    """A hook that puts NaN into one gradient at ``step``, so the weights go NaN after that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        if step == self.step:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))

    def step_record(self) -> dict[str, float]:
        return {}

    def messages(self) -> list[str]:
        return []


def test_non_finite_weights_are_never_written_and_the_last_good_checkpoint_stays(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0, grad_clip=None)  # 4 steps per epoch
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 8: model weights: tensor .* NaN/Inf"):
        fit(tiny(), TRAIN, VAL, config, out_dir=tmp_path, hooks=[PoisonAtStep(7)])  # last step: no loss after it
    for name in ("best", "last"):
        load_weights(tmp_path / name, tiny())  # finite, from epoch 1


def test_resume_refuses_other_data_and_changes_nothing(tmp_path: Path) -> None:
    fit(tiny(), TRAIN, VAL, CONFIG, out_dir=tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes((tmp_path / "metrics.jsonl").read_bytes() + b'{"kind": "x"}\n')
    before = snapshot(tmp_path)
    other = task(64, 7)
    with pytest.raises(ValueError, match=r"resume: .* other data: train_data \(64 rows, sha256 \w+, now 64 .*--force"):
        fit(tiny(), other, VAL, CONFIG, out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"val_data \(24 rows, .* now none\)"):
        fit(tiny(), TRAIN, None, CONFIG, out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"lr=0.01 \(now 0.5\); pass the same options, or start over with --force"):
        fit(tiny(), TRAIN, VAL, TrainConfig(**{**CONFIG.__dict__, "lr": 0.5}), out_dir=tmp_path, resume=True)
    assert snapshot(tmp_path) == before  # metrics.jsonl is cut only after every check passed


def test_resume_without_last_or_without_a_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"resume: .*missing does not exist.* --force"):
        fit(tiny(), TRAIN, VAL, CONFIG, out_dir=tmp_path / "missing", resume=True)
    assert not (tmp_path / "missing").exists()
    fit(tiny(), TRAIN, VAL, CONFIG, out_dir=tmp_path / "run")
    for path in (tmp_path / "run" / "last").iterdir():
        path.unlink()
    (tmp_path / "run" / "last").rmdir()
    before = snapshot(tmp_path / "run")
    with pytest.raises(ValueError, match=r"resume: .* has no loadable last/ checkpoint.*--force"):
        fit(tiny(), TRAIN, VAL, CONFIG, out_dir=tmp_path / "run", resume=True)
    assert snapshot(tmp_path / "run") == before and (tmp_path / "run" / "best").is_dir()


def test_a_shorter_metrics_file_is_never_padded(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "epoch", "epoch": 1}\n')
    assert read_metrics(path, 1000, cut=True) == [{"kind": "epoch", "epoch": 1}]
    assert path.read_bytes() == b'{"kind": "epoch", "epoch": 1}\n'  # a truncate() would have grown it with NULs
    path.write_bytes(b'{"epoch": 1}\n{"epoch": 2}\n')
    assert read_metrics(path, 13, cut=True) == [{"epoch": 1}]
    assert path.read_bytes() == b'{"epoch": 1}\n'


def test_fingerprint_sees_content_order_and_rows_and_reads_in_chunks() -> None:
    a = data_fingerprint(TRAIN)
    assert a == data_fingerprint(task(64, 0)) and a["rows"] == 64
    assert a != data_fingerprint(TRAIN.subset(torch.arange(63)))
    assert a != data_fingerprint(TRAIN.subset(torch.arange(63, -1, -1)))
    big = task(4096 + 3, 0)  # two chunks, the second of 3 rows
    assert data_fingerprint(big) != data_fingerprint(big.subset(torch.arange(4096)))


def test_config_json_records_the_fingerprint(tmp_path: Path) -> None:
    import json

    fit(tiny(), TRAIN, VAL, TrainConfig(epochs=1, batch_size=16), out_dir=tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())["data_fingerprint"]
    assert stored == {"train_data": data_fingerprint(TRAIN), "val_data": data_fingerprint(VAL)}


def test_fingerprint_of_a_memory_mapped_directory_equals_the_in_memory_data(tmp_path: Path) -> None:
    from crossfuse.data.directory import open_dataset_dir, write_dataset_dir

    inputs = {k: v.numpy() for k, v in TRAIN.inputs.items()}
    write_dataset_dir(tmp_path / "d", inputs, TRAIN.y.numpy(), {k: v.numpy() for k, v in TRAIN.masks.items()})
    mapped, _ = open_dataset_dir(tmp_path / "d")
    assert data_fingerprint(mapped) == data_fingerprint(TRAIN)
    assert data_fingerprint(mapped.subset(torch.arange(1, 64))) == data_fingerprint(TRAIN.subset(torch.arange(1, 64)))


def test_a_constant_validation_target_still_keeps_a_best_checkpoint(tmp_path: Path) -> None:
    train, val = task(64, 0, regression=True), task(24, 1, regression=True)
    val = MultimodalDataset(val.inputs, torch.full_like(val.y, 0.5), val.masks)  # R^2 is NaN on it
    config = TrainConfig(task="regression", epochs=2, batch_size=16, lr=1e-2)
    with pytest.warns(RuntimeWarning, match="R\\^2 is undefined"):
        result = fit(tiny(outputs=1), train, val, config, out_dir=tmp_path)
    assert result.best["epoch"] == 1 and (tmp_path / "best" / "model.safetensors").is_file()
