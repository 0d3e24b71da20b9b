"""Tests of crossfuse.balance (gradient monitor, OGM-GE, auxiliary losses) and the dominance generator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossfuse.balance import (
    OGMGE,
    AuxiliaryLoss,
    GradientNormMonitor,
    build_hooks,
    contribution_scores,
    modality_grad_norms,
    ogm_coefficients,
)
from crossfuse.data.dominance import DominanceConfig, dominance_splits, easy_oracle_predict, hard_oracle_predict
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


SPECS = {"easy": ModalitySpec(256, 4), "hard": ModalitySpec(16, 16)}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_fusion("cross", SPECS, 4, FusionConfig(dim=16, num_heads=2, num_layers=1, encoder_layers=1))


def batch_of(n: int = 32, seed: int = 0) -> dict:
    _, splits = dominance_splits({"train": n}, seed)
    data = splits["train"].data
    return {"inputs": data.inputs, "masks": data.masks, "y": data.y}


def backward(model: torch.nn.Module, batch: dict):
    model.zero_grad(set_to_none=True)
    output = model(batch["inputs"], batch["masks"])
    F.cross_entropy(output.logits, batch["y"]).backward()
    return output


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- monitor


def test_monitor_norms_equal_norms_computed_by_hand():
    model, batch = tiny_model(), batch_of()
    output = backward(model, batch)
    monitor = GradientNormMonitor(model)
    monitor.after_backward(model, batch, output, step=0)
    record = monitor.step_record()
    by_hand = {}
    for name in SPECS:
        flat = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n.startswith(f"encoders.{name}.")])
        by_hand[name] = flat.double().pow(2).sum().sqrt().item()
        assert record[f"grad_norm/{name}"] == pytest.approx(by_hand[name], rel=1e-5)
    total = sum(by_hand.values())
    for name in SPECS:
        assert record[f"grad_share/{name}"] == pytest.approx(by_hand[name] / total, rel=1e-5)
    assert record["grad_ratio/easy"] == pytest.approx(by_hand["easy"] / by_hand["hard"], rel=1e-5)
    # contribution scores: mean softmax probability of the true class from each modality's own logits
    for name in SPECS:
        probs = output.modality_logits[name].detach().softmax(-1)
        expected = probs[torch.arange(len(batch["y"])), batch["y"]].mean().item()
        assert record[f"contribution/{name}"] == pytest.approx(expected, rel=1e-5)


def test_monitor_warns_once_per_low_share_stretch_with_its_steps():
    model, batch = tiny_model(), batch_of()
    monitor = GradientNormMonitor(model, threshold=0.1, patience=3)
    for step in range(10):
        output = backward(model, batch)
        if 2 <= step <= 6 or step == 8:  # starve "hard" for steps 2-6 (long enough) and 8 (too short)
            for p in model.modality_parameters("hard"):
                p.grad.mul_(1e-3)
        monitor.after_backward(model, batch, output, step)
    assert monitor.messages() == ["modality 'hard' gradient share stayed below 10% for 5 steps (steps 2-6)"]
    state = monitor.state_dict()
    fresh = GradientNormMonitor(model, threshold=0.1, patience=3)
    fresh.load_state_dict(state)
    assert fresh.messages() == monitor.messages()


def test_monitor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        GradientNormMonitor(tiny_model(), threshold=1.5)
    with pytest.raises(ValueError, match="model"):
        GradientNormMonitor(torch.nn.Linear(2, 2))


def test_modality_grad_norms_zero_without_gradients():
    assert modality_grad_norms(tiny_model()) == {"easy": 0.0, "hard": 0.0}


# ---------------------------------------------------------------- OGM-GE


def test_contribution_scores_on_constructed_logits():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    scores = contribution_scores({"a": probs.log(), "b": torch.zeros(2, 3)}, torch.tensor([0, 1]))
    assert scores["a"] == pytest.approx((0.7 + 0.6) / 2)
    assert scores["b"] == pytest.approx(1 / 3)


def test_paper_coefficient_at_rho_half_one_and_two_against_hand_computed_values():
    # Peng et al. (2022): k = 1 - tanh(alpha * rho) for rho > 1, else 1. alpha = 0.5, two modalities,
    # s_a / s_b = rho. tanh(1.0) = 0.7615941559557649 (hand: (e^2 - 1) / (e^2 + 1)).
    for rho, k_a, k_b in [(0.5, 1.0, 1.0 - 0.7615941559557649), (1.0, 1.0, 1.0), (2.0, 1.0 - 0.7615941559557649, 1.0)]:
        coefficients, ratios = ogm_coefficients({"a": 0.4 * rho, "b": 0.4}, 0.5)
        assert ratios["a"] == pytest.approx(rho) and ratios["b"] == pytest.approx(1 / rho)
        assert coefficients["a"] == pytest.approx(k_a, abs=1e-12), rho
        assert coefficients["b"] == pytest.approx(k_b, abs=1e-12), rho
    # the paper's form jumps at rho = 1: just above it k = 1 - tanh(0.5) = 0.5378828427399902
    assert ogm_coefficients({"a": 0.4 * (1 + 1e-9), "b": 0.4}, 0.5)[0]["a"] == pytest.approx(0.5378828427399902)


def test_shifted_coefficient_is_continuous_at_rho_one():
    # 1 - tanh(alpha * relu(rho - 1)): at alpha 0.5, rho 2 -> 1 - tanh(0.5) = 0.5378828427399902
    coefficients, _ = ogm_coefficients({"a": 0.8, "b": 0.4}, 0.5, coefficient="shifted")
    assert coefficients == pytest.approx({"a": 0.5378828427399902, "b": 1.0})
    assert ogm_coefficients({"a": 0.5, "b": 0.5}, 3.0, coefficient="shifted")[0] == {"a": 1.0, "b": 1.0}
    assert ogm_coefficients({"a": 0.4 * (1 + 1e-9), "b": 0.4}, 0.5, "shifted")[0]["a"] == pytest.approx(1.0)
    # three modalities: rho_m = s_m / mean of the others
    coefficients, ratios = ogm_coefficients({"a": 0.9, "b": 0.3, "c": 0.6}, 1.0, "shifted")
    assert ratios["a"] == pytest.approx(0.9 / 0.45)
    assert coefficients["a"] == pytest.approx(1 - math.tanh(1.0))
    assert ratios["c"] == pytest.approx(1.0) and coefficients["c"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scores"):
        ogm_coefficients({"a": 1.0}, 0.5)
    with pytest.raises(ValueError, match="coefficient: expected one of"):
        ogm_coefficients({"a": 0.8, "b": 0.4}, 0.5, coefficient="relu")
    with pytest.raises(ValueError, match="coefficient"):
        OGMGE(tiny_model(), coefficient="relu")


@pytest.mark.parametrize("coefficient", ["paper", "shifted"])
def test_ogmge_scales_only_the_dominant_encoder_by_k(coefficient: str):
    model, batch = tiny_model(), batch_of()
    output = backward(model, batch)
    before = grads(model)
    hook = OGMGE(model, alpha=0.8, noise=False, coefficient=coefficient)
    hook.after_backward(model, batch, output, step=0)
    hook.after_clip(model, batch, output, step=0)  # no noise: nothing to add
    scores = contribution_scores(output.modality_logits, batch["y"])
    k, _ = ogm_coefficients(scores, 0.8, coefficient)
    record = hook.step_record()
    after = grads(model)
    for name, g in before.items():
        modality = name.split(".")[1] if name.startswith("encoders.") else None
        factor = 1.0 if modality is None else k[modality]
        torch.testing.assert_close(after[name], g * factor)
    assert record["ogm_coeff/easy"] == pytest.approx(k["easy"]) and record["ogm_coeff/hard"] == pytest.approx(k["hard"])
    assert max(k.values()) == 1.0 and min(k.values()) < 1.0  # only the dominant one is slowed


def test_ogmge_noise_has_the_gradient_std_is_seeded_and_resumable():
    model, batch = tiny_model(), batch_of(64)
    output = backward(model, batch)
    before = grads(model)
    k, _ = ogm_coefficients(contribution_scores(output.modality_logits, batch["y"]), 0.5)
    results = []
    for _ in range(2):
        for name, p in model.named_parameters():
            p.grad = before[name].clone()
        hook = OGMGE(model, alpha=0.5, seed=3)
        hook.after_backward(model, batch, output, step=0)
        torch.testing.assert_close(
            grads(model)["encoders.hard.proj.weight"], k["hard"] * before["encoders.hard.proj.weight"]
        )
        hook.after_clip(model, batch, output, step=0)  # the noise comes after clipping
        results.append(grads(model))
    for name in before:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=0, atol=0)
    weight = "encoders.hard.proj.weight"  # (16, 16): 256 noise draws
    noise = results[0][weight] - k["hard"] * before[weight]
    assert noise.std().item() == pytest.approx(before[weight].std().item(), rel=0.25)
    bias = "encoders.hard.proj.bias"  # 1-d tensors get no noise
    torch.testing.assert_close(results[0][bias], k["hard"] * before[bias])
    # state_dict round trip: a restored generator continues the same noise stream
    hook = OGMGE(model, seed=3)
    state = hook.state_dict()
    first = torch.randn(5, generator=hook.generator)
    hook.load_state_dict(state)
    torch.testing.assert_close(torch.randn(5, generator=hook.generator), first)


def test_ogmge_needs_modality_logits_and_labels():
    model, batch = tiny_model(), batch_of()
    output = backward(model, batch)
    hook = OGMGE(model)
    output = output._replace(modality_logits=None)  # FusionOutput is an immutable NamedTuple
    with pytest.raises(ValueError, match="modality_logits"):
        hook.after_backward(model, batch, output, 0)
    with pytest.raises(ValueError, match=r"batch\['y'\]"):
        hook.after_backward(model, {**batch, "y": batch["y"].float()}, output, 0)


def test_ge_noise_survives_clipping_in_fit():
    """In `fit`, the step uses clip(k * g) + noise: the noise is not shrunk by clipping."""
    from crossfuse.train import FusionObjective

    _, splits = dominance_splits({"train": 32}, 1)
    data = splits["train"].data
    batch = {"inputs": data.inputs, "masks": data.masks, "y": data.y}
    config = TrainConfig(epochs=1, batch_size=32, seed=0, lr=0.1, optimizer="sgd", grad_clip=1e-3, weight_decay=0.0)
    model = tiny_model(7)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = OGMGE(model, alpha=0.5, seed=5)
    generator_state = hook.generator.get_state()
    fit(model, data, None, config, hooks=[hook])
    # Replay the step by hand: same weights, same batch (one batch = the whole split), same noise stream.
    reference = tiny_model(7)
    reference.load_state_dict(start)
    reference.train()
    loss, output = FusionObjective("classification").loss(reference, batch)
    loss.backward()
    replay = OGMGE(reference, alpha=0.5, seed=5)
    replay.generator.set_state(generator_state)
    replay.after_backward(reference, batch, output, 0)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e-3)
    clipped = grads(reference)
    replay.after_clip(reference, batch, output, 0)
    name = "encoders.hard.proj.weight"
    noise = reference.get_parameter(name).grad - clipped[name]
    assert clipped[name].norm() <= 1e-3 * 1.0001 < 0.1 * noise.norm()  # the noise dwarfs the clipped gradient
    lr = config.lr  # first step: momentum buffer = gradient, no weight decay, lr at its peak
    step = (start[name] - model.get_parameter(name).detach()) / lr
    torch.testing.assert_close(step, clipped[name] + noise, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- auxiliary losses


def test_auxiliary_loss_gradient_equals_gradient_of_the_summed_loss():
    model, batch = tiny_model(), batch_of()
    output = backward(model, batch)
    AuxiliaryLoss(model, weight=0.7).after_backward(model, batch, output, 0)
    via_hook = grads(model)
    model.zero_grad(set_to_none=True)
    out = model(batch["inputs"], batch["masks"])
    aux = sum(F.cross_entropy(out.modality_logits[m], batch["y"]) for m in SPECS)
    (F.cross_entropy(out.logits, batch["y"]) + 0.7 * aux).backward()
    for name, g in grads(model).items():
        torch.testing.assert_close(via_hook[name], g, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- build_hooks and fit


def test_build_hooks_selection_and_validation():
    model = tiny_model()
    assert build_hooks(model, TrainConfig()) == []
    hooks = build_hooks(model, TrainConfig(balance="ogm-ge", monitor_gradients=True))
    assert [type(h) for h in hooks] == [GradientNormMonitor, OGMGE]
    assert hooks[1].coefficient == "paper"  # `crossfuse train --balance ogm-ge` = the dominance experiment's
    assert [type(h) for h in build_hooks(model, TrainConfig(balance="aux"))] == [AuxiliaryLoss]
    with pytest.raises(ValueError, match="balance: expected one of"):
        build_hooks(model, TrainConfig(balance="ogm"))
    with pytest.raises(ValueError, match="balance_alpha"):
        build_hooks(model, TrainConfig(balance="ogm-ge", balance_alpha=-1.0))
    with pytest.raises(ValueError, match="classification"):
        build_hooks(model, TrainConfig(balance="aux", task="regression"))


def _train(config: TrainConfig) -> tuple[dict[str, torch.Tensor], object]:
    _, splits = dominance_splits({"train": 96}, 1)
    model = tiny_model(5)
    result = fit(model, splits["train"].data, None, config)
    return {k: v.clone() for k, v in model.state_dict().items()}, result


def test_balance_none_and_monitoring_are_bit_identical_to_plain_training():
    base = TrainConfig(epochs=2, batch_size=32, seed=2)
    plain, _ = _train(base)
    monitored, result = _train(TrainConfig(epochs=2, batch_size=32, seed=2, balance="none", monitor_gradients=True))
    for name, value in plain.items():
        assert torch.equal(value, monitored[name]), name
    assert len(result.step_records) == 6 and "grad_share/hard" in result.step_records[0]
    rebalanced, result = _train(TrainConfig(epochs=2, batch_size=32, seed=2, balance="ogm-ge"))
    assert any(not torch.equal(plain[n], rebalanced[n]) for n in plain)  # OGM-GE does act
    assert "ogm_coeff/easy" in result.step_records[0]


# ---------------------------------------------------------------- the dominance generator


def test_dominance_generator_follows_its_generative_model():
    config = DominanceConfig()
    n = 12000  # ~2400 misleading samples: their 1/C hit rate is known to about ±0.009 (one sd)
    task, splits = dominance_splits({"train": n, "test": 10}, seed=0, config=config)
    split = splits["train"]
    data = split.data
    assert data.inputs["easy"].shape == (n, config.easy_tokens, config.easy_dim)
    assert data.inputs["hard"].shape == (n, config.hard_tokens, config.hard_dim)
    assert splits["test"].data.y.shape == (10,)
    torch.testing.assert_close(task.directions @ task.directions.T, torch.eye(config.num_classes))
    assert split.reliable.float().mean().item() == pytest.approx(config.easy_reliability, abs=0.03)
    nearest = easy_oracle_predict(task, data.inputs["easy"])
    # reliable samples show their class; the others a uniformly random one (right 1/C of the time)
    assert (nearest[split.reliable] == data.y[split.reliable]).float().mean() > 0.99
    misleading_right = (nearest[~split.reliable] == data.y[~split.reliable]).float().mean().item()
    assert misleading_right == pytest.approx(1 / config.num_classes, abs=0.04)
    # the hard modality: mean token carries ~no class signal, the second moment does
    assert (hard_oracle_predict(task, data.inputs["hard"]) == data.y).float().mean() > 0.93
    class_means = torch.stack([data.inputs["hard"][data.y == c].mean((0, 1)) for c in range(config.num_classes)])
    assert class_means.abs().max() < 0.1
    again, _ = dominance_splits({"train": 4000, "test": 10}, seed=0, config=config)
    torch.testing.assert_close(again.easy_directions, task.easy_directions)
    torch.testing.assert_close(task.easy_directions @ task.easy_directions.T, torch.eye(config.num_classes))
    # the easy modality's mean token carries ~no class signal either (it needs encoder learning)
    easy_means = torch.stack([data.inputs["easy"][data.y == c].mean((0, 1)) for c in range(config.num_classes)])
    assert easy_means.abs().max() < 0.1
    with pytest.raises(ValueError, match="easy_reliability"):
        dominance_splits({"train": 4}, config=DominanceConfig(easy_reliability=1.5))
    with pytest.raises(ValueError, match="hard_dim"):
        dominance_splits({"train": 4}, config=DominanceConfig(num_classes=5, hard_dim=4))
