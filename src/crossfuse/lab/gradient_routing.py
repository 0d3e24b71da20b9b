"""Where does the gradient of a finding word land on the image? The routing share of a captioner.

For a finding word w of a reference report (teacher forcing, the word's sentence asserts a finding
present in the film), let g = d log p(w | preceding words, image) / d memory, where the memory is
the encoder's patch features (B, N, D) *before* any pooling. The routing share is

    share(w) = sum over the finding's box patches of ||g_n||^2  /  sum over all patches of ||g_n||^2,

the part of the gradient's energy that reaches the patches the box overlaps. A decoder that reads
the mean of the patches (``memory="pooled"``) hands every patch the same gradient g_pool / N, so its
share is exactly the box's patch share ``n_box / N`` (tested); cross-attention can route more (or
less) of the gradient to the box. `routing_ratios` divides each share by the box's patch share.

Shapes: images (B, C, H, W); memory (B, N, D); boxes in pixels (x0, y0, x1, y1), end-exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crossfuse.data.radiographs import Study, Vocabulary, tokenize
from crossfuse.lab.grounding import FINDING_WORDS, _sentence_finding, _sentences
from crossfuse.lab.pointing import PrefixModel
from crossfuse.models.captioner import Captioner


@dataclass(frozen=True)
class WordRouting:
    """One finding word: its gradient share on the box patches, the box's patch share, and their ratio."""

    study: int
    position: int
    word: str
    kind: str
    share: float
    box_share: float

    @property
    def ratio(self) -> float:
        return self.share / self.box_share


def box_patches(box: tuple[int, int, int, int], patch_size: int, grid: tuple[int, int]) -> Tensor:
    """Boolean mask over the N = gh * gw patches (row by row) that the pixel box overlaps. Shapes: -> (N,)"""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box: expected x0 < x1 and y0 < y1, got {tuple(box)}")
    cells = torch.zeros(grid, dtype=torch.bool)
    cells[y0 // patch_size : -(-y1 // patch_size), x0 // patch_size : -(-x1 // patch_size)] = True
    return cells.flatten()


def patch_memory(model: Captioner, images: Tensor) -> tuple[Tensor, Tensor]:
    """The encoder's patch features (a leaf for autograd) and the memory the decoder reads from them.

    Shapes: images (B, C, H, W) -> patches (B, N, D) requiring grad, memory (B, N, D) or (B, 1, D).
    """
    patches = model.encoder(images).detach().requires_grad_(True)
    memory = patches.mean(dim=1, keepdim=True) if model.config.memory == "pooled" else patches
    return patches, memory


def finding_words(
    study: Study, prefix_model: PrefixModel | None = None
) -> list[tuple[int, str, str, tuple[int, int, int, int]]]:
    """(position in the report's words, word, kind, box) of the words scored in one reference report.

    Without ``prefix_model``: each finding word ("opacity", "effusion", ...) of a sentence asserting a
    finding that is in the film. With one: every image-dependent token of such sentences (location
    words, unforced finding words; `crossfuse.lab.pointing`). The box is matched as in
    `crossfuse.lab.grounding.ground_report`: same kind, preferring the same location.
    """
    words = tokenize(study.report)
    dependent = prefix_model.image_dependent(words) if prefix_model is not None else None
    out = []
    for start, sentence in _sentences(words):
        asserted = _sentence_finding(sentence)
        if asserted is None:
            continue
        kind, location = asserted
        candidates = [f for f in study.findings if f.kind == kind]
        if not candidates:
            continue
        target = next((f for f in candidates if f.location == location), candidates[0])
        for offset, word in enumerate(sentence):
            scored = FINDING_WORDS.get(word) == kind if dependent is None else dependent[start + offset]
            if scored:
                out.append((start + offset, word, kind, target.xyxy))
    return out


def routing_shares(
    model: Captioner,
    vocab: Vocabulary,
    studies: list[Study],
    patch_size: int,
    batch_size: int = 64,
    prefix_model: PrefixModel | None = None,
) -> list[WordRouting]:
    """Routing share of every scored word (`finding_words`) of the studies' reference reports, in study then
    word order.

    One backward pass per (batch, k-th finding word): the k-th words of different films share a pass,
    since each film's log-probability depends only on its own patches.
    """
    model.eval()
    grid = model.grid
    n = grid[0] * grid[1]
    out: list[WordRouting] = []
    chosen = [(i, s) for i, s in enumerate(studies) if finding_words(s, prefix_model)]
    for start in range(0, len(chosen), batch_size):
        chunk = chosen[start : start + batch_size]
        words = [finding_words(s, prefix_model) for _, s in chunk]
        length = max(len(tokenize(s.report)) + 2 for _, s in chunk)
        tokens = torch.tensor([vocab.encode(s.report, length) for _, s in chunk])
        images = torch.from_numpy(np.stack([s.image for _, s in chunk]))[:, None]
        patches, memory = patch_memory(model, images)
        log_p = torch.log_softmax(model.decode(tokens[:, :-1], memory).logits, dim=-1)  # (B, T-1, V)
        rows = torch.arange(len(chunk))
        for k in range(max(len(w) for w in words)):
            have = [b for b, w in enumerate(words) if len(w) > k]
            # word at report position t is token t + 1 (after BOS), predicted by logits at t
            pos = torch.tensor([words[b][k][0] for b in have])
            target = tokens[rows[have], pos + 1]
            total = log_p[rows[have], pos, target].sum()
            (grad,) = torch.autograd.grad(total, patches, retain_graph=True)
            energy = grad.pow(2).sum(dim=-1)  # (B, N)
            for b, p in zip(have, pos.tolist(), strict=True):
                _, word, kind, box = words[b][k]
                inside = box_patches(box, patch_size, grid)
                share = float(energy[b, inside].sum() / energy[b].sum().clamp_min(1e-30))
                out.append(WordRouting(chunk[b][0], p, word, kind, share, float(inside.sum()) / n))
    return sorted(out, key=lambda w: (w.study, w.position))


def attention_entropy(model: Captioner, vocab: Vocabulary, studies: list[Study]) -> float:
    """Mean normalised entropy (entropy / log N) of the cross-attention at the reports' finding words.

    1 means uniform attention, whose value path is mean pooling; averaged over layers, heads and words.
    """
    model.eval()
    values = []
    chosen = [s for s in studies if finding_words(s)]
    with torch.no_grad():
        for start in range(0, len(chosen), 64):
            chunk = chosen[start : start + 64]
            length = max(len(tokenize(s.report)) + 2 for s in chunk)
            tokens = torch.tensor([vocab.encode(s.report, length) for s in chunk])
            images = torch.from_numpy(np.stack([s.image for s in chunk]))[:, None]
            out = model.decode(tokens[:, :-1], model.encode(images), return_attention="all")
            weights = torch.stack(out.attention, dim=1)  # (B, L, H, T, M)
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1) / np.log(weights.shape[-1])
            for b, s in enumerate(chunk):
                for position, *_ in finding_words(s):
                    values.append(float(entropy[b, :, :, position].mean()))
    return float(np.mean(values)) if values else float("nan")
