"""A hand-built cross-attention example: a word looks for its colour in a toy image.

A 6x6 grid of image patches, each a one-hot colour feature (background, red, green, blue);
the query is the embedding of the word "red". With identity projections the score of a patch
is the dot product of the word with the patch's colour, so softmax puts the weight on red patches.

Shapes: image: (G, G) int colour ids  ->  weights: (G, G) float, summing to 1.
"""

from __future__ import annotations

import torch

from crossfuse.attention import CrossAttention

COLOURS = ("background", "red", "green", "blue")


def toy_image(grid: int = 6, seed: int = 0) -> torch.Tensor:
    """A (grid, grid) map of colour ids with a red, a green and a blue 2x2 object."""
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(grid, grid, dtype=torch.long)
    corners = torch.randperm(grid // 2 * (grid // 2), generator=g)[:3]
    for colour, corner in enumerate(corners.tolist(), start=1):
        r, c = divmod(corner, grid // 2)
        image[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = colour
    return image


@torch.no_grad()
def word_attention(image: torch.Tensor, word: str = "red", sharpness: float = 4.0) -> torch.Tensor:
    """Cross-attention weights of one word over the patches of ``image`` (one head)."""
    if word not in COLOURS[1:]:
        raise ValueError(f"word: expected one of {list(COLOURS[1:])}, got {word!r}")
    dim = len(COLOURS)
    attn = CrossAttention(query_dim=dim, context_dim=dim, num_heads=1, bias=False)
    # identity projections, scaled so that sqrt(d) cancels and ``sharpness`` remains
    eye = torch.eye(dim)
    attn.to_q.weight.copy_(eye * sharpness * dim**0.5)
    attn.to_k.weight.copy_(eye)
    attn.to_v.weight.copy_(eye)
    attn.to_out.weight.copy_(eye)
    patches = torch.nn.functional.one_hot(image.flatten(), dim).float()[None]  # (1, G*G, 4)
    query = torch.nn.functional.one_hot(torch.tensor([COLOURS.index(word)]), dim).float()[None]  # (1, 1, 4)
    _, weights = attn(query, patches, return_attention=True)
    return weights[0, 0, 0].view(image.shape)
