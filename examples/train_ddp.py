"""Train a fusion strategy on your own .npz with DistributedDataParallel (gloo on CPU, nccl on GPUs).

    torchrun --nproc_per_node=2 examples/train_ddp.py --data mydata.npz --fusion cross --out runs/ddp

`crossfuse.train.fit` sets up the process group from torchrun's environment variables; each process
trains on its share of every global batch of ``--batch-size`` rows (which must divide by the number of
processes), and only rank 0 writes files and prints. Same seed, same weights as one process
(tests/test_ddp.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.npz import load_npz, seeded_split, split_dataset
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.runs import TargetEncoding
from crossfuse.train import TrainConfig, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--fusion", default="cross")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process: the processes already share the cores

    data, split = load_npz(args.data)
    split = split if split is not None else seeded_split(len(data))
    task = "classification" if not data.y.is_floating_point() else "regression"
    targets = TargetEncoding.fit(task, data.y, torch.from_numpy(np.flatnonzero(split == 0)))
    data = MultimodalDataset(data.inputs, targets.encode(data.y), data.masks)  # labels -> 0..C-1, or standardised
    parts = split_dataset(data, split)
    specs = {name: ModalitySpec(x.shape[-1], x.shape[1]) for name, x in data.inputs.items()}
    outputs = len(targets.classes) if task == "classification" else len(targets.mean)
    model = build_fusion(args.fusion, specs, outputs, FusionConfig())
    config = TrainConfig(task=task, epochs=args.epochs, batch_size=args.batch_size, seed=0)
    result = fit(model, parts["train"], parts["val"], config, out_dir=Path(args.out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"world size {os.environ.get('WORLD_SIZE', '1')}: final {result.final}")


if __name__ == "__main__":
    main()
