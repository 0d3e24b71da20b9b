"""Does the image's gradient survive a deep decoder? Cross-attention in every layer vs a pooled prefix.

Two captioners share the encoder (same class, same initial weights per seed) and the decoder width;
they differ in where the image enters the decoder:

- ``cross`` (`crossfuse.models.captioner.Captioner`): every decoder layer cross-attends to the patch
  features, so the loss reaches the encoder from every layer, through at most one layer's residual
  branch;
- ``prefix`` (`PrefixCaptioner`): the mean of the patch features is one prefix token at the decoder's
  input, before the words, and causal self-attention is the only way to it (the image given once, at
  the bottom, as in prefix captioners; Mokady et al., 2021, "ClipCap").

`encoder_last_gradient` measures the L2 norm of the loss gradient with respect to the encoder's last
layer's parameters on a fixed probe batch; `depth_curve` does so for several decoder depths, at
initialisation and after a fixed number of training steps (`crossfuse.train.fit`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossfuse.blocks import SelfAttentionBlock
from crossfuse.data.radiographs import RadiographDataset
from crossfuse.models.captioner import Captioner, CaptionerConfig, CaptionObjective, image_encoder
from crossfuse.train import TrainConfig, fit

MODELS = ("cross", "prefix")


class PrefixCaptioner(nn.Module):
    """Patch encoder -> mean-pooled image token as a prefix -> causal self-attention decoder -> vocabulary.

    The encoder (``config.encoder``) is built first and exactly as in `Captioner`, so under the same
    seed both models start from the same encoder weights.

    Shapes: forward(images: (B, C, H, W), tokens: (B, T) long) -> logits (B, T, V); the prefix
    position's output is dropped, so logits[:, t] predicts the token after tokens[:, t].
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.encoder = image_encoder(c)
        self.token_embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos_embed = nn.Embedding(c.max_len + 1, c.dim)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
        self.image_proj = nn.Linear(c.dim, c.dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.num_heads, c.mlp_ratio, c.dropout) for _ in range(c.decoder_layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Shapes: images (B, C, H, W)  tokens (B, T) long  ->  logits (B, T, V)."""
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"tokens: expected length <= max_len={self.config.max_len}, got {tokens.shape[1]}")
        prefix = self.image_proj(self.encoder(images).mean(dim=1, keepdim=True))  # (B, 1, D)
        x = torch.cat([prefix, self.token_embed(tokens)], dim=1)
        x = x + self.pos_embed(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            x = block(x, causal=True).x
        return self.head(self.norm(x[:, 1:]))


def build(name: str, config: CaptionerConfig, seed: int) -> nn.Module:
    """``"cross"`` or ``"prefix"`` captioner; the same ``seed`` gives both the same encoder weights."""
    if name not in MODELS:
        raise ValueError(f"name: expected one of {MODELS}, got {name!r}")
    torch.manual_seed(seed)
    return Captioner(config) if name == "cross" else PrefixCaptioner(config)


def encoder_last_gradient(model: nn.Module, batch: dict[str, Tensor], pad_id: int) -> float:
    """L2 norm of d loss / d (parameters of the encoder's last layer) on ``batch`` (teacher forcing)."""
    params = list(model.encoder.layers().values())[-1]
    tokens = batch["tokens"]
    tokens = tokens[:, : max(2, int((tokens != pad_id).sum(dim=1).max()))]
    logits = model(batch["image"], tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=pad_id)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.cat([g.flatten() for g in grads if g is not None]).norm())


@dataclass(frozen=True)
class DepthPoint:
    """Encoder last-layer gradient norm of one model at one depth and seed, at init and after training."""

    model: str
    depth: int
    seed: int
    at_init: float
    trained: float
    final_loss: float


def depth_curve(
    config: CaptionerConfig,
    data: RadiographDataset,
    probe: dict[str, Tensor],
    depths: tuple[int, ...],
    seeds: list[int],
    steps: int,
    batch_size: int,
    lr: float,
    progress=None,
) -> list[DepthPoint]:
    """For each depth, seed and model: the gradient norm at initialisation and after ``steps`` steps.

    ``data`` must hold at least ``steps * batch_size`` studies; training sees exactly the first ones.
    """
    if len(data) < steps * batch_size:
        raise ValueError(f"data: expected >= steps * batch_size = {steps * batch_size} studies, got {len(data)}")
    subset = torch.utils.data.Subset(data, range(steps * batch_size))
    pad_id = config.pad_id
    points = []
    for depth in depths:
        for seed in seeds:
            for name in MODELS:
                if progress is not None:
                    progress(f"depth {depth}: {name}, seed {seed}")
                model = build(name, replace(config, decoder_layers=depth), seed)
                model.train()
                at_init = encoder_last_gradient(model, probe, pad_id)
                train = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, seed=seed)
                result = fit(model, subset, None, train, objective=CaptionObjective(pad_id=pad_id))
                model.train()
                trained = encoder_last_gradient(model, probe, pad_id)
                loss = float(result.final.get("train_loss", float("nan")))
                points.append(DepthPoint(name, depth, seed, at_init, trained, loss))
    return points
