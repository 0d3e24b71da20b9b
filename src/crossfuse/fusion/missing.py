"""Missing modalities: user masks in any of the usual forms, and modality dropout for training.

A modality may be absent for some samples: its mask row is all False (every strategy then treats it
as contributing nothing, without NaN). `normalise_masks` accepts what users pass:

- ``(B, N)`` bool, True = valid (the crossfuse convention);
- ``(B, N)`` integer (Hugging Face ``attention_mask``): nonzero = valid;
- ``(B,)`` bool or integer presence vector: the whole modality present (True/nonzero) or absent.

`drop_modalities` implements modality dropout (as in ModDrop, Neverova et al., 2016): during
training each sample loses each modality independently with probability ``p`` (its mask row is set
to all False), but never all of them: when every modality of a sample was drawn as dropped, one of
them, chosen uniformly, is kept. The effective per-modality drop rate is therefore

    P(modality m dropped) = p - p**M / M        (M modalities)

(p**M: all were drawn as dropped; 1/M: m is the one restored), e.g. 0.5 - 0.25 / 2 = 0.375 for
p = 0.5 and two modalities, for samples that have every modality. A sample that already lacks some
modalities keeps at least one of those it has (the restored one is drawn among them). With one
modality nothing is ever dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def normalise_masks(
    inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | None] | None, lengths: Mapping[str, int] | None = None
) -> dict[str, Tensor | None]:
    """Bool ``(B, N_m)`` masks from bool/int ``(B, N_m)`` masks or ``(B,)`` presence vectors.

    ``lengths`` overrides N_m for a modality whose token count is not ``inputs[name].shape[1]``.
    Tensors of any other rank pass through unchanged (the shape check names them later).
    Shapes: inputs: {name: (B, N_m, ...)}  masks: {name: (B, N_m) or (B,) bool/int} or None
    ->  {name: (B, N_m) bool or None}
    """
    if masks is None or not isinstance(masks, Mapping):
        return masks  # type: ignore[return-value]  # None, or a wrong type the validation reports
    out: dict[str, Tensor | None] = {}
    for name, mask in masks.items():
        if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
            out[name] = mask
            continue
        if mask.dtype != torch.bool:
            mask = mask != 0
        if mask.dim() == 1 and name in inputs and isinstance(inputs[name], Tensor):
            length = (lengths or {}).get(name, inputs[name].shape[1] if inputs[name].dim() > 1 else 1)
            mask = mask[:, None].expand(-1, length)
        out[name] = mask
    return out


def drop_modalities(
    masks: Mapping[str, Tensor | None],
    shapes: Mapping[str, tuple[int, int]],
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor | None]:
    """Drop whole modalities per sample with probability ``p``, never all of a sample's modalities.

    ``shapes`` gives each modality's (B, N_m) (used when its mask is None). Returns new masks;
    a dropped modality's row is all False. See the module docstring for the effective rate.
    Shapes: masks: {name: (B, N_m) bool or None}  ->  {name: (B, N_m) bool or None}
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a modality dropout probability in [0, 1), got {p!r}")
    names = list(shapes)
    if p == 0.0 or len(names) < 2:
        return dict(masks)
    batch = next(iter(shapes.values()))[0]
    where = "cpu" if generator is not None else device
    draw = torch.rand(batch, len(names), generator=generator, device=where)
    keep = draw >= p  # (B, M)
    # Modalities a sample already lacks do not count: it keeps at least one of those it has.
    present = torch.stack(
        [
            masks[n].any(dim=1).to(keep.device) if masks.get(n) is not None else torch.ones_like(keep[:, 0])
            for n in names
        ],
        dim=1,
    )
    nobody = ~(keep & present).any(dim=1) & present.any(dim=1)  # every present modality drawn as dropped
    pick = torch.rand(batch, len(names), generator=generator, device=where).masked_fill(~present, -1.0)
    restore = pick.argmax(dim=1)  # uniform among the sample's present modalities
    keep = keep | (nobody[:, None] & (torch.arange(len(names), device=keep.device) == restore[:, None]))
    out: dict[str, Tensor | None] = {}
    for i, name in enumerate(names):
        mask = masks.get(name)
        base_device = mask.device if mask is not None else device
        kept = keep[:, i].to(base_device)[:, None]
        if mask is None:
            mask = torch.ones(shapes[name], dtype=torch.bool, device=base_device)
        out[name] = mask & kept
    return out


def presence(mask: Tensor | None) -> Tensor | None:
    """Whether each sample has any valid token of a modality. Shapes: (B, N) bool -> (B,) bool, None -> None."""
    return None if mask is None else mask.any(dim=1)
