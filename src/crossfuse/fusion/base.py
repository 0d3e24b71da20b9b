"""The fusion contract: what every strategy is built from, what it is given and what it returns.

A strategy is a `FusionModel` built from ``{name: ModalitySpec}``, ``num_outputs`` and a `FusionConfig`.
It composes three parts, as torchmultimodal's ``LateFusion`` does:

1. ``encoders``: an ``nn.ModuleDict``, one module per modality (by default `sequence_encoders`:
   projection to width D, positions, self-attention), mapping ``(B, N_m, D_m)`` to ``(B, N_m, D)``;
2. ``fuse(inputs, masks, layers)``: the strategy's own step, the only method a strategy writes
   besides its constructor;
3. a head mapping the fused streams to ``logits (B, num_outputs)`` (by default `ConcatPoolHead`,
   whose linear map splits the logits into per-modality shares).

``forward(inputs, masks, return_attention)`` is defined here once for every strategy: it validates
the inputs (`check_modality_inputs`), turns ``return_attention`` into the set of layers whose weights
are computed (`crossfuse.blocks.select_layers`; ``True`` = the last layer) and calls ``fuse``.
Inputs are ``{name: (B, N_m, D_m)}`` float tensors, masks ``{name: (B, N_m) bool}`` (True = valid; a
missing entry means every position is valid; integer masks, nonzero = valid, and ``(B,)`` presence
vectors are accepted, see `crossfuse.fusion.missing`). A modality whose mask row is all False is absent
for that sample; every strategy then gives finite outputs. ``build_fusion(..., encoders=)`` adds the
user's own input encoders in front (raw input -> tokens). ``FusionConfig.modality_dropout`` drops whole
modalities per sample in training. The result is a `FusionOutput`, a NamedTuple, so ``torch.export``
and ``torch.compile`` see its fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from crossfuse.blocks import AttentionLayers, select_layers
from crossfuse.fusion.missing import drop_modalities, normalise_masks
from crossfuse.models.encoders import DEFAULT_MAX_LENGTH, SequenceEncoder
from crossfuse.validation import check_tensor


@dataclass(frozen=True)
class ModalitySpec:
    """What a strategy must know about one modality: feature size and (optional) fixed length."""

    dim: int
    length: int | None = None


@dataclass(frozen=True)
class FusionConfig:
    """Hyper-parameters shared by every strategy; defaults are a sensible small starting point."""

    dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    encoder_layers: int = 1  # self-attention blocks in each per-modality encoder, before fusion
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    direction: str = "a->b"
    late_combine: str = "logits"  # late fusion: average "logits" or "probs"
    modality_dropout: float = 0.0  # training only: drop whole modalities per sample (see fusion.missing)


class FusionOutput(NamedTuple):
    """What a strategy returns.

    Shapes:
        logits: (B, num_outputs)  pooled: (B, D')
        modality_logits: {name: (B, num_outputs)}: each modality's own contribution to the logits
            (late fusion: each expert's prediction; linear heads over concatenated per-modality
            features: W_m h_m + b / M, as OGM-GE uses), or None where the strategy has none.
        tokens: {name: (B, N_m, D)} token-level outputs, or None.
        weights: {layer: {"q->k": (B, H, N_q, N_k)}} for the layers selected by ``return_attention``
            (0-based layer index), or None when none was asked for.
    ``attention`` is the deepest selected layer's ``{"q->k": weights}`` (what a heatmap shows), or None.
    """

    logits: Tensor
    pooled: Tensor
    modality_logits: dict[str, Tensor] | None = None
    tokens: dict[str, Tensor] | None = None
    weights: dict[int, dict[str, Tensor]] | None = None

    @property
    def attention(self) -> dict[str, Tensor] | None:
        """The deepest selected layer's weights ``{"q->k": (B, H, N_q, N_k)}``, or None."""
        return self.weights[max(self.weights)] if self.weights else None


class FusionModel(nn.Module):
    """Base of every strategy: encoders per modality -> ``fuse`` -> head, inputs validated once here.

    A subclass sets ``self.encoders`` (and its fusion layers and head) in its constructor, sets
    ``attention_depth`` (how many layers can return weights; 0 = none) and implements `fuse`.

    Shapes: forward(inputs: {name: (B, N_m, D_m)}, masks: {name: (B, N_m) bool} | None,
    return_attention: False | True | "last" | "all" | [layer, ...]) -> FusionOutput
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
        check_fusion_args(modalities, num_outputs, config)
        super().__init__()
        self.modalities = dict(modalities)
        self.num_outputs = num_outputs
        self.config = config
        self.encoders = nn.ModuleDict()
        self.input_encoders = nn.ModuleDict()  # user encoders: raw input -> (B, N_m, D_m) tokens, before `encoders`
        self.attention_depth = 0

    def forward(
        self,
        inputs: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        return_attention: AttentionLayers = False,
    ) -> FusionOutput:
        """Validate, select the layers whose weights are computed, fuse.

        Shapes: inputs: {name: (B, N_m, D_m) float, or the raw input of a modality with an input encoder}
        masks: {name: (B, N_m) bool/int or (B,) presence} or None
        ->  FusionOutput (see there; each strategy's docstring gives its ``pooled`` and labels).
        In training mode with ``config.modality_dropout > 0`` whole modalities are dropped per sample.
        ``return_attention``: False (no weights: the fast path everywhere), True or ``"last"`` (the last
        layer), ``"all"``, or a list of 0-based layer indices; only those layers run the weights path.
        """
        inputs, masks = self.encode_inputs(inputs, masks)
        checked = check_modality_inputs(self.modalities, inputs, normalise_masks(inputs, masks))
        if self.training and self.config.modality_dropout > 0:
            shapes = {name: (inputs[name].shape[0], inputs[name].shape[1]) for name in self.modalities}
            device = next(iter(inputs.values())).device
            checked = drop_modalities(checked, shapes, self.config.modality_dropout, device=device)
        return self.fuse(inputs, checked, select_layers(return_attention, self.attention_depth))

    def encode_inputs(
        self, inputs: dict[str, Tensor], masks: Mapping[str, Tensor | None] | None
    ) -> tuple[dict[str, Tensor], Mapping[str, Tensor | None] | None]:
        """Run the user's ``input_encoders`` (see `build_fusion`) on their raw inputs; others pass through.

        An encoder is called as ``encoder(x)``, or ``encoder(x, mask)`` when the user gave a per-position
        mask for it; it returns tokens ``(B, N, D_m)`` or ``(tokens, mask)``. A ``(B,)`` presence mask is
        applied to the encoder's output tokens.
        Shapes: inputs: {name: raw input with batch dim B}  ->  ({name: (B, N_m, D_m)}, {name: (B, N_m)})
        """
        if not self.input_encoders or not isinstance(inputs, Mapping):
            return inputs, masks
        inputs, new_masks = dict(inputs), dict(masks) if isinstance(masks, Mapping) else masks
        for name, encoder in self.input_encoders.items():
            if name not in inputs or not isinstance(new_masks, Mapping | None):
                continue  # check_modality_inputs names the problem
            mask = None if new_masks is None else new_masks.get(name)
            present = None
            if isinstance(mask, Tensor) and mask.dim() == 1:
                present, mask = mask != 0, None
            out = encoder(inputs[name]) if mask is None else encoder(inputs[name], mask)
            tokens, token_mask = out if isinstance(out, tuple) else (out, None)
            dim = self.modalities[name].dim
            if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[-1] != dim:
                got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
                raise ValueError(
                    f"encoders[{name!r}]: expected the encoder to return tokens of shape (B, N, {dim}) "
                    f"(ModalitySpec.dim), got {got}"
                )
            if token_mask is not None and token_mask.dtype != torch.bool:
                token_mask = token_mask != 0
            if present is not None:
                base = token_mask if token_mask is not None else torch.ones_like(tokens[..., 0], dtype=torch.bool)
                token_mask = base & present[:, None]
            inputs[name] = tokens
            new_masks = {} if new_masks is None else new_masks
            new_masks[name] = token_mask
            if token_mask is None:
                del new_masks[name]
        return inputs, new_masks

    def fuse(self, inputs: dict[str, Tensor], masks: dict[str, Tensor | None], layers: frozenset[int]) -> FusionOutput:
        """The strategy's step on validated inputs; ``layers`` are the layers whose weights to return.

        Shapes: inputs: {name: (B, N_m, D_m)}  masks: {name: (B, N_m) bool or None}  ->  FusionOutput
        """
        raise NotImplementedError

    def default_encoders(self, num_layers: int) -> nn.ModuleDict:
        """`sequence_encoders` for this model's modalities and config, with ``num_layers`` blocks each."""
        return sequence_encoders(self.modalities, self.config, num_layers)

    def encode(self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """Every modality through its own encoder. Shapes: {name: (B, N_m, D_m)} -> {name: (B, N_m, D)}"""
        return {name: self.encoders[name](inputs[name], masks[name]).x for name in self.modalities}

    def readout(
        self, streams: dict[str, Tensor], masks: Mapping[str, Tensor | None], weights: dict[int, dict[str, Tensor]]
    ) -> FusionOutput:
        """The default head on the fused streams: ``self.head``, a `ConcatPoolHead`.

        Shapes: streams: {name: (B, N_m, D)}  masks: {name: (B, N_m) bool or None}
        weights: {layer: {"q->k": (B, H, N_q, N_k)}}  ->  FusionOutput (weights None when empty)
        """
        logits, pooled, modality_logits = self.head(streams, masks)
        return FusionOutput(logits, pooled, modality_logits, streams, weights or None)

    def modality_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """Parameters of one modality's encoders, the user's input encoder first (for gradient monitoring)."""
        if name in self.input_encoders:
            yield from self.input_encoders[name].parameters()
        yield from self.encoders[name].parameters()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def sequence_encoders(modalities: Mapping[str, ModalitySpec], config: FusionConfig, num_layers: int) -> nn.ModuleDict:
    """The default encoders: one `SequenceEncoder` per modality with ``num_layers`` self-attention blocks.

    Positions are sized by ``spec.length`` or `DEFAULT_MAX_LENGTH`.
    Shapes: see `SequenceEncoder`; the dict is keyed by modality name in the given order.
    """
    return nn.ModuleDict(
        {
            name: SequenceEncoder(
                spec.dim,
                config.dim,
                spec.length or DEFAULT_MAX_LENGTH,
                num_layers,
                config.num_heads,
                config.mlp_ratio,
                config.dropout,
            )
            for name, spec in modalities.items()
        }
    )


_RESERVED_NAMES = frozenset(dir(nn.ModuleDict()))


def _positive_int(value: object, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_fusion_args(modalities: Mapping[str, ModalitySpec], num_outputs: int, config: FusionConfig) -> None:
    """Validate what every strategy is built from; raise ValueError naming the argument.

    ``modalities`` is a non-empty ``{name: ModalitySpec}`` (names usable as module keys: no ".");
    ``num_outputs`` a positive int; ``config`` a `FusionConfig` with positive sizes.
    """
    if not isinstance(modalities, Mapping) or not modalities:
        raise ValueError(f"modalities: expected a non-empty dict {{name: ModalitySpec}}, got {modalities!r}")
    for name, spec in modalities.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"modalities: names must be non-empty strings without '.', got {name!r}")
        if name in _RESERVED_NAMES:  # they would clash with nn.ModuleDict's own attributes
            raise ValueError(
                f"modalities: the name {name!r} is reserved by torch.nn.ModuleDict; rename that modality "
                f"(e.g. {name + '_'!r})"
            )
        dim, length = getattr(spec, "dim", None), getattr(spec, "length", "missing")
        if not _positive_int(dim):
            raise ValueError(f"modalities[{name!r}]: expected ModalitySpec with a positive int dim, got {spec!r}")
        if length is not None and not _positive_int(length):
            raise ValueError(f"modalities[{name!r}]: expected ModalitySpec.length None or a positive int, got {spec!r}")
    if not _positive_int(num_outputs):
        raise ValueError(f"num_outputs: expected a positive int, got {num_outputs!r}")
    for field_name, minimum in (("dim", 1), ("num_heads", 1), ("num_layers", 0), ("encoder_layers", 0)):
        value = getattr(config, field_name, None)
        if not _positive_int(value, minimum):
            raise ValueError(f"config.{field_name}: expected an int >= {minimum}, got {value!r}")
    if not (isinstance(config.modality_dropout, int | float) and 0 <= config.modality_dropout < 1):
        raise ValueError(f"config.modality_dropout: expected a probability in [0, 1), got {config.modality_dropout!r}")
    if config.dim % config.num_heads:
        raise ValueError(f"config.num_heads: dim={config.dim} is not divisible by num_heads={config.num_heads}")


def check_modality_inputs(
    modalities: Mapping[str, ModalitySpec], inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None
) -> dict[str, Tensor | None]:
    """Check a fusion model's inputs and masks; return ``{name: mask or None}`` for every modality.

    Shapes: inputs: {name: (B, N_m, D_m) float}  masks: {name: (B, N_m) bool} or None (a missing
    modality means all valid)  ->  {name: (B, N_m) bool or None}
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(f"inputs: expected a dict {{name: (B, N, D) tensor}}, got {type(inputs).__name__}")
    if set(inputs) != set(modalities):
        raise ValueError(f"inputs: expected modalities {list(modalities)}, got {list(inputs)}")
    masks = {} if masks is None else masks
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict {{name: (B, N) bool tensor}} or None, got {type(masks).__name__}")
    unknown = [name for name in masks if name not in modalities]
    if unknown:
        raise ValueError(f"masks: unknown modalities {unknown}; expected a subset of {list(modalities)}")
    sizes: dict[str, int] = {}
    checked: dict[str, Tensor | None] = {}
    for name, spec in modalities.items():
        x = check_tensor(f"inputs[{name!r}]", inputs[name], ("B", None, spec.dim), sizes, dtype="float")
        mask = masks.get(name)
        if mask is not None:
            check_tensor(f"masks[{name!r}]", mask, ("B", x.shape[1]), sizes, dtype="bool")
        checked[name] = mask
    return checked


FusionBuilder = Callable[[dict[str, ModalitySpec], int, FusionConfig], FusionModel]
FUSIONS: dict[str, FusionBuilder] = {}


def register_fusion(name: str) -> Callable[[FusionBuilder], FusionBuilder]:
    """Decorator adding a strategy (class or factory) to `FUSIONS` under ``name``."""

    def add(builder: FusionBuilder) -> FusionBuilder:
        FUSIONS[name] = builder
        return builder

    return add


def build_fusion(
    name: str,
    modalities: dict[str, ModalitySpec],
    num_outputs: int,
    config: FusionConfig | None = None,
    encoders: Mapping[str, nn.Module] | None = None,
) -> FusionModel:
    """Construct the strategy registered as ``name``; unknown names list the known ones.

    ``encoders`` ``{name: module}`` brings your own encoder for some modalities: the module maps that
    modality's raw input (an image batch, token ids, ...) to tokens ``(B, N, D_m)``, or to
    ``(tokens, mask)`` with a ``(B, N)`` bool/int mask; ``modalities[name].dim`` is then D_m, the
    encoder's output width (and ``length`` its token count, if the strategy needs one). The strategy's
    own per-modality encoder still runs on those tokens. Other modalities keep the default encoders.
    """
    if name not in FUSIONS:
        raise ValueError(f"fusion: unknown strategy {name!r}; expected one of {sorted(FUSIONS)}")
    model = FUSIONS[name](modalities, num_outputs, config or FusionConfig())
    if encoders:
        if not isinstance(encoders, Mapping):
            raise ValueError(f"encoders: expected a dict {{name: nn.Module}}, got {type(encoders).__name__}")
        for key, module in encoders.items():
            if key not in modalities:
                raise ValueError(f"encoders: unknown modality {key!r}; expected a subset of {list(modalities)}")
            if not isinstance(module, nn.Module):
                raise TypeError(f"encoders[{key!r}]: expected a torch.nn.Module, got {type(module).__name__}")
        model.input_encoders = nn.ModuleDict(dict(encoders))
    return model
