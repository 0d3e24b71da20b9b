"""Local patch encoder: patch features whose receptive field stays within a few patches.

A ViT's global self-attention lets every patch token carry information from the whole image, so a
decoder attending over them need not look where the finding is, and low-information patches
become attention sinks (Darcet et al., 2024, "Vision Transformers Need Registers"). This encoder
keeps tokens local: a 3x3 convolution stem on pixels, a strided ``P x P`` patch embedding, then
``depth`` residual blocks of a 3x3 convolution over the patch grid (each widens the receptive
field by one patch on every side) and a pointwise MLP. With ``depth=2`` a token sees at most its
5x5 patch neighbourhood (plus the 3x3 pixel stem), never the whole film. A learned positional
embedding marks where each patch sits, as in `PatchEncoder`; images are standardised per image.
Patches are numbered row by row: feature ``n`` belongs to grid cell ``(n // gw, n % gw)``.

Shapes: images: (B, C, H, W)  ->  patches: (B, N, D) with N = (H / P) * (W / P).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossfuse.models.patch_encoder import PatchGrid


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each grid position (GroupNorm would mix positions: not local).

    Shapes: x: (B, D, gh, gw)  ->  (B, D, gh, gw).
    """

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x: (B, D, gh, gw)  ->  (B, D, gh, gw)."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocalGridBlock(nn.Module):
    """Residual 3x3 convolution over the patch grid, then a residual pointwise MLP (pre-norm).

    Shapes: x: (B, D, gh, gw)  ->  (B, D, gh, gw).
    """

    def __init__(self, dim: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = ChannelNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.norm2 = ChannelNorm(dim)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Dropout(dropout), nn.Conv2d(hidden, dim, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x: (B, D, gh, gw)  ->  (B, D, gh, gw)."""
        x = x + self.conv(F.gelu(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class LocalPatchEncoder(PatchGrid):
    """3x3 pixel stem + patch embedding + positional embedding + local grid blocks + LayerNorm.

    Args:
        image_size: side of the square input image in pixels.
        patch_size: side of a square patch; must divide ``image_size``.
        in_channels: image channels C (1 for grayscale films).
        dim: feature size D of each patch.
        depth: number of `LocalGridBlock`s (receptive field ``2 * depth + 1`` patches per side).
        mlp_ratio, dropout: of each block's pointwise MLP.
        stem_channels: channels of the 3x3 pixel stem.
        standardize: standardise each image (zero mean, unit variance) first.

    Shapes: images: (B, C, H, W)  ->  (B, N, D).
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        in_channels: int = 1,
        dim: int = 64,
        depth: int = 2,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        stem_channels: int = 16,
        standardize: bool = True,
    ) -> None:
        super().__init__(image_size, patch_size, in_channels, standardize)
        if depth < 0:
            raise ValueError(f"depth: expected >= 0, got {depth}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, kernel_size=3, padding=1), nn.GELU())
        self.patch_embed = nn.Conv2d(stem_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *self.grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(LocalGridBlock(dim, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    @property
    def receptive_field(self) -> int:
        """Side, in patches, of the grid neighbourhood one output token can see."""
        return 2 * len(self.blocks) + 1

    def forward(self, images: Tensor) -> Tensor:
        """Shapes: images: (B, C, H, W)  ->  patches: (B, N, D)."""
        x = self.patch_embed(self.stem(self.standardized(images))) + self.pos_embed  # (B, D, gh, gw)
        for block in self.blocks:
            x = block(x)
        return self.norm(x.flatten(2).transpose(1, 2))

    def layers(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per encoder layer, input to output: ``embed`` (stem, patch, position), ``block 1``, ..."""
        groups = {"embed": [*self.stem.parameters(), *self.patch_embed.parameters(), self.pos_embed]}
        for i, block in enumerate(self.blocks, start=1):
            groups[f"block {i}"] = list(block.parameters())
        return groups
