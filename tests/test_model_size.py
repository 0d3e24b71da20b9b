"""Model size is counted on the meta device, so a config with absurd sizes is refused without allocating."""

from __future__ import annotations

import time

import pytest
import torch

from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.runs import build_model, count_parameters, model_spec

SPECS = {"a": ModalitySpec(4, 3), "b": ModalitySpec(5, 2)}


def test_meta_count_equals_the_real_count() -> None:
    model = build_fusion("cross", SPECS, 3, FusionConfig(dim=32, num_heads=2))
    assert count_parameters(lambda: build_model(model_spec(model))) == sum(p.numel() for p in model.parameters())


def test_a_model_larger_than_memory_is_refused_before_allocation() -> None:
    spec = model_spec(build_fusion("cross", SPECS, 3, FusionConfig(dim=32, num_heads=2)))
    spec["fusion_config"]["dim"] = 1_000_000  # ~4e13 parameters: 150 TB as float32
    started = time.process_time()
    with pytest.raises(ValueError, match=r"config.json: the model would hold [\d,]+ parameters .* GiB as float32"):
        build_model(spec)
    assert time.process_time() - started < 5.0  # nothing was allocated or initialised
    assert torch.get_default_device() == torch.device("cpu")  # the meta device does not leak out
