"""The trainer: determinism, hooks before clipping, metrics.jsonl, best/last checkpoints, resume, helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from crossfuse.checkpoint import load_weights
from crossfuse.train import (
    EpochBatches,
    FusionObjective,
    TrainConfig,
    classification_metrics,
    evaluate,
    fit,
    iter_metrics,
    predict,
    regression_metrics,
)
from tiny_fusion import Interrupt, StopAt, TinyFusion, task, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


TRAIN, VAL = task(96, 0), task(40, 1)
CONFIG = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=0)


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def records(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its wall-clock field."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in iter_metrics(out, kind=None)]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_metrics_and_weights_to_the_last_digit() -> None:
    runs = [tiny() for _ in range(3)]
    results = [
        fit(m, TRAIN, VAL, CONFIG if i < 2 else TrainConfig(**{**CONFIG.__dict__, "seed": 1}))
        for i, m in enumerate(runs)
    ]
    assert results[0].history == results[1].history  # float equality, every record
    assert_same_weights(weights(runs[0]), weights(runs[1]))
    assert results[0].history != results[2].history  # the seed matters (data order, dropout)
    assert results[0].steps == 3 * 6 and [r["epoch"] for r in results[0].history] == [1, 2, 3]


def test_epoch_batches_split_global_batches_across_ranks() -> None:
    single = EpochBatches(50, 8, seed=3)
    ranks = [EpochBatches(50, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    assert single.per_epoch == 7 and ranks[0].per_epoch == 7  # tail of 2 rows kept: one row per rank
    for epoch in range(2):
        glob = single.batches(epoch)
        assert sorted(i for b in glob for i in b) == list(range(50))  # a permutation
        for i, batch in enumerate(glob):
            shares = [r.batches(epoch)[i] for r in ranks]
            assert sorted(shares[0] + shares[1]) == sorted(batch) and len(shares[0]) == len(shares[1])
    assert single.batches(0) != single.batches(1)
    assert EpochBatches(49, 8, seed=0, rank=0, world_size=2).per_epoch == 6  # a 1-row tail can't be split
    with pytest.raises(ValueError, match=r"config.batch_size: .* 4 DDP processes, got batch_size=6"):
        EpochBatches(50, 6, seed=0, world_size=4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"task": "ranking"},
            r"config.task: expected one of \['classification', 'multilabel', 'regression'\], got 'ranking'",
        ),
        ({"batch_size": 0}, r"config.batch_size: expected an int >= 1, got 0"),
        ({"checkpoint_every_steps": 0}, r"config.checkpoint_every_steps"),
        ({"lr": -1.0}, r"config.lr"),
    ],
)
def test_bad_config_names_the_field(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit(tiny(), TRAIN, VAL, TrainConfig(**change))


# ----------------------------------------------------------------------------- hooks and clipping


class Recorder:
    """Records the gradient norm it sees and the step; optionally scales gradients."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale, self.calls, self.norms = scale, [], []

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        for g in grads:
            g.mul_(self.scale)
        self.calls.append(step)

    def step_record(self) -> dict[str, float]:
        return {"seen_norm": self.norms[-1]} if self.calls[-1] % 2 == 0 else {}

    def messages(self) -> list[str]:
        return [f"saw {len(self.calls)} steps"]


def test_hooks_run_before_clipping_and_feed_metrics(tmp_path: Path) -> None:
    """One step with gradients scaled by 1e6 inside a hook: AdamW's first moment is (1 - beta1) * clipped g."""
    hook = Recorder(scale=1e6)
    config = TrainConfig(epochs=1, batch_size=96, grad_clip=0.5, seed=0)
    result = fit(tiny(dropout=0.0), TRAIN, VAL, config, out_dir=tmp_path, hooks=[hook])
    exp_avg = [
        v for k, v in load_file(tmp_path / "last" / "training_state.safetensors").items() if k.endswith("exp_avg")
    ]
    first_moment = torch.linalg.vector_norm(torch.stack([t.norm() for t in exp_avg])).item()
    assert hook.norms[0] * 1e6 > 1e3  # unclipped, the moment would be ~1e5 times larger
    assert first_moment == pytest.approx(0.1 * 0.5, rel=1e-4)  # clipped after the hook scaled
    assert hook.calls == [0] and result.messages == ["saw 1 steps"]
    assert result.step_records == [{"step": 0, "seen_norm": hook.norms[0]}]


def test_step_records_in_metrics_jsonl(tmp_path: Path) -> None:
    hook = Recorder()
    result = fit(tiny(), TRAIN, VAL, CONFIG, out_dir=tmp_path, hooks=[hook])
    lines = records(tmp_path)
    steps = [r for r in lines if r["kind"] == "step"]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(0, 18, 2))  # only steps whose hook reported values
    assert [r["seen_norm"] for r in steps] == hook.norms[::2]
    assert epochs == [{"kind": "epoch", **r} for r in result.history]
    assert hook.calls == list(range(18))


def test_balance_none_is_bit_identical_and_monitoring_only_reads() -> None:
    plain, hooked, monitored = tiny(), tiny(), tiny()
    fit(plain, TRAIN, VAL, CONFIG)
    fit(hooked, TRAIN, VAL, CONFIG, hooks=[Recorder(scale=1.0)])
    result = fit(monitored, TRAIN, VAL, TrainConfig(**{**CONFIG.__dict__, "monitor_gradients": True}))
    assert_same_weights(weights(plain), weights(hooked))
    assert_same_weights(weights(plain), weights(monitored))
    assert len(result.step_records) == 18 and "grad_norm/a" in result.step_records[0]


def test_balance_builds_hooks_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    import crossfuse.balance

    seen = []

    def build_hooks(model: nn.Module, config: TrainConfig) -> list:
        seen.append((type(model), config.balance, config.balance_alpha))
        return [Recorder(scale=0.5)]

    monkeypatch.setattr(crossfuse.balance, "build_hooks", build_hooks)
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "balance": "ogm-ge", "balance_alpha": 0.3})
    result = fit(tiny(), TRAIN, VAL, config)
    assert seen == [(TinyFusion, "ogm-ge", 0.3)] and result.messages == ["saw 6 steps"]


# ----------------------------------------------------------------------------- files and checkpoints


def test_out_dir_files_and_best_checkpoint(tmp_path: Path) -> None:
    model = tiny()
    result = fit(model, TRAIN, VAL, CONFIG, out_dir=tmp_path, metadata={"note": "x"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["batch_size"] == 16 and config["metadata"] == {"note": "x"}
    assert config["model"]["modalities"] == {"a": {"dim": 3, "length": 4}, "b": {"dim": 2, "length": 5}}
    assert len(result.history) == 3 and result.best["val_score"] == max(r["val_score"] for r in result.history)
    best = tiny(seed=9)
    load_weights(tmp_path / "best", best)
    assert evaluate(best, VAL, "classification")["score"] == result.best["val_score"]  # weights of the best epoch
    last = tiny(seed=9)
    load_weights(tmp_path / "last", last)
    assert_same_weights(weights(last), weights(model))
    state = json.loads((tmp_path / "last" / "training_state.json").read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (3, 0, 18)
    assert not list(tmp_path.glob(".*"))  # no staging leftovers


@pytest.mark.parametrize("stop", [7, 12])  # mid-epoch after a step checkpoint / first step of epoch 3
def test_resume_reaches_the_uninterrupted_weights(tmp_path: Path, stop: int) -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "checkpoint_every_steps": 4})
    straight = tiny()
    expected = fit(straight, TRAIN, VAL, config, out_dir=tmp_path / "straight")
    with pytest.raises(Interrupt):
        fit(tiny(), TRAIN, VAL, config, out_dir=tmp_path / "cut", hooks=[StopAt(stop)])
    resumed = tiny(seed=5)  # the checkpoint supplies the weights
    result = fit(resumed, TRAIN, VAL, config, out_dir=tmp_path / "cut", resume=True)
    assert_same_weights(weights(resumed), weights(straight))
    assert result.history == expected.history and result.best == expected.best
    assert records(tmp_path / "cut") == records(tmp_path / "straight")
    again = fit(tiny(seed=5), TRAIN, VAL, config, out_dir=tmp_path / "cut", resume=True)  # finished: no more steps
    assert again.history == expected.history


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    fit(tiny(), TRAIN, VAL, TrainConfig(epochs=1, batch_size=16), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"resume: .* lr=0.001 \(now 0.5\)"):
        fit(tiny(), TRAIN, VAL, TrainConfig(epochs=1, batch_size=16, lr=0.5), out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume: needs out_dir"):
        fit(tiny(), TRAIN, VAL, CONFIG, resume=True)


def test_progress_bar_and_epoch_lines(capsys: pytest.CaptureFixture[str]) -> None:
    fit(tiny(), TRAIN, VAL, TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "progress": True}))
    captured = capsys.readouterr()
    assert "loss=" in captured.err and "epoch 1/1" in captured.err  # tqdm bar with the loss
    assert captured.out.startswith("epoch 1/1  train_loss ") and "val_accuracy" in captured.out


# ----------------------------------------------------------------------------- helpers and metrics


def test_regression_fit_and_predict_match_the_model() -> None:
    model = tiny(outputs=1)
    train, val = task(96, 0, regression=True), task(40, 1, regression=True)
    result = fit(model, train, val, TrainConfig(task="regression", epochs=4, batch_size=16, lr=1e-2))
    assert result.final["val_r2"] > 0.3  # the target is a smooth function of the inputs
    model.eval()
    with torch.no_grad():
        direct = model(val.inputs, val.masks).logits
    torch.testing.assert_close(predict(model, val, batch_size=7), direct)
    metrics = evaluate(model, val, TrainConfig(task="regression"))
    assert metrics == regression_metrics(direct, val.y) and metrics == FusionObjective("regression").evaluate(
        model, torch.utils.data.DataLoader(val, batch_size=40)
    )


def test_classification_metrics_analytic() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    m = classification_metrics(torch.nn.functional.one_hot(pred, 3).float(), y)
    # per class F1 = 2tp / (2tp + fp + fn): class 0: 2/(2+1+1), class 1: 4/(4+1), class 2: 2/(2+0+1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_regression_metrics_analytic() -> None:
    y = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    assert regression_metrics(y.clone(), y) == {"r2": 1.0, "mse": 0.0, "score": 1.0}
    mean = regression_metrics(torch.full_like(y, 3.0), y)
    assert mean["r2"] == pytest.approx(0.0) and mean["mse"] == pytest.approx((4 + 1 + 0 + 9) / 4)
    assert math.isclose(regression_metrics(y + 1, y)["mse"], 1.0)


def test_sgd_option_builds_sgd_with_momentum_and_trains() -> None:
    from crossfuse.train import make_optimizer

    config = TrainConfig(**{**CONFIG.__dict__, "optimizer": "sgd", "lr": 0.05})
    optimizer = make_optimizer(tiny(), config)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9
    model = tiny()
    result = fit(model, TRAIN, VAL, config)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]  # it learns
    adam = tiny()
    fit(adam, TRAIN, VAL, CONFIG)
    assert any(not torch.equal(a, b) for a, b in zip(weights(model).values(), weights(adam).values(), strict=True))


def test_unknown_optimizer_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"config.optimizer: expected one of \['adamw', 'sgd'\], got 'lion'"):
        fit(tiny(), TRAIN, VAL, TrainConfig(optimizer="lion"))
