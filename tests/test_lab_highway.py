"""The gradient-highway experiment: routing shares (exact for a pooled decoder), the depth models, a smoke run."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossfuse.data.radiographs import RadiographDataset, Vocabulary, generate_studies, max_report_length, tokenize
from crossfuse.lab import gradient_highway
from crossfuse.lab.gradient_depth import PrefixCaptioner, build, depth_curve, encoder_last_gradient
from crossfuse.lab.gradient_routing import box_patches, finding_words, patch_memory, routing_shares
from crossfuse.lab.grounding import FINDING_WORDS
from crossfuse.lab.pointing import PrefixModel
from crossfuse.lab.result import run_experiment
from crossfuse.models.captioner import Captioner, CaptionerConfig, DecoderOutput

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus() -> tuple[list, Vocabulary, int]:
    studies = [s for s in generate_studies(60, seed=11) if s.findings][:10]
    vocab = Vocabulary.build([s.report for s in studies])
    return studies, vocab, max_report_length(studies)


def small_config(vocab: Vocabulary, max_len: int, memory: str = "patches") -> CaptionerConfig:
    return CaptionerConfig(vocab_size=len(vocab), dim=16, num_heads=2, max_len=max_len, memory=memory)


def test_box_patches_are_the_cells_the_box_overlaps() -> None:
    mask = box_patches((8, 0, 17, 8), patch_size=8, grid=(8, 8)).reshape(8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0, 1:3] = True  # x 8..16 spans columns 1 and 2; y 0..7 row 0
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="box"):
        box_patches((5, 5, 5, 9), 8, (8, 8))


def test_finding_words_are_the_asserted_words_with_their_boxes(corpus) -> None:
    studies, _, _ = corpus
    for s in studies:
        words = tokenize(s.report)
        for position, word, kind, box in finding_words(s):
            assert words[position] == word and FINDING_WORDS[word] == kind
            assert box in [f.xyxy for f in s.findings if f.kind == kind]


def test_image_dependent_words_are_the_prefix_models_marks_in_asserting_sentences(corpus) -> None:
    studies, vocab, max_len = corpus
    prefix = PrefixModel([tokenize(s.report) for s in generate_studies(300, seed=12)])
    scored = 0
    for s in studies:
        words = tokenize(s.report)
        marks = prefix.image_dependent(words)
        chosen = finding_words(s, prefix)
        assert all(marks[position] and words[position] == word for position, word, _, _ in chosen)
        finding_boxes = {f.xyxy for f in s.findings}
        assert all(box in finding_boxes for *_, box in chosen)
        scored += len(chosen)
    assert scored > 0
    torch.manual_seed(0)
    pooled = Captioner(small_config(vocab, max_len, memory="pooled"))
    for w in routing_shares(pooled, vocab, studies, patch_size=8, prefix_model=prefix):
        assert w.share == pytest.approx(w.box_share, rel=1e-5)


def test_pooled_decoder_share_equals_box_patch_share_exactly(corpus) -> None:
    studies, vocab, max_len = corpus
    torch.manual_seed(0)
    model = Captioner(small_config(vocab, max_len, memory="pooled"))
    words = routing_shares(model, vocab, studies, patch_size=8, batch_size=4)
    assert len(words) == sum(len(finding_words(s)) for s in studies) > 0
    for w in words:
        assert w.share == pytest.approx(w.box_share, rel=1e-5)
        assert w.ratio == pytest.approx(1.0, rel=1e-5)


def test_routing_shares_match_one_backward_per_word(corpus) -> None:
    """The batched passes (k-th words of several films together) equal a separate backward per word."""
    studies, vocab, max_len = corpus
    torch.manual_seed(1)
    model = Captioner(small_config(vocab, max_len)).eval()
    batched = routing_shares(model, vocab, studies, patch_size=8, batch_size=4)
    reference = []
    for s in studies:
        tokens = torch.tensor([vocab.encode(s.report)])
        image = torch.from_numpy(s.image)[None, None]
        for position, _, _, box in finding_words(s):
            patches = model.encoder(image).detach().requires_grad_(True)
            log_p = F.log_softmax(model.decode(tokens[:, :-1], patches).logits, dim=-1)
            (grad,) = torch.autograd.grad(log_p[0, position, tokens[0, position + 1]], patches)
            energy = grad[0].pow(2).sum(-1)
            reference.append(float(energy[box_patches(box, 8, (8, 8))].sum() / energy.sum()))
    assert [w.share for w in batched] == pytest.approx(reference, rel=1e-4)


class _LooksAt(Captioner):
    """A toy decoder whose logits read only the patches in ``cells``: all gradient lands there."""

    def __init__(self, config: CaptionerConfig, cells: torch.Tensor) -> None:
        super().__init__(config)
        self.cells = cells

    def decode(self, tokens, memory, cache=None, return_attention=False) -> DecoderOutput:
        image = memory[:, self.cells].mean(dim=1, keepdim=True)  # (B, 1, D)
        return DecoderOutput(self.head(self.norm(self.token_embed(tokens) + image)))


def test_routing_on_a_toy_decoder_that_looks_inside_or_outside_the_box(corpus) -> None:
    studies, vocab, max_len = corpus
    s = next(s for s in studies if finding_words(s))
    _, _, _, box = finding_words(s)[0]
    inside = box_patches(box, 8, (8, 8))
    torch.manual_seed(2)
    looks_in = _LooksAt(small_config(vocab, max_len), inside)
    looks_out = _LooksAt(small_config(vocab, max_len), ~inside)
    first_in = routing_shares(looks_in, vocab, [s], patch_size=8)[0]
    first_out = routing_shares(looks_out, vocab, [s], patch_size=8)[0]
    assert first_in.share == pytest.approx(1.0) and first_in.ratio == pytest.approx(64 / int(inside.sum()))
    assert first_out.share == pytest.approx(0.0, abs=1e-7)


def test_patch_memory_pools_only_for_the_pooled_decoder(corpus) -> None:
    studies, vocab, max_len = corpus
    images = torch.from_numpy(np.stack([s.image for s in studies[:2]]))[:, None]
    for memory, length in (("patches", 64), ("pooled", 1)):
        torch.manual_seed(0)
        patches, mem = patch_memory(Captioner(small_config(vocab, max_len, memory)), images)
        assert patches.shape == (2, 64, 16) and patches.requires_grad and mem.shape == (2, length, 16)


@pytest.mark.parametrize("encoder", ["local", "vit"])
def test_prefix_captioner_is_causal_and_shares_the_encoder_init(corpus, encoder: str) -> None:
    studies, vocab, max_len = corpus
    config = replace(small_config(vocab, max_len), encoder=encoder)
    cross, prefix = build("cross", config, 3), build("prefix", config, 3)
    assert isinstance(prefix, PrefixCaptioner) and type(prefix.encoder) is type(cross.encoder)
    for a, b in zip(cross.encoder.parameters(), prefix.encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    images = torch.from_numpy(np.stack([s.image for s in studies[:2]]))[:, None]
    tokens = torch.tensor([vocab.encode(s.report, max_len) for s in studies[:2]])[:, :10]
    logits = prefix(images, tokens)
    assert logits.shape == (2, 10, len(vocab))
    changed = tokens.clone()
    changed[:, 6:] = 3
    torch.testing.assert_close(prefix(images, changed)[:, :6], logits[:, :6])  # no position sees a later token
    assert not torch.allclose(prefix(images.flip(-1), tokens), logits)  # the image reaches every position
    with pytest.raises(ValueError, match="name"):
        build("gated", config, 0)


def test_encoder_last_gradient_matches_autograd_and_depth_curve_runs(corpus) -> None:
    studies, vocab, max_len = corpus
    config = small_config(vocab, max_len)
    data = RadiographDataset(studies, vocab, max_len)
    probe = {"image": data.images[:4], "tokens": data.tokens[:4]}
    model = build("prefix", config, 0)
    norm = encoder_last_gradient(model, probe, vocab.pad_id)
    tokens = probe["tokens"]
    loss = F.cross_entropy(model(probe["image"], tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
    loss.backward()
    manual = torch.cat([p.grad.flatten() for p in model.encoder.blocks[-1].parameters()]).norm()
    assert norm == pytest.approx(float(manual), rel=1e-4)
    points = depth_curve(config, data, probe, (1, 2), [0], steps=2, batch_size=4, lr=1e-3)
    assert [(p.depth, p.model) for p in points] == [(1, "cross"), (1, "prefix"), (2, "cross"), (2, "prefix")]
    assert all(p.at_init > 0 and p.trained > 0 and p.at_init != p.trained for p in points)
    with pytest.raises(ValueError, match="data"):
        depth_curve(config, data, probe, (1,), [0], steps=5, batch_size=4, lr=1e-3)


def test_gradient_highway_smoke_run() -> None:
    result = run_experiment("gradient_highway", "smoke", 1)
    assert result.name == "gradient_highway" and result.verdict == "inconclusive" and result.size == "smoke"
    assert result.claim and result.criterion and result.precondition and result.precondition_measured
    assert isinstance(result.precondition_met, bool)
    assert set(result.figures) == {"routing.png", "depth.png"}
    assert all(data.startswith(PNG) for data in result.figures.values())
    raw = result.raw
    assert raw["routing_median_ratio"]["pooled decoder"] == pytest.approx(1.0, rel=1e-5)
    assert {p["depth"] for p in raw["depth"]} == set(gradient_highway.PLANS["smoke"].depths)
    json.dumps(result.to_json(), allow_nan=False)


def test_plans_declare_the_depths_of_the_claim() -> None:
    for size in ("quick", "full"):
        plan = gradient_highway.PLANS[size]
        assert plan.depths == (2, 4, 8, 16) and plan.judged and plan.depth_steps >= 40
