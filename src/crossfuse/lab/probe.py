"""Linear probes on frozen encoder features: how much of the label an encoder's output makes linearly readable.

Shapes: encoder_features: data.inputs[name] (N, T, D_m) -> (N, dim); linear_probe_accuracy: (N, F), (N,),
(M, F), (M,) -> float; probe: -> {modality: float}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FusionModel
from crossfuse.fusion.head import masked_mean


@torch.no_grad()
def encoder_features(model: FusionModel, name: str, data: MultimodalDataset, batch_size: int = 512) -> torch.Tensor:
    """Masked-mean pooled output of one modality's encoder (the model is left in its training mode).

    Shapes: data.inputs[name]: (N, T, D_m)  ->  (N, dim)
    """
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(data), batch_size):
        x = data.inputs[name][start : start + batch_size]
        mask = data.masks[name][start : start + batch_size]
        parts.append(masked_mean(model.encoders[name](x, mask).x, mask))
    model.train(was_training)
    return torch.cat(parts)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_y: torch.Tensor,
    test_features: torch.Tensor,
    test_y: torch.Tensor,
    l2: float = 1e-3,
    iterations: int = 100,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised frozen features.

    Zero-initialised and fitted full-batch with L-BFGS (a convex problem), so it is deterministic.
    Shapes: train_features: (N, F)  train_y: (N,)  test_features: (M, F)  test_y: (M,)  ->  float
    """
    if train_features.dim() != 2 or train_features.shape[0] != train_y.shape[0]:
        raise ValueError(
            f"train_features: expected (N, F) with N = len(train_y) = {train_y.shape[0]}, "
            f"got {tuple(train_features.shape)}"
        )
    if test_features.dim() != 2 or test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features: expected (M, {train_features.shape[1]}), got {tuple(test_features.shape)}")
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    classes = int(max(train_y.max(), test_y.max()).item()) + 1
    weight = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return ((xte @ weight + bias).argmax(-1) == test_y).float().mean().item()


def probe(
    model: FusionModel, train: MultimodalDataset, test: MultimodalDataset, names: list[str] | None = None
) -> dict[str, float]:
    """Linear-probe test accuracy of each (or each named) modality's frozen encoder. Shapes: -> {name: float}"""
    return {
        name: linear_probe_accuracy(
            encoder_features(model, name, train), train.y, encoder_features(model, name, test), test.y
        )
        for name in (names if names is not None else list(model.modalities))
    }
