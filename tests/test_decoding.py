"""Greedy and beam search: cache = no cache, beam 1 = greedy, wide beam = exhaustive search."""

import itertools

import pytest
import torch

from crossfuse.models.captioner import Captioner, CaptionerConfig
from crossfuse.models.decoding import beam_search, greedy_decode

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(vocab_size: int = 12, eos_bias: float = 0.0, max_len: int = 16, seed: int = 0) -> Captioner:
    """A random captioner whose outputs depend on the image and stop at varied lengths."""
    torch.manual_seed(seed)
    config = CaptionerConfig(vocab_size=vocab_size, image_size=32, patch_size=8, dim=32, num_heads=2, max_len=max_len)
    model = Captioner(config).eval()
    with torch.no_grad():  # larger embeddings and logits than at init: less repetitive, more decisive
        model.token_embed.weight.normal_(0.0, 1.0)
        model.pos_embed.weight.normal_(0.0, 1.0)
        model.head.weight.mul_(4.0)
        for block in model.blocks:  # a stronger say for the image
            block.cross.to_v.weight.mul_(3.0)
            block.cross.to_out.weight.mul_(3.0)
        model.head.bias[config.eos_id] += eos_bias
    return model


_g = torch.Generator().manual_seed(1)
IMAGES = torch.randn(6, 1, 32, 32, generator=_g) * 3 * torch.rand(6, 1, 1, 1, generator=_g)
IMAGES += 2 * torch.randn(6, 1, 1, 1, generator=_g)


def test_greedy_stops_at_eos_with_varied_lengths() -> None:
    out = greedy_decode(tiny(), IMAGES, return_attention=True)
    lengths = [len(t) for t in out.tokens]
    assert len(set(lengths)) > 1 and min(lengths) < 16
    assert all(2 not in t and 0 not in t and 1 not in t for t in out.tokens)
    for tokens, attention in zip(out.tokens, out.attention, strict=True):
        assert attention.shape == (len(tokens), 2, 2, 16)
        torch.testing.assert_close(attention.sum(-1), torch.ones(len(tokens), 2, 2))


def test_greedy_score_is_the_sequence_log_probability() -> None:
    model = tiny()
    out = greedy_decode(model, IMAGES)
    for i in range(6):
        ended = len(out.tokens[i]) < 16
        sequence = torch.tensor([[1, *out.tokens[i], *([2] if ended else [])]])
        logits = model(IMAGES[i : i + 1], sequence[:, :-1])
        logits[..., [0, 1]] = float("-inf")  # PAD and BOS are never generated
        log_probs = logits.log_softmax(-1)
        reference = log_probs[0, torch.arange(sequence.shape[1] - 1), sequence[0, 1:]].sum()
        assert out.scores[i].item() == pytest.approx(reference.item(), abs=1e-4)


@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_cached_generation_equals_uncached(decode: str) -> None:
    model = tiny()

    def run(use_cache: bool):
        if decode == "greedy":
            return greedy_decode(model, IMAGES, use_cache=use_cache, return_attention=True)
        return beam_search(model, IMAGES, beam_size=3, use_cache=use_cache, return_attention=True)

    cached, uncached = run(True), run(False)
    assert cached.tokens == uncached.tokens
    torch.testing.assert_close(cached.scores, uncached.scores)
    for a, b in zip(cached.attention, uncached.attention, strict=True):
        torch.testing.assert_close(a, b)


def test_cached_generation_ignoring_eos_has_full_length() -> None:
    model = tiny(eos_bias=1.0)
    cached = greedy_decode(model, IMAGES, ignore_eos=True)
    uncached = greedy_decode(model, IMAGES, ignore_eos=True, use_cache=False)
    assert cached.tokens == uncached.tokens and all(len(t) == 16 for t in cached.tokens)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_one_is_greedy(seed: int) -> None:
    model = tiny(seed=seed)
    greedy = greedy_decode(model, IMAGES, return_attention=True)
    beam = beam_search(model, IMAGES, beam_size=1, return_attention=True)
    assert beam.tokens == greedy.tokens
    for a, b in zip(beam.attention, greedy.attention, strict=True):
        torch.testing.assert_close(a, b)


def _exhaustive_best(model: Captioner, image: torch.Tensor, max_len: int, alpha: float) -> tuple[list[int], float]:
    """Score every sequence over the non-special tokens (ending in EOS, or max_len long) by teacher forcing."""
    words = list(range(3, model.config.vocab_size))
    best: tuple[list[int], float] = ([], float("-inf"))
    for length in range(max_len + 1):
        for body in itertools.product(words, repeat=length):
            ends = length < max_len
            sequence = [1, *body, 2] if ends else [1, *body]
            logits = model(image, torch.tensor([sequence[:-1]]))
            logits[..., [0, 1]] = float("-inf")
            log_probs = logits.log_softmax(-1)[0]
            total = sum(log_probs[t, sequence[t + 1]].item() for t in range(len(sequence) - 1))
            score = total / ((len(sequence) - 1) ** alpha)
            if score > best[1]:
                best = (list(body), score)
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_equals_exhaustive_search(alpha: float) -> None:
    model = tiny(vocab_size=5, max_len=3)
    for i in range(3):
        image = IMAGES[i : i + 1]
        out = beam_search(model, image, beam_size=16, length_penalty=alpha)
        tokens, score = _exhaustive_best(model, image, max_len=3, alpha=alpha)
        assert out.tokens[0] == tokens
        assert out.scores[0].item() == pytest.approx(score, abs=1e-4)


def test_bad_arguments() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, IMAGES, beam_size=0)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, IMAGES, max_len=17)
    with pytest.raises(ValueError, match="images"):
        greedy_decode(model, torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_generation_attention_of_the_selected_layers_only(search: str) -> None:
    model = tiny(seed=3)

    def run(which):
        if search == "greedy":
            return greedy_decode(model, IMAGES[:3], return_attention=which)
        return beam_search(model, IMAGES[:3], beam_size=2, return_attention=which)

    every, last = run(True), run("last")
    assert every.tokens == last.tokens
    for a, b in zip(every.attention, last.attention, strict=True):
        assert a.shape[1] == model.config.decoder_layers and b.shape[1] == 1
        torch.testing.assert_close(b[:, 0], a[:, -1])
