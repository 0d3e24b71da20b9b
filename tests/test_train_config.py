"""TrainConfig: every field is validated where the config is built, errors name the field and the value."""

from __future__ import annotations

import dataclasses
import math

import pytest

from crossfuse.train import TrainConfig, check_config

BAD = [
    ({"task": "ranking"}, "task"),
    ({"optimizer": "lion"}, "optimizer"),
    ({"balance": "ogm"}, "balance"),
    ({"balance": "aux", "task": "regression"}, "balance"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": True}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.0}, "batch_size"),
    ({"seed": -1}, "seed"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": math.inf}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"weight_decay": math.nan}, "weight_decay"),
    ({"warmup_fraction": 1.5}, "warmup_fraction"),
    ({"warmup_fraction": math.nan}, "warmup_fraction"),
    ({"grad_clip": 0.0}, "grad_clip"),
    ({"grad_clip": math.inf}, "grad_clip"),
    ({"balance_alpha": math.nan}, "balance_alpha"),
    ({"balance_alpha": -1.0}, "balance_alpha"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
    ({"progress": "yes"}, "progress"),
    ({"monitor_gradients": 1}, "monitor_gradients"),
    ({"device": ""}, "device"),
]


@pytest.mark.parametrize(("changes", "field"), BAD, ids=[f"{f}={c[f]!r}" for c, f in BAD])
def test_each_bad_field_is_named_with_its_value(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^config\.{field}: expected .*, got ") as caught:
        TrainConfig(**changes)
    assert repr(changes[field]) in str(caught.value) and "\n" not in str(caught.value)


def test_replace_validates_too_and_good_configs_pass() -> None:
    config = TrainConfig(lr=2e-3, grad_clip=None, checkpoint_every_steps=3, balance="ogm-ge", balance_alpha=0.0)
    check_config(config)
    with pytest.raises(ValueError, match=r"config\.lr"):
        dataclasses.replace(config, lr=math.inf)
    with pytest.raises(ValueError, match="config: expected a TrainConfig, got dict"):
        check_config({"lr": 1e-3})  # type: ignore[arg-type]
