"""Fuse your own encoders: a small CNN for images and a small text transformer, cross-attention between them.

    python examples/own_encoders.py

The task (seeded, generated here, nothing downloaded): an image holds one bright 4x4 square in one of
four quadrants (top or bottom half: bit r); a padded token sequence holds filler words and exactly one
key word w in {0, 1}; the label is 2 r + w (4 classes), so either modality alone gets at most 0.5.

The raw inputs go straight into the fusion model: ``build_fusion(..., encoders={"image":
ImageTokens(cnn, ...), "text": TextEncoder(...)})``. The text encoder returns ``(tokens, mask)`` with
a Hugging Face-style integer mask (1 = token, 0 = padding). The same model is trained twice: in a plain
PyTorch loop, and with ``crossfuse.train.fit`` (any Dataset whose items are
``{"inputs": {...}, "masks": {...}, "y": ...}`` works). Prints test accuracy and CPU seconds (one thread).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.models.adapters import ImageTokens
from crossfuse.train import TrainConfig, evaluate, fit

VOCAB, PAD, KEYS, MAX_LEN = 24, 0, 2, 12  # ids 1..2 are the key words 0, 1; 3..23 filler


def make_data(n: int, seed: int) -> dict[str, Tensor]:
    """Images (n, 1, 16, 16), token ids (n, 12) padded with 0, int masks (n, 12), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    quadrant = torch.randint(4, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for i, q in enumerate(quadrant.tolist()):
        top, left = (
            8 * (q // 2) + int(torch.randint(5, (1,), generator=g)),
            8 * (q % 2) + int(torch.randint(5, (1,), generator=g)),
        )
        images[i, 0, top : top + 4, left : left + 4] += 1.0
    word = torch.randint(KEYS, (n,), generator=g)
    lengths = torch.randint(4, MAX_LEN + 1, (n,), generator=g)
    ids = torch.randint(KEYS + 1, VOCAB, (n, MAX_LEN), generator=g)
    positions = (torch.rand(n, generator=g) * lengths).long()
    ids[torch.arange(n), positions] = word + 1
    mask = (torch.arange(MAX_LEN)[None] < lengths[:, None]).long()
    ids = ids * mask  # padding id 0
    return {"image": images, "text": ids, "mask": mask, "y": 2 * (quadrant // 2) + word}


class TextEncoder(nn.Module):
    """Embedding + positions + a 1-layer transformer encoder.

    Shapes: ids (B, N) long  mask (B, N) int, 1 = token, or None  ->  (tokens (B, N, D), mask (B, N) int)
    """

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(MAX_LEN, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mask = (ids != PAD).long() if mask is None else mask
        h = self.embed(ids) + self.position[: ids.shape[1]]
        return self.encoder(h, src_key_padding_mask=mask == 0), mask


class RawPairs(Dataset):
    """Items {"inputs": {"image", "text"}, "masks": {"text"}, "y"} for `crossfuse.train.fit`."""

    def __init__(self, data: dict[str, Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data["y"])

    def __getitem__(self, i: int) -> dict:
        d = self.data
        return {
            "inputs": {"image": d["image"][i], "text": d["text"][i]},
            "masks": {"text": d["mask"][i]},
            "y": d["y"][i],
        }


def build_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1))
    cnn.append(nn.ReLU()).append(nn.MaxPool2d(2))  # (B, 32, 4, 4): 16 image tokens
    encoders = {"image": ImageTokens(cnn, channels=32, max_height=4, max_width=4), "text": TextEncoder(32)}
    modalities = {"image": ModalitySpec(dim=32, length=16), "text": ModalitySpec(dim=32, length=MAX_LEN)}
    config = FusionConfig(dim=32, num_heads=4, num_layers=1, encoder_layers=0, direction="b->a")  # text queries image
    return build_fusion("cross", modalities, 4, config, encoders=encoders)


def accuracy(model: nn.Module, data: dict[str, Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        logits = model({"image": data["image"], "text": data["text"]}, {"text": data["mask"]}).logits
    return (logits.argmax(-1) == data["y"]).float().mean().item()


def plain_loop(train: dict[str, Tensor], epochs: int, seed: int) -> nn.Module:
    model = build_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(train["y"]), generator=g).split(64):
            logits = model(
                {"image": train["image"][index], "text": train["text"][index]}, {"text": train["mask"][index]}
            )
            loss = F.cross_entropy(logits.logits, train["y"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def main() -> None:
    torch.set_num_threads(1)
    train, val, test = make_data(2000, seed=0), make_data(500, seed=1), make_data(1000, seed=2)
    epochs = 8
    started = time.process_time()
    model = plain_loop(train, epochs, seed=0)
    print(f"plain PyTorch loop: test accuracy {accuracy(model, test):.3f} ({time.process_time() - started:.1f} CPU s)")
    started = time.process_time()
    model = build_model(seed=0)
    fit(model, RawPairs(train), RawPairs(val), TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, seed=0))
    cpu = time.process_time() - started
    print(f"crossfuse.train.fit: test accuracy {evaluate(model, RawPairs(test))['accuracy']:.3f} ({cpu:.1f} CPU s)")


if __name__ == "__main__":
    main()
