"""Per-time-step decoders of two (or one) sequences: cross-attention fusion and early fusion.

- `CrossSequenceDecoder`: the ``query`` stream (e.g. spikes) is embedded per time bin; the
  ``context`` stream (e.g. LFP) is encoded by self-attention; then each query bin attends over
  every context bin (`CrossAttentionBlock`), so it can look wherever in the other stream the
  information sits, e.g. a few bins later when that stream lags. One output per query bin.
- `EarlySequenceDecoder`: all streams share one fixed timeline; their per-bin features are
  concatenated into one token per bin, then self-attention blocks (early fusion). With a single
  modality it is the unimodal baseline.

Both embed each bin with a linear layer plus a learned position embedding (Vaswani et al., 2017;
Devlin et al., 2019), and predict with a LayerNorm + linear head per bin.

Shapes: inputs: {name: (B, T_m, D_m)}  masks: {name: (B, T_m) bool, True = valid} or None
->  `SequenceOutput` with prediction: (B, T_q, K)  (T_q: the query stream's length, or the shared T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from crossfuse.blocks import AttentionLayers, CrossAttentionBlock, SelfAttentionBlock, run_blocks, select_layers
from crossfuse.validation import check_tensor


@dataclass(frozen=True)
class SequenceDecoderConfig:
    """Width, heads, depth and the longest sequence the position embeddings cover."""

    dim: int = 48
    num_heads: int = 4
    num_layers: int = 2
    context_layers: int = 1  # CrossSequenceDecoder: self-attention blocks over the context stream
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    max_len: int = 256
    position_init: str = "sinusoidal"  # or "random", or "none" (no absolute position)
    context_position_init: str | None = None  # CrossSequenceDecoder's context stream; None = position_init
    kernel_size: int = 1  # bins each token embedding sees (odd; 1 = the bin alone)
    context_stride: int = 1  # CrossSequenceDecoder: bins per context token (patches; 1 = one token per bin)


class SequenceOutput(NamedTuple):
    """Per-bin prediction and, on request, attention weights of the selected layers (1-based labels).

    Shapes: prediction: (B, T, K)  attention: {"layer i": (B, H, T_q, T_k)} or None.
    """

    prediction: Tensor
    attention: dict[str, Tensor] | None = None


def sinusoidal_positions(length: int, dim: int, spacing: float = 1.0, offset: float = 0.0) -> Tensor:
    """Sine/cosine position codes of Vaswani et al. (2017) at times ``offset + spacing * i``.

    Shapes: -> (length, dim)
    """
    position = offset + spacing * torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return codes


class BinEmbedding(nn.Module):
    """Embedding of time bins (a 1-D convolution) plus a learned position embedding.

    ``stride=1``: one token per bin, seeing ``kernel_size`` bins (1 = the bin alone; wider kernels let a
    token see its local waveform, translation-equivariantly, whatever the stream's lag).
    ``stride=s > 1``: one token per patch of ``s`` bins (Nie et al., 2023, PatchTST), seeing the patch
    plus ``(kernel_size - 1) / 2`` bins each side; T is right-padded to a multiple of s.
    The position table starts from the sinusoidal codes at each token's centre time in bins (the same
    clock for every stream and stride), from N(0, 0.02^2) with ``position_init="random"``, or is absent
    with ``"none"``. Bins where ``mask`` is False are zeroed first so they leak into no neighbour; a patch
    is valid if any of its bins is.

    Shapes: x: (B, T, D_in)  mask: (B, T) bool or None  ->  (B, ceil(T / s), dim), mask (B, ceil(T / s)) or None
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        max_len: int,
        position_init: str = "sinusoidal",
        kernel_size: int = 1,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if position_init not in ("sinusoidal", "random", "none"):
            raise ValueError(f"position_init: expected 'sinusoidal', 'random' or 'none', got {position_init!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd integer >= 1, got {kernel_size}")
        if stride < 1:
            raise ValueError(f"stride: expected an integer >= 1, got {stride}")
        self.stride = stride
        width = stride + kernel_size - 1  # the patch plus (kernel_size - 1) / 2 bins each side
        self.proj = nn.Conv1d(in_dim, dim, width, stride=stride, padding=(kernel_size - 1) // 2)
        tokens = -(-max_len // stride)
        self.position: nn.Parameter | None = None
        if position_init == "sinusoidal":
            self.position = nn.Parameter(sinusoidal_positions(tokens, dim, stride, (stride - 1) / 2))
        elif position_init == "random":
            self.position = nn.Parameter(torch.randn(tokens, dim) * 0.02)

    def token_times(self, length: int) -> Tensor:
        """Centre time (in bins) of each token for an input of ``length`` bins. Shapes: -> (ceil(length / s),)"""
        return torch.arange(-(-length // self.stride), dtype=torch.float32) * self.stride + (self.stride - 1) / 2

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Shapes: x: (B, T, D_in)  mask: (B, T) bool or None  ->  (B, ceil(T / s), dim), mask or None."""
        if mask is not None:
            x = x * mask[..., None]
        pad = -x.shape[1] % self.stride
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
            mask = None if mask is None else torch.nn.functional.pad(mask, (0, pad), value=False)
        h = self.proj(x.transpose(1, 2)).transpose(1, 2)
        if mask is not None and self.stride > 1:
            mask = mask.view(mask.shape[0], -1, self.stride).any(dim=-1)
        return (h if self.position is None else h + self.position[: h.shape[1]]), mask


def _check_inputs(
    inputs: dict[str, Tensor], masks: dict[str, Tensor] | None, dims: dict[str, int], max_len: int
) -> dict[str, Tensor | None]:
    if not isinstance(inputs, dict):
        raise ValueError(f"inputs: expected a dict {{name: (B, T, D)}}, got {type(inputs).__name__}")
    missing = sorted(set(dims) - set(inputs))
    if missing:
        raise ValueError(f"inputs: missing modalities {missing}; expected keys {sorted(dims)}, got {sorted(inputs)}")
    sizes: dict[str, int] = {}
    out: dict[str, Tensor | None] = {}
    for name, dim in dims.items():
        x = check_tensor(f"inputs[{name!r}]", inputs[name], ("B", None, dim), sizes, dtype="float")
        if x.shape[1] > max_len:
            raise ValueError(f"inputs[{name!r}]: expected at most max_len={max_len} bins, got {x.shape[1]}")
        mask = None if masks is None else masks.get(name)
        if mask is not None:
            check_tensor(f"masks[{name!r}]", mask, (sizes["B"], x.shape[1]), dtype="bool")
        out[name] = mask
    return out


class _SequenceDecoder(nn.Module):
    """Shared entry of both decoders: validate the inputs once, select the layers, then ``decode``.

    Subclasses set ``dims``, ``config`` and ``layers`` (the stack whose weights can be returned).
    """

    dims: dict[str, int]
    config: SequenceDecoderConfig
    layers: nn.ModuleList

    def forward(
        self,
        inputs: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        return_attention: AttentionLayers = False,
    ) -> SequenceOutput:
        """Shapes: see the subclass. ``return_attention``: False, True or ``"all"`` (every layer), ``"last"``
        or 0-based layer indices; only those layers run the weights path."""
        checked = _check_inputs(inputs, masks, self.dims, self.config.max_len)
        layers = select_layers(return_attention, len(self.layers), true_means="all")
        prediction, weights = self.decode(inputs, checked, layers)
        return SequenceOutput(prediction, {f"layer {i + 1}": w for i, w in sorted(weights.items())} if layers else None)

    def decode(
        self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Prediction (B, T, K) and ``{layer: weights}`` for ``layers``, from validated inputs."""
        raise NotImplementedError


class CrossSequenceDecoder(_SequenceDecoder):
    """Query-stream bins attend over the context stream; one prediction per query bin.

    Args:
        dims: {name: feature size} of the two streams.
        query: the stream whose bins are predicted (e.g. ``"spikes"``); the other is the context.
        num_outputs: K, values predicted per bin.

    Shapes: inputs {query: (B, T_q, D_q), context: (B, T_k, D_k)}, masks (B, T_m) bool or None
    ->  prediction (B, T_q, K); with ``return_attention`` also {"layer i": (B, H, T_q, N_k)} for the
    selected cross-attention layers (True = all), where N_k = ceil(T_k / config.context_stride) context
    tokens centred at `context_times` (bins).
    """

    def __init__(
        self, dims: dict[str, int], query: str, num_outputs: int, config: SequenceDecoderConfig | None = None
    ) -> None:
        super().__init__()
        config = config or SequenceDecoderConfig()
        if len(dims) != 2 or query not in dims:
            raise ValueError(f"dims: expected two modalities including query={query!r}, got {sorted(dims)}")
        self.dims, self.config, self.query = dict(dims), config, query
        self.context = next(name for name in dims if name != query)
        d = config.dim
        context_init = config.context_position_init or config.position_init
        self.embed = nn.ModuleDict(
            {
                name: BinEmbedding(
                    dim,
                    d,
                    config.max_len,
                    config.position_init if name == query else context_init,
                    config.kernel_size,
                    1 if name == query else config.context_stride,
                )
                for name, dim in dims.items()
            }
        )
        self.context_encoder = nn.ModuleList(
            SelfAttentionBlock(d, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.context_layers)
        )
        self.layers = nn.ModuleList(
            CrossAttentionBlock(d, d, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.num_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_outputs))

    def context_times(self, length: int) -> Tensor:
        """Centre (in context bins) of each context token for a context of ``length`` bins. Shapes: -> (N_k,)"""
        return self.embed[self.context].token_times(length)

    def decode(
        self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Shapes: see the class; weights {layer: (B, H, T_q, N_k)}."""
        q_mask, c_mask = masks[self.query], masks[self.context]
        context, c_mask = self.embed[self.context](inputs[self.context], c_mask)
        context = run_blocks(self.context_encoder, context, (), mask=c_mask).x
        x, _ = self.embed[self.query](inputs[self.query], q_mask)
        x, weights = run_blocks(self.layers, x, layers, context=context, mask=q_mask, context_mask=c_mask)
        return self.head(x), weights


class EarlySequenceDecoder(_SequenceDecoder):
    """Early fusion on one timeline: per-bin features of all streams concatenated, then self-attention.

    Every stream must have the same number of bins T; a bin is valid where all masks are True.
    With one modality in ``dims`` this is the unimodal decoder.

    Shapes: inputs {name: (B, T, D_m)}, masks (B, T) bool or None  ->  prediction (B, T, K);
    with ``return_attention`` also {"layer i": (B, H, T, T)} (self-attention) for the selected layers
    (True = all).
    """

    def __init__(self, dims: dict[str, int], num_outputs: int, config: SequenceDecoderConfig | None = None) -> None:
        super().__init__()
        config = config or SequenceDecoderConfig()
        if not dims:
            raise ValueError("dims: expected at least one modality, got none")
        self.dims, self.config = dict(dims), config
        self.embed = BinEmbedding(
            sum(dims.values()), config.dim, config.max_len, config.position_init, config.kernel_size
        )
        self.layers = nn.ModuleList(
            SelfAttentionBlock(config.dim, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.num_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(config.dim), nn.Linear(config.dim, num_outputs))

    def decode(
        self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Shapes: see the class; weights {layer: (B, H, T, T)}."""
        lengths = {name: inputs[name].shape[1] for name in self.dims}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"inputs: early fusion needs one timeline (equal T per modality), got lengths {lengths}")
        mask = None
        for m in masks.values():
            if m is not None:
                mask = m if mask is None else mask & m
        x, _ = self.embed(torch.cat([inputs[name] for name in self.dims], dim=-1), mask)
        x, weights = run_blocks(self.layers, x, layers, mask=mask)
        return self.head(x), weights
