"""Benchmark fp32 / bf16 / fp16 training through `crossfuse.train.fit`: final losses, accuracy and time.

The seeded two-modality task of `crossfuse.data.dominance` (an easy and a hard modality, 4 classes),
the ``cross`` fusion at ``FusionConfig(dim=32)``, AdamW, the same seed for every precision. Prints one
markdown row per precision: final train loss, its relative gap to fp32, validation accuracy, and the time
of the whole fit. With ``--clock cpu`` (the default on CPU) the time is the CPU time of one torch thread;
on a GPU it is wall-clock. Never asserted on: low precision on a CPU is usually slower (no bf16/fp16
matrix units are used by default), the figure of interest there is the loss gap.

    .venv/bin/python benchmarks/precision.py                  # CPU, one thread, 3 seeds
    .venv/bin/python benchmarks/precision.py --device cuda --clock wall
"""

from __future__ import annotations

import argparse
import time

import torch

from crossfuse.data.dominance import dominance_splits
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.train import TrainConfig, fit


def run(precision: str, seed: int, device: str, epochs: int, clock) -> tuple[float, float, float]:
    _, splits = dominance_splits({"train": 1024, "val": 256}, seed=seed)
    train, val = splits["train"].data, splits["val"].data
    specs = {name: ModalitySpec(dim=x.shape[2], length=x.shape[1]) for name, x in train.inputs.items()}
    torch.manual_seed(seed)
    model = build_fusion("cross", specs, 4, FusionConfig(dim=32))
    config = TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, seed=seed, device=device, precision=precision)
    started = clock()
    result = fit(model, train, val, config)
    return result.final["train_loss"], result.final["val_accuracy"], clock() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    seeds = f"seeds 0..{args.seeds - 1}"
    print(f"torch {torch.__version__}, device {args.device}, {args.clock} clock, {args.epochs} epochs, {seeds}")
    print("| precision | seed | train loss | gap to fp32 | val accuracy | time (s) |")
    print("|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        reference = None
        for precision in ("fp32", "bf16", "fp16"):
            loss, accuracy, seconds = run(precision, seed, args.device, args.epochs, clock)
            reference = loss if reference is None else reference
            gap = (loss - reference) / reference
            print(f"| {precision} | {seed} | {loss:.5f} | {gap:+.3%} | {accuracy:.3f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
