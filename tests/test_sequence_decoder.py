"""Sequence decoders: shapes, masks, attention, and that cross-attention really reads the context stream."""

from __future__ import annotations

import pytest
import torch

from crossfuse.models.sequence_decoder import (
    BinEmbedding,
    CrossSequenceDecoder,
    EarlySequenceDecoder,
    SequenceDecoderConfig,
    sinusoidal_positions,
)

CONFIG = SequenceDecoderConfig(dim=16, num_heads=2, num_layers=2, context_layers=1, max_len=32)


def test_cross_shapes_and_attention() -> None:
    model = CrossSequenceDecoder({"spikes": 5, "lfp": 3}, "spikes", 2, CONFIG)
    inputs = {"spikes": torch.randn(4, 10, 5), "lfp": torch.randn(4, 14, 3)}  # different lengths are fine
    out = model(inputs, return_attention=True)
    assert out.prediction.shape == (4, 10, 2)
    assert set(out.attention) == {"layer 1", "layer 2"}
    for w in out.attention.values():
        assert w.shape == (4, 2, 10, 14)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, 2, 10))
    assert model(inputs).attention is None


def test_cross_context_mask_is_respected() -> None:
    torch.manual_seed(0)
    model = CrossSequenceDecoder({"spikes": 5, "lfp": 3}, "spikes", 2, CONFIG).eval()
    inputs = {"spikes": torch.randn(2, 8, 5), "lfp": torch.randn(2, 12, 3)}
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 9:] = False
    out = model(inputs, {"lfp": mask}, return_attention=True)
    assert all(float(w[..., 9:].detach().abs().max()) == 0.0 for w in out.attention.values())
    # masked LFP bins do not influence the prediction (the encoder and the cross-attention both skip them)
    changed = {**inputs, "lfp": inputs["lfp"].clone()}
    changed["lfp"][:, 9:] += 100.0
    torch.testing.assert_close(model(changed, {"lfp": mask}).prediction, out.prediction)


def test_cross_prediction_depends_on_the_context_only_through_attention() -> None:
    torch.manual_seed(1)
    model = CrossSequenceDecoder({"a": 4, "b": 4}, "a", 1, CONFIG).eval()
    a, b = torch.randn(1, 6, 4), torch.randn(1, 9, 4)
    base = model({"a": a, "b": b}).prediction
    assert not torch.allclose(model({"a": a, "b": b + 1.0}).prediction, base)


def test_early_matches_unimodal_when_one_modality_and_needs_one_timeline() -> None:
    model = EarlySequenceDecoder({"spikes": 5, "lfp": 3}, 2, CONFIG)
    out = model({"spikes": torch.randn(3, 7, 5), "lfp": torch.randn(3, 7, 3)}, return_attention=True)
    assert out.prediction.shape == (3, 7, 2) and out.attention["layer 1"].shape == (3, 2, 7, 7)
    with pytest.raises(ValueError, match="one timeline"):
        model({"spikes": torch.randn(3, 7, 5), "lfp": torch.randn(3, 8, 3)})
    alone = EarlySequenceDecoder({"lfp": 3}, 2, CONFIG)
    assert alone({"lfp": torch.randn(2, 5, 3), "spikes": torch.randn(2, 5, 5)}).prediction.shape == (2, 5, 2)


def test_early_is_causal_free_but_mask_blocks_padding() -> None:
    torch.manual_seed(2)
    model = EarlySequenceDecoder({"x": 3}, 1, CONFIG).eval()
    x = torch.randn(1, 6, 3)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    base = model({"x": x}, {"x": mask}).prediction[:, :4]
    x2 = x.clone()
    x2[:, 4:] = 50.0
    torch.testing.assert_close(model({"x": x2}, {"x": mask}).prediction[:, :4], base)


def test_context_patches_and_their_times() -> None:
    config = SequenceDecoderConfig(dim=16, num_heads=2, num_layers=1, kernel_size=3, context_stride=4, max_len=32)
    model = CrossSequenceDecoder({"spikes": 5, "lfp": 3}, "spikes", 2, config).eval()
    inputs = {"spikes": torch.randn(2, 10, 5), "lfp": torch.randn(2, 14, 3)}  # 14 bins -> 4 patches
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[:, 12:] = False  # the last patch (bins 12..15, two of them padding) is entirely invalid
    out = model(inputs, {"lfp": mask}, return_attention=True)
    assert out.attention["layer 1"].shape == (2, 2, 10, 4)
    assert float(out.attention["layer 1"][..., 3].detach().abs().max()) == 0.0
    torch.testing.assert_close(model.context_times(14), torch.tensor([1.5, 5.5, 9.5, 13.5]))
    # the position table starts on the query's clock, at the patch centres
    torch.testing.assert_close(model.embed["lfp"].position[:4].detach(), sinusoidal_positions(4, 16, 4.0, 1.5))


def test_bin_embedding_kernel_one_is_a_per_bin_linear_map() -> None:
    embed = BinEmbedding(3, 8, 16, position_init="none")
    x = torch.randn(2, 5, 3)
    h, mask = embed(x)
    expected = x @ embed.proj.weight[:, :, 0].T + embed.proj.bias
    torch.testing.assert_close(h, expected)
    assert mask is None


def test_sinusoidal_positions_match_the_formula() -> None:
    codes = sinusoidal_positions(10, 8)
    pos, i = 7, 2  # dims 2i and 2i+1 use frequency 10000^(-2i/d)
    freq = 10000 ** (-2 * i / 8)
    assert codes[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(pos * freq)).item(), abs=1e-6)
    assert codes[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(pos * freq)).item(), abs=1e-6)
    assert BinEmbedding(3, 8, 10).position.detach().equal(codes)
    with pytest.raises(ValueError, match="kernel_size"):
        BinEmbedding(3, 8, 10, kernel_size=4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m({"spikes": torch.randn(2, 4, 5)}), "missing"),
        (lambda m: m({"spikes": torch.randn(2, 4, 6), "lfp": torch.randn(2, 4, 3)}), "spikes"),
        (lambda m: m({"spikes": torch.randn(2, 4, 5), "lfp": torch.randn(3, 4, 3)}), "lfp"),
        (lambda m: m({"spikes": torch.randn(2, 40, 5), "lfp": torch.randn(2, 4, 3)}), "max_len"),
        (
            lambda m: m({"spikes": torch.randn(2, 4, 5), "lfp": torch.randn(2, 4, 3)}, {"lfp": torch.ones(2, 4)}),
            "bool",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, match: str) -> None:
    model = CrossSequenceDecoder({"spikes": 5, "lfp": 3}, "spikes", 2, CONFIG)
    with pytest.raises(ValueError, match=match):
        call(model)
    with pytest.raises(ValueError, match="query"):
        CrossSequenceDecoder({"spikes": 5, "lfp": 3}, "eeg", 2, CONFIG)


@pytest.mark.parametrize("kind", ["cross", "early"])
def test_attention_layer_selection(kind: str) -> None:
    """True keeps its meaning (every layer); "last" and indices return only those layers, with the same values."""
    torch.manual_seed(0)
    dims = {"spikes": 5, "lfp": 3}
    model = (
        CrossSequenceDecoder(dims, "spikes", 2, CONFIG) if kind == "cross" else EarlySequenceDecoder(dims, 2, CONFIG)
    ).eval()
    inputs = {"spikes": torch.randn(2, 9, 5), "lfp": torch.randn(2, 9, 3)}
    everything = model(inputs, return_attention=True)
    assert set(everything.attention) == {"layer 1", "layer 2"}
    last = model(inputs, return_attention="last")
    assert set(last.attention) == {"layer 2"}
    torch.testing.assert_close(last.attention["layer 2"], everything.attention["layer 2"])
    first = model(inputs, return_attention=[0])
    assert set(first.attention) == {"layer 1"}
    torch.testing.assert_close(first.attention["layer 1"], everything.attention["layer 1"])
    torch.testing.assert_close(first.prediction, model(inputs).prediction)
