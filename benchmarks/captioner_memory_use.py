"""Does a trained captioner read its image? Loss on image-dependent words with its own vs another film's memory.

Trains one captioner with the shared recipe (`crossfuse.models.captioner_training.train_captioner`) at the
report experiment's quick budget for the local row and prints, on its held-out test films: training CPU
seconds (one torch thread), finding F1 per kind of greedy reports, how many distinct reports it wrote, the
teacher-forced loss on the image-dependent words of the reference reports (`crossfuse.lab.pointing.PrefixModel`,
the pointing metric's rule) with the film's own memory and with the memory of another film of the batch
(rolled by one), the loss on the other words, and the cross-attention's normalised entropy per decoder layer
(1 = uniform). A captioner that ignores its image has the same loss with either memory.

    python benchmarks/captioner_memory_use.py --finding-loss 0 --epochs 4    # the recipe of the first run
    python benchmarks/captioner_memory_use.py --finding-loss 1 --epochs 4    # with the auxiliary finding loss
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from crossfuse.data.radiographs import VARIANT_KINDS, RadiographDataset, max_report_length, tokenize
from crossfuse.lab.grounding import parse_findings, per_kind_f1
from crossfuse.lab.pointing import PrefixModel
from crossfuse.lab.report_generation import PLANS
from crossfuse.models.captioner_training import train_captioner
from crossfuse.models.decoding import greedy_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=["local", "vit"], default="local")
    parser.add_argument("--finding-loss", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=PLANS["quick"].shape.epochs)
    parser.add_argument("--lr", type=float, default=PLANS["quick"].shape.lr)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = replace(
        PLANS["quick"].shape, encoder=args.encoder, finding_loss=args.finding_loss, epochs=args.epochs, lr=args.lr
    )
    started = time.process_time()
    trained = train_captioner(shape, args.seed)
    cpu = time.process_time() - started
    model, vocab, test = trained.model, trained.vocab, trained.test
    images = torch.from_numpy(np.stack([s.image for s in test]))[:, None]
    tokens = RadiographDataset(test, vocab, max_report_length(test)).tokens
    prefix = PrefixModel([tokenize(r) for r in trained.train_reports])
    dependent = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    for i, study in enumerate(test):
        marks = prefix.image_dependent(tokenize(study.report))
        dependent[i, : len(marks)] = torch.tensor(marks)
    valid = tokens[:, 1:] != vocab.pad_id
    with torch.no_grad():
        memory = model.encode(images)
        out = model.decode(tokens[:, :-1], memory, return_attention="all")
        other = model.decode(tokens[:, :-1], memory.roll(1, dims=0)).logits
        words = [vocab.words(ids) for ids in greedy_decode(model, images).tokens]
    own_loss = F.cross_entropy(out.logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    other_loss = F.cross_entropy(other.transpose(1, 2), tokens[:, 1:], reduction="none")
    f1 = per_kind_f1([parse_findings(w) for w in words], [s.finding_set for s in test])
    print(
        f"{args.encoder} encoder, finding loss {args.finding_loss}, {shape.n_train} x {args.epochs} epochs, "
        f"lr {args.lr}, seed {args.seed}: train {cpu:.1f} CPU s"
    )
    print("  F1: " + ", ".join(f"{k} {f1[k]:.3f}" for k in VARIANT_KINDS["standard"]))
    print(f"  distinct greedy reports: {len({' '.join(w) for w in words})} of {len(test)}")
    print(
        f"  loss on image-dependent words: own memory {own_loss[dependent].mean():.3f}, another film's "
        f"{other_loss[dependent].mean():.3f} ({int(dependent.sum())} words); other words "
        f"{own_loss[valid & ~dependent].mean():.3f}"
    )
    for layer, weights in enumerate(out.attention, start=1):  # (B, H, T, M)
        entropy = -(weights.clamp_min(1e-12).log() * weights).sum(-1) / math.log(weights.shape[-1])
        print(f"  layer {layer} attention entropy: {entropy.permute(0, 2, 1)[valid].mean():.3f}")


if __name__ == "__main__":
    main()
