"""Patch encoder and captioner: shapes, causality, caches, pooled memory, objective, checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from crossfuse.checkpoint import load_captioner, save_captioner
from crossfuse.data.radiographs import RadiographDataset, Vocabulary, generate_studies, max_report_length
from crossfuse.models.captioner import (
    Captioner,
    CaptionerConfig,
    CaptionObjective,
)
from crossfuse.models.patch_encoder import PatchEncoder
from crossfuse.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIG = CaptionerConfig(vocab_size=11, image_size=32, patch_size=8, dim=32, num_heads=2, max_len=12)


def model(**changes) -> Captioner:
    torch.manual_seed(0)
    return Captioner(CaptionerConfig(**{**CONFIG.__dict__, **changes})).eval()


def test_patch_encoder_shapes_and_patch_order() -> None:
    encoder = PatchEncoder(image_size=32, patch_size=8, dim=16, depth=0, standardize=False)
    assert encoder.grid == (4, 4) and encoder(torch.rand(2, 1, 32, 32)).shape == (2, 16, 16)
    # with no blocks, a patch's feature depends on that patch only: patch n is grid cell (n // 4, n % 4)
    image = torch.zeros(1, 1, 32, 32)
    changed = image.clone()
    changed[0, 0, 8:16, 24:32] = 1.0  # grid cell (1, 3) -> patch 7
    delta = (encoder(changed) - encoder(image)).abs().sum(-1)[0]
    assert delta.argmax().item() == 7 and (delta > 1e-6).sum().item() == 1
    with pytest.raises(ValueError, match="patch_size"):
        PatchEncoder(image_size=30, patch_size=8)
    assert set(PatchEncoder(depth=2).layers()) == {"embed", "block 1", "block 2"}


def test_patch_encoder_ignores_brightness_and_contrast() -> None:
    encoder = PatchEncoder(image_size=32, patch_size=8, dim=16, depth=1)
    images = torch.rand(3, 1, 32, 32)
    torch.testing.assert_close(encoder(2.5 * images + 0.7), encoder(images), atol=1e-4, rtol=1e-4)
    raw = PatchEncoder(image_size=32, patch_size=8, dim=16, depth=1, standardize=False)
    assert not torch.allclose(raw(2.5 * images + 0.7), raw(images), atol=1e-3)


def test_forward_shapes_and_causality() -> None:
    m = model()
    images, tokens = torch.rand(3, 1, 32, 32), torch.randint(3, 11, (3, 7))
    logits = m(images, tokens)
    assert logits.shape == (3, 7, 11)
    changed = tokens.clone()
    changed[:, 4:] = 3
    torch.testing.assert_close(m(images, changed)[:, :4], logits[:, :4])  # the future does not leak back
    assert not torch.allclose(m(images, changed)[:, 4:], logits[:, 4:])
    assert not torch.allclose(m(images.flip(-1), tokens), logits)  # the image matters


def test_cached_decoding_equals_full_pass() -> None:
    m = model()
    images, tokens = torch.rand(2, 1, 32, 32), torch.randint(3, 11, (2, 9))
    memory = m.encode(images)
    full, full_attention = m.decode(tokens, memory, return_attention=True)
    cache = m.new_cache()
    for t in range(tokens.shape[1]):
        step, step_attention = m.decode(tokens[:, t : t + 1], memory, cache, return_attention=True)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
        for layer in range(len(full_attention)):
            torch.testing.assert_close(step_attention[layer][:, :, 0], full_attention[layer][:, :, t])
    assert cache.length == tokens.shape[1]
    assert full_attention[0].shape == (2, 2, 9, 16)
    torch.testing.assert_close(full_attention[0].sum(-1), torch.ones(2, 2, 9))


def test_pooled_memory_is_the_mean_patch() -> None:
    pooled, patches = model(memory="pooled"), model()
    pooled.load_state_dict(patches.state_dict())
    images = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(pooled.encode(images), patches.encode(images).mean(1, keepdim=True))
    # permuting the patches cannot change what a pooled decoder sees
    memory = patches.encode(images)
    tokens = torch.randint(3, 11, (2, 5))
    perm = torch.randperm(memory.shape[1])
    a, _ = pooled.decode(tokens, memory.mean(1, keepdim=True))
    b, _ = pooled.decode(tokens, memory[:, perm].mean(1, keepdim=True))
    torch.testing.assert_close(a, b)


def test_objective_is_cross_entropy_without_pad() -> None:
    m = model()
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 4, 2]])
    batch = {"image": torch.rand(2, 1, 32, 32), "tokens": tokens}
    loss, logits = CaptionObjective().loss(m, batch)
    log_probs = logits.log_softmax(-1)
    targets = tokens[:, 1:]
    picked = [-log_probs[b, t, targets[b, t]] for b in range(2) for t in range(5) if targets[b, t] != 0]
    torch.testing.assert_close(loss, torch.stack(picked).mean())
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0))
    # a longer all-PAD tail (as in a batch padded to the data set's longest report) changes nothing
    padded = {"image": batch["image"], "tokens": torch.cat([tokens, torch.zeros(2, 5, dtype=torch.long)], dim=1)}
    torch.testing.assert_close(CaptionObjective().loss(m, padded)[0], loss)


def test_training_with_the_shared_trainer_lowers_the_loss() -> None:
    studies = generate_studies(48, seed=1, size=32)
    vocab = Vocabulary.build([s.report for s in studies])
    data = RadiographDataset(studies, vocab, max_report_length(studies))
    m = Captioner(CaptionerConfig(vocab_size=len(vocab), image_size=32, dim=32, num_heads=2, max_len=40))
    result = fit(m, data, data, TrainConfig(epochs=6, batch_size=16, lr=3e-3), objective=CaptionObjective())
    assert result.history[-1]["train_loss"] < 0.85 * result.history[0]["train_loss"]
    assert result.history[-1]["val_token_accuracy"] > result.history[0]["val_token_accuracy"]


def test_checkpoint_round_trip(tmp_path) -> None:
    m = model()
    vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", *"abcdefg"])
    save_captioner(tmp_path / "run", m, vocab)
    assert set(load_file(str(tmp_path / "run" / "model.safetensors"))) == set(m.state_dict())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["dim"] == 32
    loaded, loaded_vocab = load_captioner(tmp_path / "run")
    images, tokens = torch.rand(2, 1, 32, 32), torch.randint(3, 11, (2, 6))
    torch.testing.assert_close(loaded(images, tokens), m(images, tokens))
    assert loaded_vocab.tokens == vocab.tokens and loaded.config == m.config
    with pytest.raises(FileNotFoundError, match="caption-train"):
        load_captioner(tmp_path / "nowhere")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["format"] == "crossfuse-captioner/2" and record["config"]["encoder"] == "vit"


def test_checkpoint_formats_and_non_finite_weights(tmp_path) -> None:
    m = model(encoder="local")
    vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", *"abcdefg"])
    save_captioner(tmp_path / "local", m, vocab)
    assert load_captioner(tmp_path / "local")[0].config.encoder == "local"
    # format 1 (before the encoder field) loads as a ViT
    vit = model()
    save_captioner(tmp_path / "old", vit, vocab)
    record = json.loads((tmp_path / "old" / "config.json").read_text())
    del record["config"]["encoder"], record["config"]["registers"]
    (tmp_path / "old" / "config.json").write_text(json.dumps({**record, "format": "crossfuse-captioner/1"}))
    assert load_captioner(tmp_path / "old")[0].config.encoder == "vit"
    (tmp_path / "old" / "config.json").write_text(json.dumps({**record, "format": "something/9"}))
    with pytest.raises(ValueError, match="format"):
        load_captioner(tmp_path / "old")
    with torch.no_grad():
        next(m.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        save_captioner(tmp_path / "nan", m, vocab)
    assert not (tmp_path / "nan").exists()


def test_bad_inputs_name_the_argument() -> None:
    m = model()
    with pytest.raises(ValueError, match=r"images: expected .*32, 32"):
        m(torch.rand(2, 1, 64, 64), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens: expected ids in"):
        m(torch.rand(2, 1, 32, 32), torch.full((2, 3), 11))
    with pytest.raises(ValueError, match="max_len=12"):
        m(torch.rand(2, 1, 32, 32), torch.ones(2, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="memory"):
        CaptionerConfig(vocab_size=10, memory="cls")


def test_decode_returns_only_the_selected_layers() -> None:
    m = model()
    images, tokens = torch.rand(2, 1, 32, 32), torch.randint(3, 11, (2, 6))
    memory = m.encode(images)
    full = m.decode(tokens, memory, return_attention=True)  # True = every layer, as before
    assert len(full.attention) == m.config.decoder_layers
    last = m.decode(tokens, memory, return_attention="last")
    assert len(last.attention) == 1
    torch.testing.assert_close(last.attention[0], full.attention[-1])
    torch.testing.assert_close(last.logits, full.logits)
    assert m.decode(tokens, memory).attention is None
