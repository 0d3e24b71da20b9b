"""Fusion strategies: training beats chance, parameter counts match formulas, masks, errors, registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crossfuse.fusion import FUSIONS, FusionConfig, ModalitySpec, build_fusion, masked_mean
from crossfuse.models.encoders import DEFAULT_MAX_LENGTH, SequenceEncoder
from crossfuse.train import TrainConfig, fit

NAMES = ["early", "late", "flatten", "cross", "bicross", "gated"]
ATTENDING = ["early", "late", "cross", "bicross", "gated"]  # variable-length strategies
SMALL = FusionConfig(dim=16, num_heads=2, num_layers=1, mlp_ratio=2.0, encoder_layers=1)
SPECS = {"text": ModalitySpec(dim=4, length=6), "image": ModalitySpec(dim=3, length=5)}


def make_inputs(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, spec.length, spec.dim, generator=g) for name, spec in SPECS.items()}


def model_for(name: str, config: FusionConfig = SMALL, specs: dict[str, ModalitySpec] = SPECS, outputs: int = 3):
    torch.manual_seed(0)
    return build_fusion(name, specs, outputs, config).eval()


# ----------------------------------------------------------------------------- registry, training


def test_registry_lists_all_six() -> None:
    assert set(NAMES) <= set(FUSIONS)


def additive_task(n: int, seed: int):
    """y = 1 iff mean_t text[t, 0] + mean_t image[t, 0] > 0: needs both modalities, linear in each."""
    from crossfuse.data.dataset import MultimodalDataset

    g = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(n, spec.length, spec.dim, generator=g) for name, spec in SPECS.items()}
    score = x["text"][:, :, 0].mean(1) + x["image"][:, :, 0].mean(1)
    return MultimodalDataset(x, (score > 0).long())


@pytest.mark.parametrize("name", NAMES)
def test_strategy_trains_above_chance(name: str) -> None:
    train, val = additive_task(512, seed=1), additive_task(256, seed=2)
    model = build_fusion(name, SPECS, 2, SMALL)
    result = fit(model, train, val, TrainConfig(epochs=8, batch_size=32, lr=3e-3, seed=0))
    # chance is 0.5 (balanced by symmetry); a model that learned nothing stays near it
    assert result.best["val_accuracy"] > 0.75, result.history


# ----------------------------------------------------------------------------- parameter counts


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def self_block(d: int, ratio: float) -> int:
    hidden = int(d * ratio)
    return 2 * 2 * d + 4 * linear(d, d) + linear(d, hidden) + linear(hidden, d)


def encoder(in_dim: int, d: int, length: int, layers: int, ratio: float) -> int:
    return linear(in_dim, d) + length * d + layers * self_block(d, ratio)


@pytest.mark.parametrize("length", [4, 16, 64])
def test_flatten_parameter_count_matches_formula(length: int) -> None:
    specs = {"a": ModalitySpec(5, length), "b": ModalitySpec(7, 2 * length)}
    cfg = FusionConfig(dim=16, num_layers=3)
    d, c, flat = 16, 4, 5 * length + 7 * 2 * length
    expected = d * flat + d + (cfg.num_layers - 1) * linear(d, d) + linear(d, c)
    model = build_fusion("flatten", specs, c, cfg)
    assert model.num_parameters == expected


def test_late_and_early_parameter_counts_match_formulas() -> None:
    cfg = FusionConfig(dim=16, num_heads=2, num_layers=2, encoder_layers=1, mlp_ratio=3.0)
    specs = {"a": ModalitySpec(5, 7), "b": ModalitySpec(3)}  # b uses the default max length
    lengths = {"a": 7, "b": DEFAULT_MAX_LENGTH}
    d, c, r = 16, 4, 3.0
    late = sum(
        encoder(s.dim, d, lengths[n], cfg.encoder_layers + cfg.num_layers, r) + 2 * d + linear(d, c)
        for n, s in specs.items()
    )
    assert build_fusion("late", specs, c, cfg).num_parameters == late
    early = (
        sum(encoder(s.dim, d, lengths[n], cfg.encoder_layers, r) + d for n, s in specs.items())  # + modality emb
        + cfg.num_layers * self_block(d, r)
        + 2 * 2 * d  # per-stream final LayerNorm
        + linear(2 * d, c)
    )
    assert build_fusion("early", specs, c, cfg).num_parameters == early


# ----------------------------------------------------------------------------- outputs and masks


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name: str) -> None:
    out = model_for(name)(make_inputs(), return_attention=True)
    assert out.logits.shape == (4, 3)
    assert out.pooled.shape == (4, 16 if name == "flatten" else 32)


@pytest.mark.parametrize("name", ["early", "cross", "bicross", "gated"])
def test_modality_logits_sum_to_logits(name: str) -> None:
    out = model_for(name)(make_inputs())
    torch.testing.assert_close(sum(out.modality_logits.values()), out.logits)


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_late_combination(combine: str) -> None:
    model = model_for("late", dataclasses.replace(SMALL, late_combine=combine))
    out = model(make_inputs())
    experts = torch.stack(list(out.modality_logits.values()))
    expected = experts.mean(0) if combine == "logits" else experts.softmax(-1).mean(0).log()
    torch.testing.assert_close(out.logits, expected)


def random_masks(batch: int, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(batch, spec.length, generator=g) > 0.4 for name, spec in SPECS.items()}
    masks["text"][:, 0] = True
    return masks


@pytest.mark.parametrize("name", NAMES)
def test_masked_values_do_not_change_output(name: str) -> None:
    model = model_for(name)
    x, masks = make_inputs(), random_masks(4)
    changed = {n: torch.where(masks[n][..., None], v, v + 100.0 * torch.randn_like(v)) for n, v in x.items()}
    a = model(x, masks, return_attention=True)
    b = model(changed, masks, return_attention=True)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.pooled, b.pooled)
    unmasked = model(x)
    assert not torch.allclose(a.logits, unmasked.logits)  # the masks did something


@pytest.mark.parametrize("name", ATTENDING)
def test_padding_equals_truncation(name: str) -> None:
    """Masked trailing positions are invisible: the output equals that of the truncated sequences."""
    model = model_for(name)
    x = make_inputs()
    masks = {"text": torch.arange(6)[None].expand(4, -1) < 4, "image": torch.arange(5)[None].expand(4, -1) < 2}
    padded = model(x, masks)
    truncated = model({"text": x["text"][:, :4], "image": x["image"][:, :2]})
    torch.testing.assert_close(padded.logits, truncated.logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_modality_is_finite(name: str) -> None:
    model = build_fusion(name, SPECS, 3, SMALL)
    x = make_inputs()
    masks = {"image": torch.zeros(4, 5, dtype=torch.bool)}
    out = model(x, masks, return_attention=True)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pooled).all()
    out.logits.logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["early", "cross", "bicross", "gated", "late"])
def test_attention_weights_respect_masks(name: str) -> None:
    masks = random_masks(4)
    out = model_for(name)(make_inputs(), masks, return_attention=True)
    assert out.attention
    for label, w in out.attention.items():
        query, key = label.split("->")
        assert w.shape == (4, SMALL.num_heads, SPECS[query].length, SPECS[key].length)
        assert (w[~masks[key][:, None, None, :].expand_as(w)] == 0).all()
        if name != "early":  # early's blocks are slices of one softmax over all tokens
            # rows sum to 1, or to 0 where the key modality has no valid position at all
            has_key = masks[key].any(-1).float()[:, None, None].expand(-1, w.shape[1], w.shape[2])
            torch.testing.assert_close(w.sum(-1), has_key)


def test_cross_direction_and_many_modalities() -> None:
    out = model_for("cross", dataclasses.replace(SMALL, direction="b->a"))(make_inputs(), return_attention=True)
    assert set(out.attention) == {"image->text"}
    specs = {**SPECS, "audio": ModalitySpec(2, 3)}
    x = {**make_inputs(), "audio": torch.randn(4, 3, 2)}
    out = model_for("cross", specs=specs)(x, return_attention=True)
    assert set(out.attention) == {"text->image", "text->audio"}
    assert out.pooled.shape == (4, 3 * 16)


def test_gated_streams_unchanged_at_init() -> None:
    model = model_for("gated", dataclasses.replace(SMALL, num_layers=2))
    x, masks = make_inputs(), random_masks(4)
    out = model(x, masks)
    for name in SPECS:
        torch.testing.assert_close(out.tokens[name], model.encoders[name](x[name], masks[name]).x)
    with torch.no_grad():
        model.layers[0]["image"].alpha_attn.fill_(1.0)
    assert not torch.allclose(model(x, masks).tokens["text"], out.tokens["text"])


def test_cross_changes_query_stream_at_init() -> None:
    model = model_for("cross")
    x = make_inputs()
    out = model(x)
    assert not torch.allclose(out.tokens["text"], model.encoders["text"](x["text"]).x)
    torch.testing.assert_close(out.tokens["image"], model.encoders["image"](x["image"]).x)


def test_modality_parameters_are_the_encoders() -> None:
    for name in NAMES:
        model = model_for(name)
        for modality in SPECS:
            params = list(model.modality_parameters(modality))
            assert params and all(any(p is q for q in model.parameters()) for p in params)


# ----------------------------------------------------------------------------- encoder pieces


def test_masked_mean_matches_reference_and_is_zero_when_empty() -> None:
    x = torch.randn(3, 5, 2)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0, [0, 1, 4]].mean(0))
    torch.testing.assert_close(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], x[2].mean(0))


def test_sequence_encoder_rejects_too_long_input() -> None:
    enc = SequenceEncoder(3, 8, max_length=4, num_layers=1, num_heads=2)
    assert enc(torch.randn(2, 4, 3)).x.shape == (2, 4, 8)
    with pytest.raises(ValueError, match="max_length=4"):
        enc(torch.randn(2, 5, 3))


# ----------------------------------------------------------------------------- bad input


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match=r"fusion: unknown strategy 'nope'.*bicross"):
        build_fusion("nope", SPECS, 2)


@pytest.mark.parametrize(
    ("name", "specs", "outputs", "config", "match"),
    [
        ("flatten", {"text": ModalitySpec(4), "image": ModalitySpec(3, 5)}, 2, SMALL, r"modalities\['text'\].*length"),
        ("bicross", {**SPECS, "audio": ModalitySpec(2)}, 2, SMALL, "modalities: bicross.*exactly 2"),
        ("cross", {"text": ModalitySpec(4)}, 2, SMALL, "modalities: cross.*at least 2"),
        ("cross", SPECS, 2, dataclasses.replace(SMALL, direction="sideways"), "config.direction"),
        ("late", SPECS, 2, dataclasses.replace(SMALL, late_combine="vote"), "config.late_combine"),
        ("early", SPECS, 0, SMALL, "num_outputs"),
        ("early", {}, 2, SMALL, "modalities"),
        ("early", {"te.xt": ModalitySpec(4)}, 2, SMALL, "modalities"),
        ("early", {"text": ModalitySpec(0)}, 2, SMALL, r"modalities\['text'\]"),
        ("early", SPECS, 2, dataclasses.replace(SMALL, num_heads=3), "config.num_heads"),
    ],
)
def test_bad_specs_raise(name, specs, outputs, config, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_fusion(name, specs, outputs, config)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise(name: str) -> None:
    model = model_for(name)
    x = make_inputs()
    with pytest.raises(ValueError, match="inputs: expected modalities"):
        model({"text": x["text"]})
    with pytest.raises(ValueError, match=r"inputs\['image'\].*expected shape"):
        model({**x, "image": torch.randn(4, 5, 7)})
    with pytest.raises(ValueError, match=r"inputs\['image'\].*B=4"):
        model({**x, "image": torch.randn(3, 5, 3)})
    with pytest.raises(ValueError, match=r"masks\['text'\].*torch.bool"):
        model(x, {"text": torch.ones(4, 6)})
    with pytest.raises(ValueError, match=r"masks: unknown modalities \['audio'\]"):
        model(x, {"audio": torch.ones(4, 6, dtype=torch.bool)})


def test_flatten_rejects_other_length() -> None:
    model = model_for("flatten")
    with pytest.raises(ValueError, match=r"inputs\['image'\].*built for length 5.*length 4"):
        model({**make_inputs(), "image": torch.randn(4, 4, 3)})


def test_flatten_parameters_grow_with_length() -> None:
    small = build_fusion("flatten", {"a": ModalitySpec(3, 8), "b": ModalitySpec(3, 8)}, 2).num_parameters
    large = build_fusion("flatten", {"a": ModalitySpec(3, 16), "b": ModalitySpec(3, 16)}, 2).num_parameters
    assert large - small == FusionConfig().dim * 2 * 3 * 8


@pytest.mark.parametrize("name", ["items", "keys", "training"])
def test_modality_names_reserved_by_moduledict_are_refused_clearly(name: str) -> None:
    specs = {name: ModalitySpec(4, 3), "other": ModalitySpec(4, 3)}
    with pytest.raises(ValueError, match=rf"modalities: the name '{name}' is reserved"):
        build_fusion("cross", specs, 2)


# ----------------------------------------------------------------------------- contract, layers, export


def test_gated_is_cross_with_another_block_class() -> None:
    from crossfuse.blocks import CrossAttentionBlock, GatedCrossAttentionBlock
    from crossfuse.fusion import CrossAttentionFusion, GatedCrossAttentionFusion

    assert GatedCrossAttentionFusion.fuse is CrossAttentionFusion.fuse  # one code path
    assert GatedCrossAttentionFusion.__init__ is CrossAttentionFusion.__init__
    cross, gated = model_for("cross"), model_for("gated")
    assert all(type(b) is CrossAttentionBlock for layer in cross.layers for b in layer.values())
    assert all(type(b) is GatedCrossAttentionBlock for layer in gated.layers for b in layer.values())


def test_cross_forward_equals_hand_composed_layers() -> None:
    """encoders -> query stream through every (layer, context) block -> ConcatPoolHead, written out by hand."""
    config = dataclasses.replace(SMALL, num_layers=2)
    model = model_for("cross", config)
    x, masks = make_inputs(), random_masks(4)
    out = model(x, masks)
    streams = {n: model.encoders[n](x[n], masks[n]).x for n in SPECS}
    h = streams["text"]
    for layer in model.layers:
        h = layer["image"](h, streams["image"], mask=masks["text"], context_mask=masks["image"]).x
    streams["text"] = h
    logits, pooled, parts = model.head(streams, masks)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.pooled, pooled)
    torch.testing.assert_close(out.modality_logits, parts)


@pytest.mark.parametrize("name", ATTENDING)
def test_attention_layer_selection(name: str) -> None:
    """ "all" gives every layer's weights, equal to what each selected layer gives on its own; True = last."""
    model = model_for(name, dataclasses.replace(SMALL, num_layers=2))
    x, masks = make_inputs(), random_masks(4)
    depth = model.attention_depth
    everything = model(x, masks, return_attention="all")
    assert sorted(everything.weights) == list(range(depth))
    for i in range(depth):
        alone = model(x, masks, return_attention=[i])
        assert list(alone.weights) == [i]
        torch.testing.assert_close(alone.weights[i], everything.weights[i])
        torch.testing.assert_close(alone.logits, everything.logits)
    last = model(x, masks, return_attention=True)
    assert list(last.weights) == [depth - 1]
    torch.testing.assert_close(last.attention, everything.weights[depth - 1])
    none = model(x, masks)
    assert none.weights is None and none.attention is None
    torch.testing.assert_close(none.logits, everything.logits)


def test_bad_layer_selection_names_the_argument() -> None:
    with pytest.raises(ValueError, match="return_attention"):
        model_for("cross")(make_inputs(), return_attention=[5])


def test_cross_fusion_exports_with_torch_export() -> None:
    model = model_for("cross")
    x, masks = make_inputs(), random_masks(4)
    exported = torch.export.export(model, (x, masks), {"return_attention": True})
    got, want = exported.module()(x, masks, return_attention=True), model(x, masks, return_attention=True)
    assert isinstance(got, type(want))
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.modality_logits, want.modality_logits)
    torch.testing.assert_close(got.weights, want.weights)
