"""Can the encoder detect the findings at the report experiment's budget? A multi-label probe, no decoder.

A (kind, location) multi-label classifier (encoder -> flatten the patch tokens -> linear) trained with
the same films and steps as one captioner of `crossfuse.lab.report_generation` (quick: 2,400 films x 4
epochs, batch 16); prints F1 per finding kind on 300 held-out films and the training CPU seconds (one
torch thread). If a kind is undetectable here, no decoder can report it at that budget.

    python benchmarks/encoder_detectability.py --encoder local --variant standard
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from crossfuse.data.radiographs import VARIANT_KINDS, Study, generate_studies
from crossfuse.models.finding_head import finding_classes
from crossfuse.models.local_encoder import LocalPatchEncoder
from crossfuse.models.patch_encoder import PatchEncoder


def tensors(studies: list[Study], index: dict[tuple[str, str], int]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([s.image for s in studies]))[:, None]
    labels = torch.zeros(len(studies), len(index))
    for i, s in enumerate(studies):
        for finding in s.finding_set:
            labels[i, index[finding]] = 1.0
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=["local", "vit"], default="local")
    parser.add_argument("--variant", choices=["standard", "hard"], default="standard")
    parser.add_argument("--n-train", type=int, default=2400)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    classes = finding_classes(args.variant)
    index = {c: i for i, c in enumerate(classes)}
    x_train, y_train = tensors(generate_studies(args.n_train, 3 * args.seed + 1000, variant=args.variant), index)
    x_test, y_test = tensors(generate_studies(300, 3 * args.seed + 1002, variant=args.variant), index)
    torch.manual_seed(args.seed)
    encoder = LocalPatchEncoder(dim=64, depth=2) if args.encoder == "local" else PatchEncoder(dim=64, depth=2)
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(encoder.num_patches * 64, len(classes)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    started = time.process_time()
    for _ in range(args.epochs):
        order = torch.randperm(args.n_train)
        for i in range(0, args.n_train, args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    cpu = time.process_time() - started
    with torch.no_grad():
        predicted = (model(x_test) > 0).float()
    scores = {}
    for kind in VARIANT_KINDS[args.variant]:
        cols = [index[c] for c in classes if c[0] == kind]
        p, y = predicted[:, cols], y_test[:, cols]
        tp, fp, fn = (p * y).sum(), (p * (1 - y)).sum(), ((1 - p) * y).sum()
        scores[kind] = float(2 * tp / max(float(2 * tp + fp + fn), 1.0))
    print(f"{args.encoder} encoder, {args.variant} films, {args.n_train} x {args.epochs} epochs: train {cpu:.1f} CPU s")
    for kind, f1 in scores.items():
        print(f"  {kind:17s} F1 {f1:.3f}")


if __name__ == "__main__":
    main()
