"""Missing modalities: mask forms, modality dropout (effective rate, never all), present-only late fusion."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossfuse.fusion import FUSIONS, FusionConfig, ModalitySpec, build_fusion
from crossfuse.fusion.missing import drop_modalities, normalise_masks

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = FusionConfig(dim=16, num_heads=2, num_layers=1)
SPECS = {"text": ModalitySpec(4, 6), "image": ModalitySpec(3, 5)}


def inputs(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, spec.length, spec.dim, generator=g) for name, spec in SPECS.items()}


def test_normalise_masks_int_and_presence_forms() -> None:
    x = inputs(3)
    out = normalise_masks(x, {"text": torch.tensor([[1, 0, 2, 0, 0, 1]] * 3), "image": torch.tensor([1, 0, 1])})
    assert out["text"].dtype == torch.bool and out["text"][0].tolist() == [True, False, True, False, False, True]
    assert out["image"].shape == (3, 5) and out["image"].tolist() == [[True] * 5, [False] * 5, [True] * 5]
    assert normalise_masks(x, None) is None
    float_mask = torch.ones(3, 6)
    assert normalise_masks(x, {"text": float_mask})["text"] is float_mask  # left for the check to reject
    with pytest.raises(ValueError, match=r"masks\['text'\]: expected dtype torch.bool"):
        build_fusion("early", SPECS, 2, SMALL)(x, {"text": float_mask})


@pytest.mark.parametrize("modalities,p", [(2, 0.5), (3, 0.3), (2, 0.9)])
def test_modality_dropout_effective_rate_is_p_minus_p_to_the_m_over_m(modalities: int, p: float) -> None:
    batch = 200_000
    shapes = {f"m{i}": (batch, 2) for i in range(modalities)}
    out = drop_modalities({}, shapes, p, generator=torch.Generator().manual_seed(0))
    kept = torch.stack([out[name].any(dim=1) for name in shapes], dim=1)  # (B, M)
    assert kept.any(dim=1).all()  # never all of them
    expected = p - p**modalities / modalities
    sd = math.sqrt(expected * (1 - expected) / batch)
    for i in range(modalities):
        assert abs((~kept[:, i]).float().mean().item() - expected) < 5 * sd
    # a dropped modality loses every position of its row; kept rows keep their own mask
    assert all(bool(out[name][~kept[:, i]].any()) is False for i, name in enumerate(shapes))


def test_modality_dropout_keeps_existing_masks_and_validates_p() -> None:
    mask = torch.tensor([[True, False]] * 8)
    out = drop_modalities({"a": mask}, {"a": (8, 2), "b": (8, 3)}, 0.5, generator=torch.Generator().manual_seed(1))
    assert not (out["a"] & ~mask).any()
    assert drop_modalities({"a": mask}, {"a": (8, 2)}, 0.5)["a"] is mask  # one modality: never dropped
    with pytest.raises(ValueError, match=r"p: expected a modality dropout probability in \[0, 1\), got 1.0"):
        drop_modalities({}, {"a": (2, 1), "b": (2, 1)}, 1.0)
    with pytest.raises(ValueError, match=r"config\.modality_dropout"):
        build_fusion("late", SPECS, 2, dataclasses.replace(SMALL, modality_dropout=1.5))


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_modality_dropout_only_in_training(name: str) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, modality_dropout=0.5)
    model = build_fusion(name, SPECS, 3, config)
    reference = build_fusion(name, SPECS, 3, SMALL)
    reference.load_state_dict(model.state_dict())
    x = inputs(64)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x).logits, reference(x).logits)
    model.train(), reference.train()
    assert not torch.allclose(model(x).logits, reference(x).logits)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_an_absent_modality_gives_finite_outputs_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_fusion(name, SPECS, 3, SMALL)
    x = {k: v.requires_grad_() for k, v in inputs(4).items()}
    masks = {"image": torch.zeros(4, 5, dtype=torch.bool), "text": torch.tensor([True, False, True, True])}
    out = model(x, masks)
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pooled).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(x["text"].grad).all()
    # what an absent modality holds does not matter
    model.zero_grad()
    garbage = {"text": x["text"].detach(), "image": torch.full((4, 5, 3), 1e4)}
    torch.testing.assert_close(model(garbage, masks).logits, out.logits.detach())


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_late_fusion_averages_only_present_experts(combine: str) -> None:
    torch.manual_seed(0)
    model = build_fusion("late", SPECS, 3, dataclasses.replace(SMALL, late_combine=combine)).eval()
    x = inputs(4)
    present = torch.tensor([True, False, True, False])
    out = model(x, {"image": present})
    both = model(x)
    experts = both.modality_logits
    # rows without the image are the text expert alone; rows with it are the usual two-expert average
    alone = experts["text"] if combine == "logits" else experts["text"].log_softmax(-1)
    torch.testing.assert_close(out.logits[~present], alone[~present])
    torch.testing.assert_close(out.logits[present], both.logits[present])
    nobody = model(x, {"image": torch.zeros(4, dtype=torch.bool), "text": torch.zeros(4, dtype=torch.bool)})
    assert torch.isfinite(nobody.logits).all()


def test_npz_presence_flags_blank_the_modality(tmp_path: Path) -> None:
    from crossfuse.data.npz import load_npz

    rng = np.random.default_rng(0)
    present = np.array([1, 0, 1, 1, 0, 1])
    path = tmp_path / "d.npz"
    np.savez(path, a=rng.normal(size=(6, 3, 2)), a__present=present, b=rng.normal(size=(6, 2)), y=np.arange(6) % 2)
    data, _ = load_npz(path)
    assert data.masks["a"].tolist() == [[bool(f)] * 3 for f in present]
    assert data.masks["b"].all()
    np.savez(path, a=rng.normal(size=(6, 3, 2)), a__present=np.ones(5), y=np.arange(6) % 2)
    with pytest.raises(ValueError, match=r"presence flags 'a__present' have shape \(5,\); expected \(N,\) = \(6,\)"):
        load_npz(path)
    np.savez(path, a=rng.normal(size=(6, 3, 2)), c__present=np.ones(6), y=np.arange(6) % 2)
    with pytest.raises(ValueError, match=r"unknown modalities \['c'\]"):
        load_npz(path)


def test_modality_dropout_never_removes_a_samples_last_present_modality() -> None:
    batch = 4000
    g = torch.Generator().manual_seed(3)
    masks = {
        "a": (torch.rand(batch, generator=g) > 0.5)[:, None].expand(batch, 3).clone(),  # half lack a
        "b": (torch.rand(batch, generator=g) > 0.5)[:, None].expand(batch, 2).clone(),
        "c": None,
    }
    shapes = {"a": (batch, 3), "b": (batch, 2), "c": (batch, 4)}
    out = drop_modalities(masks, shapes, 0.9, generator=g)
    kept = torch.stack([out[n].any(dim=1) for n in shapes], dim=1)
    assert kept.any(dim=1).all()
    assert not (out["a"] & ~masks["a"]).any() and not (out["b"] & ~masks["b"]).any()
    # a sample with only c present always keeps c
    only_c = ~masks["a"][:, 0] & ~masks["b"][:, 0]
    assert out["c"][only_c].all()
