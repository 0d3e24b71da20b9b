"""Bring-your-own encoders: build_fusion(encoders=), ImageTokens, HuggingFaceEncoder, mask forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crossfuse.fusion import FUSIONS, FusionConfig, ModalitySpec, build_fusion
from crossfuse.models.adapters import HuggingFaceEncoder, ImageTokens

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = FusionConfig(dim=16, num_heads=2, num_layers=1)


def cnn(channels: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU())  # 8x8 -> 4x4


def test_image_tokens_flatten_row_major_with_2d_positions() -> None:
    torch.manual_seed(0)
    backbone = cnn()
    adapter = ImageTokens(backbone, channels=8, max_height=4, max_width=4)
    images = torch.randn(3, 1, 8, 8)
    tokens = adapter(images)
    assert tokens.shape == (3, 16, 8)
    features = backbone(images)
    i, j = 2, 3  # token i * W + j is cell (i, j) plus row i's and column j's embeddings
    expected = features[:, :, i, j] + adapter.rows[i] + adapter.cols[j]
    torch.testing.assert_close(tokens[:, i * 4 + j], expected)


def test_image_tokens_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="channels: expected a positive int"):
        ImageTokens(cnn(), channels=0)
    with pytest.raises(ValueError, match=r"backbone: expected a feature map \(B, C=4"):
        ImageTokens(cnn(8), channels=4)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="exceeds max_height"):
        ImageTokens(cnn(8), channels=8, max_height=2)(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_build_fusion_runs_raw_images_through_the_given_encoder(name: str) -> None:
    torch.manual_seed(0)
    specs = {"image": ModalitySpec(8, 16), "text": ModalitySpec(5, 6)}
    model = build_fusion(name, specs, 3, SMALL, encoders={"image": ImageTokens(cnn(), 8, 4, 4)})
    images, text = torch.randn(4, 1, 8, 8), torch.randn(4, 6, 5)
    out = model({"image": images, "text": text})
    assert out.logits.shape == (4, 3)
    # the same as giving the encoder's tokens to the model without the input encoder
    tokens = model.input_encoders["image"](images)
    encoders, model.input_encoders = model.input_encoders, nn.ModuleDict()
    torch.testing.assert_close(model({"image": tokens, "text": text}).logits, out.logits)
    model.input_encoders = encoders
    out.logits.sum().backward()
    assert model.input_encoders["image"].backbone[0].weight.grad is not None  # trained end to end


def test_build_fusion_encoder_errors() -> None:
    specs = {"image": ModalitySpec(8), "text": ModalitySpec(5)}
    with pytest.raises(ValueError, match="encoders: unknown modality 'audio'"):
        build_fusion("early", specs, 2, SMALL, encoders={"audio": cnn()})
    with pytest.raises(TypeError, match=r"encoders\['image'\]: expected a torch.nn.Module"):
        build_fusion("early", specs, 2, SMALL, encoders={"image": lambda x: x})
    model = build_fusion("early", specs, 2, SMALL, encoders={"image": ImageTokens(cnn(4), 4)})
    with pytest.raises(
        ValueError, match=r"encoders\['image'\]: expected the encoder to return tokens of shape \(B, N, 8\)"
    ):
        model({"image": torch.randn(2, 1, 8, 8), "text": torch.randn(2, 3, 5)})


class MaskedMean(nn.Module):
    """A toy encoder returning (tokens, int mask): token i valid iff its ids are nonzero."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        valid = (ids != 0).long() if mask is None else mask.long()
        return self.embed(ids), valid


def test_encoder_masks_int_masks_and_presence_vectors_are_accepted() -> None:
    torch.manual_seed(0)
    specs = {"ids": ModalitySpec(6), "x": ModalitySpec(3)}
    model = build_fusion("cross", specs, 2, SMALL, encoders={"ids": MaskedMean()}).eval()
    ids = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 0]])
    x = torch.randn(2, 5, 3)
    out = model({"ids": ids, "x": x})
    # padding ids are masked: changing the token embedded at a padded position changes nothing
    ids_changed = ids.clone()
    ids_changed[0, 3] = 0
    torch.testing.assert_close(model({"ids": ids_changed, "x": x}).logits, out.logits)
    # an explicit int mask for the encoder, an int mask for a plain modality, and a (B,) presence vector
    hf_mask = (ids != 0).long()
    torch.testing.assert_close(model({"ids": ids, "x": x}, {"ids": hf_mask}).logits, out.logits)
    int_mask = torch.tensor([[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]])
    want = model({"ids": ids, "x": x}, {"x": int_mask.bool()}).logits
    torch.testing.assert_close(model({"ids": ids, "x": x}, {"x": int_mask}).logits, want)
    absent = model({"ids": ids, "x": x}, {"x": torch.tensor([0, 1])}).logits
    torch.testing.assert_close(
        absent, model({"ids": ids, "x": x}, {"x": torch.tensor([[0] * 5, [1] * 5]).bool()}).logits
    )
    assert torch.isfinite(absent).all()


def tiny_bert() -> nn.Module:
    # Per test, not at module level: a module-level importorskip would skip the tests above too.
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config)  # randomly initialised: nothing is downloaded


def test_hugging_face_encoder_matches_the_model_and_accepts_integer_masks() -> None:
    bert = tiny_bert().eval()
    encoder = HuggingFaceEncoder(bert)
    assert encoder.dim == 16
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    tokens, valid = encoder.eval()(ids, mask)
    torch.testing.assert_close(tokens, bert(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert valid.dtype == torch.bool and valid.tolist() == mask.bool().tolist()
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(3, 7\)"):
        encoder(ids, mask[:, :3])


def test_hugging_face_encoder_in_a_fusion_freeze_unfreeze() -> None:
    encoder = HuggingFaceEncoder(tiny_bert(), freeze=True)
    specs = {"text": ModalitySpec(16, 7), "image": ModalitySpec(8, 16)}
    model = build_fusion("bicross", specs, 2, SMALL, encoders={"text": encoder, "image": ImageTokens(cnn(), 8)})
    model.train()
    assert not encoder.model.training  # frozen: dropout stays off
    ids, mask = torch.randint(1, 50, (2, 7)), torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    out = model({"text": ids, "image": torch.randn(2, 1, 8, 8)}, {"text": mask})
    out.logits.sum().backward()
    assert all(p.grad is None for p in encoder.model.parameters())
    assert model.head.head.weight.grad is not None
    encoder.unfreeze()
    assert encoder.model.training and all(p.requires_grad for p in encoder.model.parameters())
    model({"text": ids, "image": torch.randn(2, 1, 8, 8)}, {"text": mask}).logits.sum().backward()
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        HuggingFaceEncoder("bert-base-uncased")  # type: ignore[arg-type]


def test_run_config_records_input_encoders_and_refuses_to_rebuild_them(tmp_path) -> None:
    from crossfuse.runs import build_model, model_spec

    specs = {"image": ModalitySpec(8, 16), "text": ModalitySpec(5, 6)}
    model = build_fusion("early", specs, 2, SMALL, encoders={"image": ImageTokens(cnn(), 8)})
    spec = model_spec(model)
    assert spec["input_encoders"] == {"image": "crossfuse.models.adapters.ImageTokens"}
    with pytest.raises(ValueError, match=r"config\.json: the model has your own input encoders"):
        build_model(spec)
    assert "input_encoders" not in model_spec(build_fusion("early", specs, 2, SMALL))


def test_modality_parameters_include_the_input_encoder() -> None:
    specs = {"image": ModalitySpec(8, 16), "text": ModalitySpec(5, 6)}
    model = build_fusion("late", specs, 2, SMALL, encoders={"image": ImageTokens(cnn(), 8)})
    image = {id(p) for p in model.modality_parameters("image")}
    assert {id(p) for p in model.input_encoders["image"].parameters()} <= image
    assert {id(p) for p in model.encoders["image"].parameters()} <= image
    assert image.isdisjoint(id(p) for p in model.modality_parameters("text"))
