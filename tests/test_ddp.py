"""DDP: `fit` under torchrun with 2 CPU processes (gloo) trains the same weights as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossfuse.train import fit

# Shared by the torchrun workers and the single-process reference below.
SETUP = """
import torch
from torch import nn
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FusionConfig, FusionModel, FusionOutput, ModalitySpec
from crossfuse.train import TrainConfig

torch.set_num_threads(1)
SPECS = {"a": ModalitySpec(3, 4), "b": ModalitySpec(2, 5)}


class Tiny(FusionModel):
    # Linear encoders, mean pooling, per-modality heads; `spare` gets no gradient (DDP must cope).
    # No attention: a key bias has an analytically zero gradient whose float noise AdamW would
    # blow up to lr-sized steps, so two summation orders would disagree for a reason unrelated to DDP.
    def __init__(self):
        super().__init__(SPECS, 2, FusionConfig(dim=8))
        self.encoders = nn.ModuleDict({n: nn.Linear(s.dim, 8) for n, s in SPECS.items()})
        self.heads = nn.ModuleDict({n: nn.Linear(8, 2) for n in SPECS})
        self.spare = nn.Linear(2, 2)

    def forward(self, inputs, masks=None, return_attention=False):
        parts = {n: self.heads[n](torch.tanh(self.encoders[n](inputs[n])).mean(1)) for n in SPECS}
        logits = parts["a"] + parts["b"]
        return FusionOutput(logits, logits, modality_logits=parts)


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(n, s.length, s.dim, generator=g) for name, s in SPECS.items()}
    y = (x["a"][:, :, 0].mean(1) + x["b"][:, :, 1].mean(1) > 0).long()
    return MultimodalDataset(x, y)


def make_model():
    torch.manual_seed(0)
    return Tiny()


# 64 rows, global batch 16 = 2 ranks x 8: 4 steps per epoch
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0)
"""

WORKER = """
import os, sys
from pathlib import Path
from safetensors.torch import save_file
from crossfuse.train import fit


class BatchSizes:
    def __init__(self):
        self.sizes = []

    def after_backward(self, model, batch, output, step):
        self.sizes.append(len(batch["y"]))

    def step_record(self):
        return {}

    def messages(self):
        return []


out = Path(sys.argv[1])
model, sizes = make_model(), BatchSizes()
fit(model, make_data(64, 0), make_data(32, 1), CONFIG, out_dir=out / "run", hooks=[sizes])
rank = int(os.environ["RANK"])
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.sizes").write_text(" ".join(map(str, sizes.sizes)))
"""


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(SETUP + WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    run = subprocess.run([*command, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Warning" not in run.stderr, run.stderr[-3000:]

    scope: dict = {}
    exec(SETUP, scope)
    before = torch.get_num_threads()
    try:
        reference = scope["make_model"]()
        expected = fit(reference, scope["make_data"](64, 0), scope["make_data"](32, 1), scope["CONFIG"])
    finally:
        torch.set_num_threads(before)

    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for key, value in reference.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # DDP keeps the replicas identical
        # gradients averaged over ranks = the global batch's mean gradient, up to float summation order
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # each rank trained on its half of every global batch: 8 steps of 8 rows
    assert [(tmp_path / f"rank{r}.sizes").read_text() for r in range(2)] == [" ".join(["8"] * 8)] * 2
    # only rank 0 wrote: one record per epoch, the same metrics as the single process
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for line, record in zip(lines, expected.history, strict=True):
        assert line["train_loss"] == pytest.approx(record["train_loss"], rel=1e-4)
        assert line["val_accuracy"] == pytest.approx(record["val_accuracy"], abs=1 / 32 + 1e-9)
