"""ViT-style patch encoder: images become a sequence of patch features (Dosovitskiy et al., 2021).

Each image is first standardised (zero mean, unit variance per image; ``standardize=False`` skips
it), so overall brightness and contrast need not be learned. A strided convolution cuts it into
``P x P`` patches and embeds each one, a learned positional embedding marks where each patch
sits, and pre-norm `SelfAttentionBlock`s let the patches look at each other. Patches are numbered
row by row, so feature ``n`` belongs to grid cell ``(n // gw, n % gw)``.

``registers`` > 0 appends that many learned register tokens to the sequence the self-attention
blocks see and drops them from the output, so a decoder never attends to them: they give global
information a place to live other than background patches (Darcet et al., 2024, "Vision
Transformers Need Registers").

Shapes: images: (B, C, H, W)  ->  patches: (B, N, D) with N = (H / P) * (W / P).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossfuse.blocks import SelfAttentionBlock
from crossfuse.validation import check_tensor


class PatchGrid(nn.Module):
    """What the image encoders share: square images cut into a grid of square patches, input checks, and
    per-image standardisation. Subclasses (`PatchEncoder`, `LocalPatchEncoder`) add the layers and ``forward``.

    Shapes: images: (B, C, H, W), H = W = ``image_size``  ->  a (gh, gw) grid of N = gh * gw patch tokens.
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, standardize: bool) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size: expected a divisor of image_size={image_size}, got {patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.standardize = standardize
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]

    def check_images(self, images: Tensor) -> None:
        """Validate a user-facing batch of images (raises ValueError naming ``images``)."""
        check_tensor("images", images, (None, self.in_channels, self.image_size, self.image_size), dtype="float")

    def standardized(self, images: Tensor) -> Tensor:
        """Each image at zero mean and unit variance when ``standardize`` (else unchanged). Shapes: (B, C, H, W)."""
        if not self.standardize:
            return images
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return (images - mean) / (images.std(dim=(1, 2, 3), keepdim=True) + 1e-5)

    def forward(self, images: Tensor) -> Tensor:
        """Shapes: images: (B, C, H, W)  ->  patches: (B, N, D); implemented by the subclasses."""
        raise NotImplementedError


class PatchEncoder(PatchGrid):
    """Patch embedding + positional embedding + self-attention blocks + final LayerNorm.

    Args:
        image_size: side of the square input image in pixels.
        patch_size: side of a square patch; must divide ``image_size``.
        in_channels: image channels C (1 for grayscale films).
        dim: feature size D of each patch.
        depth: number of `SelfAttentionBlock`s.
        num_heads, mlp_ratio, dropout: as in `SelfAttentionBlock`.
        standardize: standardise each image (zero mean, unit variance) before the patch embedding.
        registers: learned register tokens seen by the blocks and dropped from the output.

    Shapes: images: (B, C, H, W)  ->  (B, N, D).
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        in_channels: int = 1,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        standardize: bool = True,
        registers: int = 0,
    ) -> None:
        super().__init__(image_size, patch_size, in_channels, standardize)
        if registers < 0:
            raise ValueError(f"registers: expected >= 0, got {registers}")
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # Only created when asked for, so a register-free encoder keeps its state dict.
        self.registers = nn.Parameter(torch.randn(1, registers, dim) * 0.02) if registers else None
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> Tensor:
        """Shapes: images: (B, C, H, W)  ->  patches: (B, N, D)."""
        x = self.patch_embed(self.standardized(images)).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        if self.registers is not None:
            x = torch.cat([x, self.registers.expand(x.shape[0], -1, -1)], dim=1)  # (B, N + R, D)
        for block in self.blocks:
            x = block(x).x
        return self.norm(x[:, : self.num_patches])

    def layers(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per encoder layer, input to output: ``embed`` (patch + position), ``block 1``, ..."""
        groups = {"embed": [*self.patch_embed.parameters(), self.pos_embed]}
        if self.registers is not None:
            groups["embed"].append(self.registers)
        for i, block in enumerate(self.blocks, start=1):
            groups[f"block {i}"] = list(block.parameters())
        return groups
