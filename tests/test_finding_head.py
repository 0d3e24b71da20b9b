"""Auxiliary finding head: classes, labels, the combined loss against its parts, and what is trained."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from crossfuse.data.radiographs import LUNG_ZONES, RadiographDataset, Vocabulary, generate_studies, max_report_length
from crossfuse.models.captioner import Captioner, CaptionerConfig, CaptionObjective
from crossfuse.models.finding_head import (
    CaptionerWithFindings,
    CaptionWithFindingsObjective,
    LabelledRadiographs,
    finding_classes,
    finding_labels,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def setup(n: int = 12):
    studies = generate_studies(n, 7, 32)
    vocab = Vocabulary.build([s.report for s in studies])
    max_len = max_report_length(studies) + 2
    torch.manual_seed(0)
    config = CaptionerConfig(len(vocab), image_size=32, dim=16, num_heads=2, max_len=max_len, encoder="local")
    return studies, vocab, max_len, Captioner(config)


def test_classes_cover_every_location_once() -> None:
    standard = finding_classes("standard")
    # opacity and nodule in 6 lung zones, effusion on 2 sides, cardiomegaly at the heart
    assert len(standard) == len(set(standard)) == 2 * len(LUNG_ZONES) + 2 + 1
    assert len(finding_classes("hard")) == len(standard) + len(LUNG_ZONES)  # + rib fractures
    with pytest.raises(ValueError, match="variant"):
        finding_classes("easy")


def test_labels_are_the_studies_finding_sets() -> None:
    studies = generate_studies(40, 3, 32)
    classes = finding_classes("standard")
    labels = finding_labels(studies, classes)
    for study, row in zip(studies, labels, strict=True):
        assert {classes[i] for i in row.nonzero().flatten().tolist()} == study.finding_set


def test_loss_is_caption_loss_plus_weighted_bce_and_evaluate_scores_the_captioner() -> None:
    studies, vocab, max_len, captioner = setup()
    classes = finding_classes("standard")
    data = LabelledRadiographs(RadiographDataset(studies, vocab, max_len), classes)
    batch = next(iter(DataLoader(data, batch_size=len(studies))))
    model = CaptionerWithFindings(captioner, len(classes))
    caption, _ = CaptionObjective(vocab.pad_id).loss(captioner, batch)
    out = model(batch["image"], batch["tokens"][:, :-1])
    bce = F.binary_cross_entropy_with_logits(out.finding_logits, batch["findings"])
    total, _ = CaptionWithFindingsObjective(vocab.pad_id, weight=0.5).loss(model, batch)
    torch.testing.assert_close(total, caption + 0.5 * bce)
    loader = DataLoader(data, batch_size=5)
    assert CaptionWithFindingsObjective(vocab.pad_id).evaluate(model, loader) == CaptionObjective(
        vocab.pad_id
    ).evaluate(captioner, loader)


def test_finding_loss_trains_the_encoder_and_head_not_the_decoder() -> None:
    studies, vocab, max_len, captioner = setup()
    classes = finding_classes("standard")
    model = CaptionerWithFindings(captioner, len(classes))
    images = torch.from_numpy(np.stack([s.image for s in studies]))[:, None]
    tokens = torch.tensor([vocab.encode(s.report, max_len) for s in studies])[:, :-1]
    out = model(images, tokens)
    F.binary_cross_entropy_with_logits(out.finding_logits, finding_labels(studies, classes)).backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert captioner.encoder.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in captioner.blocks.parameters())
