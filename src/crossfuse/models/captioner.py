"""Image-to-report captioner: a patch encoder and a decoder of cross-attention blocks.

The encoder (``encoder="vit"``: `PatchEncoder`, global self-attention, optionally with register
tokens; ``encoder="local"``: `LocalPatchEncoder`, receptive field of a few patches) turns an image
into patch features (the *memory*); each decoder layer is a
`CrossAttentionBlock`: causal self-attention over the tokens so far, cross-attention into the
memory, MLP (the encoder-decoder transformer of Vaswani et al., 2017; image captioning with
attention over regions: Xu et al., 2015). ``memory="pooled"`` replaces the patch features by
their mean, a memory of length 1: the decoder then sees one vector per image (the bottleneck
of the gradient-highway experiment).

Training is teacher forcing (`CaptionObjective`): the decoder reads ``[BOS, w1, ..., wn]`` and
predicts ``[w1, ..., wn, EOS]``. Generation lives in `crossfuse.models.decoding`.
Checkpoints: `crossfuse.checkpoint.save_captioner` / `load_captioner` (safetensors + JSON, no pickle).

Shapes:
    images: (B, C, H, W)  tokens: (B, T) long  ->  logits: (B, T, V)
    encode(images) -> memory: (B, M, D), M = number of patches (or 1 when pooled)
    decode(tokens, memory, cache) -> `DecoderOutput`: logits (B, T, V) and, on request, the
    cross-attention weights of the selected decoder layers: [(B, H, T, M)] * L_selected
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from crossfuse.attention import KVCache
from crossfuse.blocks import AttentionLayers, CrossAttentionBlock, select_layers
from crossfuse.models.local_encoder import LocalPatchEncoder
from crossfuse.models.patch_encoder import PatchEncoder
from crossfuse.validation import check_tensor

ENCODERS = ("vit", "local")


def check_registers(registers: int, encoder: str) -> None:
    """ValueError naming ``registers`` unless it is >= 0 and, when > 0, ``encoder`` is "vit" (the local
    encoder has no self-attention for register tokens to join)."""
    if registers < 0 or (registers and encoder != "vit"):
        raise ValueError(f"registers: expected >= 0, and only with the vit encoder; got {registers} with {encoder!r}")


@dataclass(frozen=True)
class CaptionerConfig:
    """Sizes of the captioner; defaults fit 64x64 films and ~30-token reports on a CPU."""

    vocab_size: int
    image_size: int = 64
    patch_size: int = 8
    in_channels: int = 1
    dim: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    max_len: int = 48
    memory: str = "patches"  # "patches" (cross-attention into every patch) | "pooled" (one mean vector)
    encoder: str = "vit"  # "vit" (global self-attention, `PatchEncoder`) | "local" (`LocalPatchEncoder`)
    registers: int = 0  # ViT register tokens, dropped from the memory (encoder="vit" only)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.memory not in ("patches", "pooled"):
            raise ValueError(f"memory: expected 'patches' or 'pooled', got {self.memory!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder: expected one of {ENCODERS}, got {self.encoder!r}")
        check_registers(self.registers, self.encoder)
        if self.vocab_size <= max(self.pad_id, self.bos_id, self.eos_id):
            raise ValueError(f"vocab_size: expected > special token ids, got {self.vocab_size}")


@dataclass
class DecoderCache:
    """Per decoder layer: a growing self-attention cache and a static cache of the projected memory.

    Shapes: every KVCache holds (B, H, n, d_head); ``length`` = tokens decoded so far.
    """

    layers: list[tuple[KVCache, KVCache]]

    @property
    def length(self) -> int:
        return self.layers[0][0].length

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search). Shapes: index: (B',) long."""
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            cross_cache.reorder(index)


class DecoderOutput(NamedTuple):
    """Logits for every decoded position and the selected layers' cross-attention (layer order).

    Shapes: logits: (B, T, V)  attention: [(B, H, T, M)] per selected layer, or None.
    """

    logits: Tensor
    attention: list[Tensor] | None = None


def image_encoder(c: CaptionerConfig) -> PatchEncoder | LocalPatchEncoder:
    """The image encoder of ``c.encoder`` ("local" or "vit"), built from the config's fields.

    Shapes: the encoder maps images (B, C, H, W) -> patch features (B, N, D).
    """
    if c.encoder == "local":
        return LocalPatchEncoder(
            c.image_size, c.patch_size, c.in_channels, c.dim, c.encoder_layers, c.mlp_ratio, c.dropout
        )
    return PatchEncoder(
        c.image_size,
        c.patch_size,
        c.in_channels,
        c.dim,
        c.encoder_layers,
        c.num_heads,
        c.mlp_ratio,
        c.dropout,
        registers=c.registers,
    )


class Captioner(nn.Module):
    """Patch encoder + cross-attention decoder + linear head over the vocabulary.

    Shapes: forward(images: (B, C, H, W), tokens: (B, T) long) -> logits (B, T, V).
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.encoder = image_encoder(c)
        self.token_embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos_embed = nn.Embedding(c.max_len, c.dim)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(c.dim, c.dim, c.num_heads, c.mlp_ratio, c.dropout) for _ in range(c.decoder_layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (gh, gw) the cross-attention weights live on."""
        return self.encoder.grid

    def encode(self, images: Tensor) -> Tensor:
        """Images -> memory. Shapes: (B, C, H, W) -> (B, N, D), or (B, 1, D) when pooled."""
        patches = self.encoder(images)
        return patches.mean(dim=1, keepdim=True) if self.config.memory == "pooled" else patches

    def new_cache(self) -> DecoderCache:
        return DecoderCache([(KVCache(), KVCache(static=True)) for _ in self.blocks])

    def decode(
        self,
        tokens: Tensor,
        memory: Tensor,
        cache: DecoderCache | None = None,
        return_attention: AttentionLayers = False,
    ) -> DecoderOutput:
        """Logits for every position of ``tokens``, which continue the ``cache`` (if any).

        With a cache, ``tokens`` are the newest positions only (usually one); the memory is
        projected into keys/values on the first call and reused afterwards.

        ``return_attention``: False, True or ``"all"`` (every layer), ``"last"`` or 0-based layer
        indices; only those layers compute weights.

        Shapes: tokens: (B, T)  memory: (B, M, D)  ->  DecoderOutput(logits: (B, T, V),
        attention: [(B, H, T, M)] per selected layer, or None).
        """
        start = 0 if cache is None else cache.length
        if start + tokens.shape[1] > self.config.max_len:
            raise ValueError(f"tokens: positions up to {start + tokens.shape[1]} exceed max_len={self.config.max_len}")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.token_embed(tokens) + self.pos_embed(positions)
        layers = select_layers(return_attention, len(self.blocks), true_means="all")
        attention = [] if layers else None
        # One new token is the last position: it sees every cached key, so no causal mask is needed.
        causal = tokens.shape[1] > 1
        for i, block in enumerate(self.blocks):
            self_cache, cross_cache = (None, None) if cache is None else cache.layers[i]
            x, weights = block(
                x,
                memory,
                causal=causal,
                self_cache=self_cache,
                cross_cache=cross_cache,
                return_attention=i in layers,
            )
            if weights is not None:
                attention.append(weights)
        return DecoderOutput(self.head(self.norm(x)), attention)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits. Shapes: images: (B, C, H, W)  tokens: (B, T) long  ->  (B, T, V)."""
        self.check_inputs(images, tokens)
        return self.decode(tokens, self.encode(images)).logits

    def check_inputs(self, images: Tensor, tokens: Tensor | None = None) -> None:
        """Validate user-facing inputs once, at the boundary."""
        self.encoder.check_images(images)
        if tokens is None:
            return
        check_tensor("tokens", tokens, (images.shape[0], None), dtype=torch.long)
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"tokens: expected length <= max_len={self.config.max_len}, got {tokens.shape[1]}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(
                f"tokens: expected ids in [0, {self.config.vocab_size}), got [{tokens.min()}, {tokens.max()}]"
            )


@dataclass
class CaptionObjective:
    """Teacher-forced cross-entropy on ``{"image": (B, C, H, W), "tokens": (B, T)}`` batches.

    The decoder reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``; PAD targets are ignored.
    ``evaluate`` reports the loss and the token accuracy (``score``) on a loader.
    """

    pad_id: int = 0

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens = batch["tokens"]
        # Padding is at the end and attention is causal: dropping the all-PAD tail changes nothing but the cost.
        longest = int((tokens != self.pad_id).sum(dim=1).max())
        tokens = tokens[:, : max(longest, 2)]
        logits = model(batch["image"], tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=self.pad_id)
        return loss, logits

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, correct, count = 0.0, 0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, logits = self.loss(model, batch)
            target = batch["tokens"][:, 1 : logits.shape[1] + 1]
            valid = target != self.pad_id
            n = int(valid.sum())
            total += loss.item() * n
            correct += int(((logits.argmax(-1) == target) & valid).sum())
            count += n
        model.train(was_training)
        accuracy = correct / max(count, 1)
        return {"loss": total / max(count, 1), "token_accuracy": accuracy, "score": accuracy}
