"""Local patch encoder and ViT registers: shapes, receptive field, config selection."""

import pytest
import torch

from crossfuse.models.captioner import Captioner, CaptionerConfig
from crossfuse.models.local_encoder import LocalPatchEncoder
from crossfuse.models.patch_encoder import PatchEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def pixel_influence(encoder: torch.nn.Module, token: int, size: int = 64) -> torch.Tensor:
    """|d token feature / d pixel|: which pixels one output token depends on. -> (size, size)"""
    image = torch.randn(1, 1, size, size, requires_grad=True)
    out = encoder(image)[0, token]
    # a fixed projection: the plain sum of a LayerNorm output is constant, its gradient zero
    (out * torch.linspace(-1.0, 2.0, out.shape[0])).sum().backward()
    return image.grad.abs()[0, 0]


def patch_influence(encoder: torch.nn.Module, token: int, size: int = 64, patch: int = 8) -> torch.Tensor:
    """`pixel_influence` summed per patch. -> (gh, gw)"""
    grid = size // patch
    return pixel_influence(encoder, token, size).reshape(grid, patch, grid, patch).sum(dim=(1, 3))


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_local_encoder_receptive_field_is_a_few_patches(depth: int) -> None:
    torch.manual_seed(0)
    # standardize=False: per-image standardisation couples every pixel through the mean and std.
    encoder = LocalPatchEncoder(image_size=64, patch_size=8, dim=16, depth=depth, standardize=False)
    assert encoder(torch.rand(2, 1, 64, 64)).shape == (2, 64, 16) and encoder.grid == (8, 8)
    row, col = 4, 3
    seen = pixel_influence(encoder, row * 8 + col) > 0
    # each 3x3 grid block reaches one patch further; the 3x3 pixel stem adds one pixel on each side
    top, bottom = (row - depth) * 8 - 1, (row + depth + 1) * 8 + 1
    left, right = (col - depth) * 8 - 1, (col + depth + 1) * 8 + 1
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[max(top, 0) : bottom, max(left, 0) : right] = True
    assert seen[~inside].sum() == 0  # nothing outside the receptive field
    assert seen[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8].all()  # its own patch, every pixel
    if depth:
        assert seen[top + 1, left + 1] and seen[bottom - 2, right - 2]  # the corners of the neighbourhood
    assert encoder.receptive_field == 2 * depth + 1


def test_vit_token_sees_the_whole_image_unlike_the_local_one() -> None:
    torch.manual_seed(0)
    vit = PatchEncoder(image_size=64, patch_size=8, dim=16, depth=1, standardize=False)
    assert (patch_influence(vit, 0) > 1e-8).all()
    local = LocalPatchEncoder(image_size=64, patch_size=8, dim=16, depth=1, standardize=False)
    assert patch_influence(local, 0)[4:, 4:].sum() == 0


def test_registers_are_seen_by_blocks_but_not_returned() -> None:
    torch.manual_seed(0)
    encoder = PatchEncoder(image_size=32, patch_size=8, dim=16, depth=1, registers=4)
    images = torch.rand(2, 1, 32, 32)
    out = encoder(images)
    assert out.shape == (2, 16, 16)
    with torch.no_grad():
        encoder.registers.add_(1.0)
    assert not torch.allclose(encoder(images), out)  # patches attend to the registers
    assert "registers" not in PatchEncoder(image_size=32, depth=1).state_dict()
    with pytest.raises(ValueError, match="registers"):
        PatchEncoder(registers=-1)


def test_captioner_config_selects_encoder() -> None:
    local = Captioner(CaptionerConfig(vocab_size=9, image_size=32, dim=16, num_heads=2, encoder="local"))
    assert isinstance(local.encoder, LocalPatchEncoder) and local.grid == (4, 4)
    assert local.encode(torch.rand(2, 1, 32, 32)).shape == (2, 16, 16)
    vit = Captioner(CaptionerConfig(vocab_size=9, image_size=32, dim=16, num_heads=2, registers=2))
    assert isinstance(vit.encoder, PatchEncoder) and vit.encode(torch.rand(2, 1, 32, 32)).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="encoder"):
        CaptionerConfig(vocab_size=9, encoder="cnn")
    with pytest.raises(ValueError, match="registers"):
        CaptionerConfig(vocab_size=9, encoder="local", registers=2)
