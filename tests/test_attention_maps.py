"""Per-word heatmaps: raw and mean match the attention seen during generation; gradient maps are causal."""

import pytest
import torch

from crossfuse.models.attention_maps import METHODS, word_heatmaps
from crossfuse.models.captioner import Captioner, CaptionerConfig
from crossfuse.models.decoding import greedy_decode

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["vit", "local"])
def model(request) -> Captioner:
    torch.manual_seed(0)
    config = CaptionerConfig(vocab_size=13, image_size=32, dim=16, num_heads=2, max_len=10, encoder=request.param)
    return Captioner(config).eval()


def test_raw_and_mean_match_the_generation_attention(model: Captioner) -> None:
    images = torch.rand(3, 1, 32, 32)
    out = greedy_decode(model, images, return_attention=True)
    maps = word_heatmaps(model, images, out.tokens)
    assert set(maps) == set(METHODS)
    for i, ids in enumerate(out.tokens):
        attention = out.attention[i]  # (T, L, H, M)
        torch.testing.assert_close(maps["mean"][i], attention.mean(dim=(1, 2)), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(maps["raw"][i], attention[:, -1].mean(dim=1), atol=1e-5, rtol=1e-4)
        for method in METHODS:
            heat = maps[method][i]
            assert heat.shape == (len(ids), 16) and (heat >= 0).all()
            torch.testing.assert_close(heat.sum(-1), torch.ones(len(ids)), atol=1e-5, rtol=0)


def test_gradient_map_of_a_word_ignores_later_words(model: Captioner) -> None:
    images = torch.rand(2, 1, 32, 32)
    tokens = [[5, 6, 7, 8, 9], [4, 4, 10]]
    changed = [[5, 6, 7, 11, 3], [4, 4, 12]]
    a = word_heatmaps(model, images, tokens, ["gradient"])["gradient"]
    b = word_heatmaps(model, images, changed, ["gradient"])["gradient"]
    torch.testing.assert_close(a[0][:3], b[0][:3])
    torch.testing.assert_close(a[1][:2], b[1][:2])
    assert not torch.allclose(a[0][3], b[0][3])
    # the gradient map is not the attention itself
    mean = word_heatmaps(model, images, tokens, ["mean"])["mean"]
    assert not torch.allclose(a[0], mean[0], atol=1e-4)


def test_bad_methods_and_token_lists(model: Captioner) -> None:
    images = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="method"):
        word_heatmaps(model, images, [[5]], ["rollout"])
    with pytest.raises(ValueError, match="tokens"):
        word_heatmaps(model, images, [[5], [6]])
    assert word_heatmaps(model, images, [[]], ["raw"])["raw"][0].shape == (0, 16)
