"""Train a report captioner on generated chest films: the one recipe behind `caption-train` and the lab.

`train_captioner` generates training, validation and test studies from disjoint seeded streams,
builds the vocabulary from the training reports and trains a `Captioner` by teacher forcing with
`crossfuse.train.fit`. `CaptionerShape` holds the sizes and the budget; the encoder (``"local"`` or
``"vit"``, with ViT register tokens) and the film variant (``"standard"`` or ``"hard"``) are
fields of it, and so is the weight of the auxiliary multi-label finding loss on the encoder
(`crossfuse.models.finding_head`: without it the local captioner ignores its image at the quick
budget and writes the majority report), so `crossfuse caption-train` and
`crossfuse.lab.report_generation` share one code path and the CLI never imports an experiment.

Shapes: images (B, 1, S, S) and reports as token ids (B, T); see `crossfuse.models.captioner`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from crossfuse.data.radiographs import RadiographDataset, Study, Vocabulary, generate_studies, max_report_length
from crossfuse.models.captioner import Captioner, CaptionerConfig, CaptionObjective
from crossfuse.models.finding_head import (
    CaptionerWithFindings,
    CaptionWithFindingsObjective,
    LabelledRadiographs,
    finding_classes,
)
from crossfuse.train import FitResult, TrainConfig, fit

IMAGE_SIZE = 64
PATCH_SIZE = 8


@dataclass(frozen=True)
class CaptionerShape:
    """Data, model sizes and training budget of one captioner run (the same for every seed)."""

    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int = 32
    lr: float = 3e-3
    dim: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_heads: int = 4
    encoder: str = "local"
    registers: int = 0
    variant: str = "standard"
    finding_loss: float = 1.0  # weight of the auxiliary finding loss (`crossfuse.models.finding_head`); 0 = off


CAPTIONER_SIZES: dict[str, CaptionerShape] = {
    "smoke": CaptionerShape(n_train=64, n_val=16, n_test=16, epochs=1, lr=2e-3, dim=32),
    "quick": CaptionerShape(n_train=6000, n_val=100, n_test=300, epochs=8),
    "full": CaptionerShape(n_train=20000, n_val=200, n_test=1000, epochs=12),
}
"""Budgets of `crossfuse caption-train --size`; the lab's report experiment plans its own."""


@dataclass
class TrainedCaptioner:
    """A trained model with its vocabulary, training record and the studies of its seed."""

    model: Captioner
    vocab: Vocabulary
    fit: FitResult
    val: list[Study]
    test: list[Study]
    train_reports: list[str]
    seed: int


def study_streams(seed: int) -> tuple[int, int, int]:
    """Disjoint generator streams (train, validation, test) for one seed."""
    return 3 * seed + 1000, 3 * seed + 1001, 3 * seed + 1002


def train_captioner(
    shape: CaptionerShape, seed: int = 0, progress: Callable[[str], None] | None = None
) -> TrainedCaptioner:
    """Generate studies of ``shape.variant``, build the vocabulary and train a captioner; eval mode on return."""
    say = progress or (lambda _: None)
    say(f"generating {shape.n_train + shape.n_val + shape.n_test} {shape.variant} studies, seed {seed}")
    s_train, s_val, s_test = study_streams(seed)
    train = generate_studies(shape.n_train, s_train, IMAGE_SIZE, variant=shape.variant)
    val = generate_studies(shape.n_val, s_val, IMAGE_SIZE, variant=shape.variant)
    test = generate_studies(shape.n_test, s_test, IMAGE_SIZE, variant=shape.variant)
    vocab = Vocabulary.build([s.report for s in train])
    max_len = max_report_length(train + val + test) + 4
    torch.manual_seed(seed)
    model = Captioner(
        CaptionerConfig(
            vocab_size=len(vocab),
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            dim=shape.dim,
            encoder_layers=shape.encoder_layers,
            decoder_layers=shape.decoder_layers,
            num_heads=shape.num_heads,
            max_len=max_len,
            encoder=shape.encoder,
            registers=shape.registers,
        )
    )
    say(f"training the captioner ({shape.encoder} encoder), seed {seed} ({shape.epochs} epochs on {shape.n_train})")
    config = TrainConfig(epochs=shape.epochs, batch_size=shape.batch_size, lr=shape.lr, seed=seed)
    train_data, val_data = RadiographDataset(train, vocab, max_len), RadiographDataset(val, vocab, max_len)
    if shape.finding_loss:
        classes = finding_classes(shape.variant)
        result = fit(
            CaptionerWithFindings(model, len(classes)),
            LabelledRadiographs(train_data, classes),
            LabelledRadiographs(val_data, classes),
            config,
            objective=CaptionWithFindingsObjective(pad_id=vocab.pad_id, weight=shape.finding_loss),
        )
    else:
        result = fit(model, train_data, val_data, config, objective=CaptionObjective(pad_id=vocab.pad_id))
    return TrainedCaptioner(model.eval(), vocab, result, val, test, [s.report for s in train], seed)
