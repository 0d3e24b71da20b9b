"""Checkpoints: exact round trips, atomic publication, no code on load, SIGKILL-and-resume, run reloading."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crossfuse import checkpoint as ckpt
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.runs import TargetEncoding, load_run
from crossfuse.train import TrainConfig, fit, predict

# The same source builds data, model and config in the killed child process and here.
SETUP = """
from types import SimpleNamespace

import torch
from torch import nn
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.train import TrainConfig

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"a": nn.Linear(3, 16), "b": nn.Linear(2, 16)})
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(32, 3))

    def forward(self, inputs, masks=None):
        pooled = [torch.tanh(self.encoders[k](inputs[k])).mean(1) for k in ("a", "b")]
        return SimpleNamespace(logits=self.head(torch.cat(pooled, -1)))


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = {"a": torch.randn(n, 4, 3, generator=g), "b": torch.randn(n, 5, 2, generator=g)}
    y = torch.bucketize(x["a"][:, :, 0].mean(1) + x["b"][:, :, 1].mean(1), torch.tensor([-0.3, 0.3]))
    return MultimodalDataset(x, y)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Net()


CONFIG = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=0, checkpoint_every_steps=4)
"""

CHILD = """
import sys, time
from pathlib import Path
from crossfuse.train import fit

out, marker, kill_step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


class WaitForKill:
    def after_backward(self, model, batch, output, step):
        if step == kill_step:
            marker.write_text(str(step))
            time.sleep(120)

    def step_record(self):
        return {}

    def messages(self):
        return []


fit(make_model(), make_data(96, 0), make_data(40, 1), CONFIG, out_dir=out, hooks=[WaitForKill()])
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    marker, out = tmp_path / "killed-at", tmp_path / "run"
    # 6 steps per epoch, checkpoints after steps 4, 6, 8, 12, ...: the kill during step 10 (0-based)
    # loses steps 9-10 done after the mid-epoch checkpoint of step 8.
    child = subprocess.Popen([sys.executable, "-c", SETUP + CHILD, str(out), str(marker), "10"], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the training process ended before reaching the kill step"
            assert time.monotonic() < deadline, "the training process did not reach the kill step"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    state, _ = ckpt.load_training_state(out / "last")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 8)  # mid-epoch checkpoint

    scope: dict = {}
    exec(SETUP, scope)
    make_data, make_model, config = scope["make_data"], scope["make_model"], scope["CONFIG"]
    straight = make_model()
    expected = fit(straight, make_data(96, 0), make_data(40, 1), config, out_dir=tmp_path / "straight")
    resumed = make_model(seed=7)
    result = fit(resumed, make_data(96, 0), make_data(40, 1), config, out_dir=out, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert result.history == expected.history
    lines = [{k: v for k, v in json.loads(x).items() if k != "time_s"} for x in (out / "metrics.jsonl").open()]
    assert lines == [{"kind": "epoch", **r} for r in expected.history]


def trained_optimizer() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    for _ in range(3):
        step(model, optimizer, scheduler)
    return model, optimizer, scheduler


def step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    x = torch.randn(16, 4)
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()


def test_optimizer_scheduler_and_rng_round_trip_exactly(tmp_path: Path) -> None:
    model, optimizer, scheduler = trained_optimizer()
    opt_tensors, opt_rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
    rng_tensors, rng_rest = ckpt.capture_rng()
    state = {"optimizer": opt_rest, "scheduler": scheduler.state_dict(), "rng": rng_rest}
    ckpt.save_checkpoint(tmp_path / "c", model, state, {**opt_tensors, **rng_tensors})
    step(model, optimizer, scheduler)  # the original continues ...
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))

    torch.manual_seed(123)
    copy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    copy_opt = torch.optim.AdamW(copy.parameters(), lr=1.0)
    copy_sched = torch.optim.lr_scheduler.LambdaLR(copy_opt, lambda s: 1 / (1 + s))
    ckpt.load_weights(tmp_path / "c", copy)
    loaded, tensors = ckpt.load_training_state(tmp_path / "c")
    copy_opt.load_state_dict(ckpt.unflatten_optimizer_state(tensors, loaded["optimizer"]))
    copy_sched.load_state_dict(loaded["scheduler"])
    ckpt.restore_rng(tensors, loaded["rng"])
    assert copy_opt.param_groups[0]["betas"] == (0.8, 0.95)  # tuples survive JSON
    step(copy, copy_opt, copy_sched)  # ... and the copy, from the same RNG state, takes the same step
    for a, b in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (random.random(), np.random.rand()) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])


def test_publication_is_atomic_and_survives_a_killed_swap(tmp_path: Path) -> None:
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    ckpt.save_checkpoint(tmp_path / "last", first, {"epoch": 1})
    # a writer killed while staging leaves a partial hidden directory: readers never see it
    (tmp_path / ".last.tmp").mkdir()
    (tmp_path / ".last.tmp" / ckpt.MODEL_FILE).write_bytes(b"partial")
    assert ckpt.resolve_checkpoint(tmp_path / "last") == tmp_path / "last"
    ckpt.save_checkpoint(tmp_path / "last", second, {"epoch": 2})
    assert ckpt.load_training_state(tmp_path / "last")[0]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # killed between the two renames of the swap: the previous checkpoint is aside, and found
    os.replace(tmp_path / "last", tmp_path / ".last.old")
    probe = nn.Linear(2, 2)
    assert ckpt.load_weights(tmp_path / "last", probe) == tmp_path / ".last.old"
    assert torch.equal(probe.weight, second.weight)
    ckpt.save_checkpoint(tmp_path / "last", first, {"epoch": 3})  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        ckpt.load_weights(tmp_path / "missing", probe)
    with pytest.raises(ValueError, match="does not fit the model"):
        ckpt.load_weights(tmp_path / "last", nn.Linear(3, 2))


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, _ = trained_optimizer()
    tensors, rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
    ckpt.save_checkpoint(tmp_path / "c", model, {"optimizer": rest}, tensors)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle / torch.load used while loading a checkpoint")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    ckpt.load_weights(tmp_path / "c", nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    state, loaded = ckpt.load_training_state(tmp_path / "c")
    assert loaded.keys() == tensors.keys() and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 / 4)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ckpt.to_json({"x": torch.zeros(1)})


def test_load_run_rebuilds_a_real_strategy_with_its_targets(tmp_path: Path) -> None:
    specs = {"a": ModalitySpec(3, 4), "b": ModalitySpec(2, 5)}
    g = torch.Generator().manual_seed(0)
    x = {"a": torch.randn(64, 4, 3, generator=g), "b": torch.randn(64, 5, 2, generator=g)}
    labels = torch.tensor([3, 7, 10])[torch.randint(0, 3, (64,), generator=g)]  # user labels, not 0..C-1
    targets = TargetEncoding.fit("classification", labels)
    assert targets.classes == (3, 7, 10) and torch.equal(
        targets.encode(labels), torch.searchsorted(torch.tensor([3, 7, 10]), labels)
    )
    data = MultimodalDataset(x, targets.encode(labels))
    torch.manual_seed(0)
    model = build_fusion("late", specs, 3, FusionConfig(dim=8, num_heads=2, num_layers=1))
    fit(
        model,
        data,
        data,
        TrainConfig(epochs=1, batch_size=32),
        out_dir=tmp_path,
        metadata={"targets": targets.to_json()},
    )
    run = load_run(tmp_path, "last")
    assert type(run.model) is type(model) and run.task == "classification" and run.targets == targets
    torch.testing.assert_close(predict(run.model, data), predict(model, data), rtol=0, atol=0)
    assert set(run.targets.decode(predict(run.model, data)).tolist()) <= {3, 7, 10}
    with pytest.raises(ValueError, match=r"labels \[5\] are not among the run's classes \[3, 7, 10\]"):
        targets.encode(torch.tensor([3, 5]))
    with pytest.raises(ValueError, match=r"modality 'b' expected \(N, T, D\) = \(N, 5, 2\)"):
        run.check_data(MultimodalDataset({"a": x["a"], "b": x["b"][:, :4]}, labels))


def test_regression_targets_standardise_on_training_rows_and_decode_back() -> None:
    y = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [100.0, 0.0]])
    targets = TargetEncoding.fit("regression", y, rows=torch.tensor([0, 1, 2]))
    assert targets.mean == pytest.approx((3.0, 30.0)) and targets.std == pytest.approx(
        (np.std([1, 3, 5]), np.std([10, 30, 50]))
    )
    z = targets.encode(y)
    torch.testing.assert_close(z[:3].mean(0), torch.zeros(2))
    torch.testing.assert_close(targets.decode(z).float(), y)
    vector = TargetEncoding.fit("regression", y[:, 0])
    assert vector.decode(vector.encode(y[:, 0])[:, None]).shape == (4,)
    assert TargetEncoding.from_json(json.loads(json.dumps(targets.to_json()))) == targets
