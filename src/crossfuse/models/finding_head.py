"""Auxiliary multi-label finding loss on the captioner's encoder: a training-time head, dropped afterwards.

Why: trained on report tokens alone at the report experiment's quick budget (600 steps), the local
captioner ignores its image: its loss on image-dependent words is the same with the memory of another
film (1.041 vs 1.041, seed 0, `benchmarks/captioner_memory_use.py`) and it writes the majority (normal)
report for every film. The
encoder can detect every finding at that budget when it is trained for them directly
(`benchmarks/encoder_detectability.py`), but the caption loss reaches the encoder only through
near-uniform cross-attention, a mean over 64 patches, where a finding's few patches are diluted. An
auxiliary supervised loss on an intermediate representation is the standard remedy (deep supervision,
Lee et al., 2015; in report generation the multi-label finding/tag classifier beside the decoder of
Jing et al., 2018, "On the Automatic Generation of Medical Imaging Reports"). Here a linear layer over
the flattened memory predicts the study's (kind, location) pairs with binary cross-entropy; the loss
is ``caption CE + weight * BCE``. The head is a separate module: the trained `Captioner`, its
checkpoints and its generation are unchanged, and the decoder still has to find the finding by
cross-attention.

Shapes: images: (B, C, H, W)  tokens: (B, T)  ->  `CaptionerWithFindings` output: logits (B, T, V),
finding_logits (B, K) with K = len(finding_classes(variant)); labels: (B, K) float in {0, 1}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from crossfuse.data.radiographs import LUNG_ZONES, SIDES, VARIANT_KINDS, RadiographDataset, Study
from crossfuse.models.captioner import Captioner, CaptionObjective


def finding_classes(variant: str) -> list[tuple[str, str]]:
    """Every (kind, location) pair the ``variant``'s films can hold, in a fixed order."""
    if variant not in VARIANT_KINDS:
        raise ValueError(f"variant: expected one of {tuple(VARIANT_KINDS)}, got {variant!r}")

    def locations(kind: str) -> tuple[str, ...]:
        if kind == "pleural effusion":
            return SIDES
        return ("heart",) if kind == "cardiomegaly" else LUNG_ZONES

    return [(kind, loc) for kind in VARIANT_KINDS[variant] for loc in locations(kind)]


def finding_labels(studies: list[Study], classes: list[tuple[str, str]]) -> Tensor:
    """Multi-hot targets. Shapes: -> (len(studies), len(classes)) float."""
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.zeros(len(studies), len(classes))
    for i, study in enumerate(studies):
        for finding in study.finding_set:
            labels[i, index[finding]] = 1.0
    return labels


class LabelledRadiographs(Dataset):
    """A `RadiographDataset` whose items also carry ``"findings"``: (K,) multi-hot (kind, location) labels."""

    def __init__(self, data: RadiographDataset, classes: list[tuple[str, str]]) -> None:
        self.data = data
        self.labels = finding_labels(data.studies, classes)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**self.data[i], "findings": self.labels[i]}


class CaptionerOutput(NamedTuple):
    """Shapes: logits (B, T, V)  finding_logits (B, K)."""

    logits: Tensor
    finding_logits: Tensor


class CaptionerWithFindings(nn.Module):
    """A `Captioner` and a linear finding head over its flattened memory (training only).

    Shapes: forward(images: (B, C, H, W), tokens: (B, T)) -> CaptionerOutput((B, T, V), (B, K)).
    """

    def __init__(self, captioner: Captioner, num_classes: int) -> None:
        super().__init__()
        self.captioner = captioner
        gh, gw = captioner.grid
        self.head = nn.Linear(gh * gw * captioner.config.dim, num_classes)

    def forward(self, images: Tensor, tokens: Tensor) -> CaptionerOutput:
        """Caption logits and finding logits from the same encoder pass.

        Shapes: images (B, C, H, W), tokens (B, T) -> CaptionerOutput(logits (B, T, V), finding logits (B, K)).
        """
        self.captioner.check_inputs(images, tokens)
        memory = self.captioner.encoder(images)  # the patch memory, before any pooling
        pooled = self.captioner.config.memory == "pooled"
        logits = self.captioner.decode(tokens, memory.mean(dim=1, keepdim=True) if pooled else memory).logits
        return CaptionerOutput(logits, self.head(memory.flatten(1)))


@dataclass
class CaptionWithFindingsObjective:
    """``caption CE + weight * BCE(finding_logits, findings)`` on `LabelledRadiographs` batches.

    ``evaluate`` scores the captioner alone, exactly as `CaptionObjective` does.
    """

    pad_id: int = 0
    weight: float = 1.0

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens = batch["tokens"]
        longest = int((tokens != self.pad_id).sum(dim=1).max())
        tokens = tokens[:, : max(longest, 2)]
        out = model(batch["image"], tokens[:, :-1])
        caption = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=self.pad_id)
        findings = F.binary_cross_entropy_with_logits(out.finding_logits, batch["findings"])
        return caption + self.weight * findings, out.logits

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        inner = getattr(model, "module", model)
        return CaptionObjective(self.pad_id).evaluate(inner.captioner, loader)
