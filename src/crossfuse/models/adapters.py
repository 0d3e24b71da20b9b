"""Adapters that turn your own (or a pretrained) encoder into a fusion input encoder.

A fusion input encoder maps a modality's raw input to tokens ``(B, N, D)`` (optionally with a
``(B, N)`` mask); pass it as ``build_fusion(..., encoders={name: module})``.

- `ImageTokens`: any module returning a ``(B, C, H, W)`` feature map (a CNN, a timm/torchvision
  backbone without its pooling) -> ``H * W`` tokens of width C with learned 2-D positions
  (row + column embeddings, factorised as in Parmar et al., 2018, "Image Transformer").
- `HuggingFaceEncoder`: a Hugging Face ``transformers`` model (``AutoModel`` and friends) ->
  its ``last_hidden_state`` and the integer ``attention_mask`` as a bool mask; ``freeze()`` /
  ``unfreeze()`` its weights. Needs the optional extra ``crossfuse[hf]`` only to build the model;
  this module never imports ``transformers`` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImageTokens(nn.Module):
    """Feature map of any image backbone -> tokens with learned 2-D positions.

    Args:
        backbone: module mapping images to a feature map ``(B, C, H, W)``.
        channels: C, the backbone's output channels (the token width D).
        max_height, max_width: largest feature map the positions cover.

    Shapes: images: whatever the backbone takes, e.g. (B, 3, H_img, W_img)  ->  tokens (B, H * W, C),
    row-major (token ``i * W + j`` is feature-map cell (i, j)).
    """

    def __init__(self, backbone: nn.Module, channels: int, max_height: int = 32, max_width: int = 32) -> None:
        super().__init__()
        for arg, value in (("channels", channels), ("max_height", max_height), ("max_width", max_width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg}: expected a positive int, got {value!r}")
        self.backbone, self.channels = backbone, channels
        self.rows = nn.Parameter(torch.randn(max_height, channels) * 0.02)
        self.cols = nn.Parameter(torch.randn(max_width, channels) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        """Shapes: images -> backbone -> (B, C, H, W)  ->  (B, H * W, C)."""
        features = self.backbone(images)
        if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[1] != self.channels:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"backbone: expected a feature map (B, C={self.channels}, H, W), got {got}")
        _, _, height, width = features.shape
        if height > self.rows.shape[0] or width > self.cols.shape[0]:
            raise ValueError(
                f"backbone: feature map {height}x{width} exceeds max_height x max_width = "
                f"{self.rows.shape[0]}x{self.cols.shape[0]}; raise them"
            )
        tokens = features.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major
        position = (self.rows[:height, None, :] + self.cols[None, :width, :]).reshape(height * width, -1)
        return tokens + position


class HuggingFaceEncoder(nn.Module):
    """A Hugging Face transformers model as a fusion input encoder.

    Args:
        model: e.g. ``transformers.AutoModel.from_pretrained(...)`` or a model built from a config;
            called as ``model(input_ids=..., attention_mask=...)`` and must return
            ``last_hidden_state`` (B, N, D) (or a tuple whose first item it is).
        freeze: start with the model's weights frozen (``requires_grad=False``, eval mode kept by `train`).

    Shapes: input_ids: (B, N) long  attention_mask: (B, N) int or bool, nonzero = valid, or None
    ->  (tokens (B, N, D), mask (B, N) bool)
    """

    def __init__(self, model: nn.Module, freeze: bool = False) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module (a transformers model), got {type(model).__name__}")
        self.model = model
        self.frozen = False
        if freeze:
            self.freeze()

    @property
    def dim(self) -> int:
        """Hidden size D of the wrapped model (its ``config.hidden_size``)."""
        return int(self.model.config.hidden_size)

    def freeze(self) -> HuggingFaceEncoder:
        """Stop training the wrapped model (no gradients; dropout off even in training mode)."""
        self.frozen = True
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()
        return self

    def unfreeze(self) -> HuggingFaceEncoder:
        """Train the wrapped model again (fine-tuning)."""
        self.frozen = False
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        self.model.train(self.training)
        return self

    def train(self, mode: bool = True) -> HuggingFaceEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Shapes: input_ids: (B, N)  attention_mask: (B, N) int/bool or None  ->  ((B, N, D), (B, N) bool)."""
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        elif tuple(attention_mask.shape) != tuple(input_ids.shape[:2]):
            raise ValueError(
                f"attention_mask: expected shape {tuple(input_ids.shape[:2])} (as input_ids), "
                f"got {tuple(attention_mask.shape)}"
            )
        hf_mask = attention_mask.long()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(input_ids=input_ids, attention_mask=hf_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden, hf_mask != 0
