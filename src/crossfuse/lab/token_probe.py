"""A linear probe on single image tokens: can one patch token tell an object's colour-shape pair?

The binding experiment's PRECONDITION (`crossfuse.lab.binding`): if one token already holds an object's
colour and shape, the pair arrives bound and the experiment cannot show binding across tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossfuse.data.scenes import COLORS, SHAPES, BindingSet, SceneObject, shape_mask


def object_tokens(obj: SceneObject, patch: int, image_size: int) -> list[int]:
    """Row-major indices of the ``patch`` x ``patch`` tokens holding any of the object's filled pixels."""
    grid = image_size // patch
    mask = shape_mask(obj.shape, obj.size, obj.variant)
    ys, xs = np.nonzero(mask)
    return sorted({((obj.y0 + y) // patch) * grid + (obj.x0 + x) // patch for y, x in zip(ys, xs, strict=True)})


def _token_examples(data: BindingSet, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (object, token holding it) pair: features = token pixels + one-hot position; label = pair index.

    Shapes: -> features (M, patch*patch*3 + tokens)  labels (M,) long in [0, 16)
    """
    patches = data.patches(patch)
    n_tokens = patches.shape[1]
    rows, positions, labels = [], [], []
    for i, objects in enumerate(data.objects):
        for obj in objects:
            for t in object_tokens(obj, patch, data.images.shape[-1]):
                rows.append(i)
                positions.append(t)
                labels.append(COLORS.index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape))
    rows_t, pos_t = torch.tensor(rows), torch.tensor(positions)
    features = torch.cat([patches[rows_t, pos_t], F.one_hot(pos_t, n_tokens).float()], dim=1)
    return features, torch.tensor(labels)


def single_token_probe(
    train: BindingSet, test: BindingSet, patch: int = 4, steps: int = 300, max_scenes: int = 3000
) -> float:
    """Test accuracy of a linear probe reading an object's colour-shape pair from one token that holds it.

    Multinomial logistic regression (full-batch L-BFGS on standardised features, a little weight decay)
    trained on every (object, token) of the first ``max_scenes`` scenes of ``train``, scored on those of
    ``test``; chance is 1/16.
    """
    train = BindingSet(train.images[:max_scenes], train.objects[:max_scenes], [], train.answers[:max_scenes])
    x, y = _token_examples(train, patch)
    x_test, y_test = _token_examples(test, patch)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    generator = torch.Generator().manual_seed(0)
    probe = nn.Linear(x.shape[1], len(COLORS) * len(SHAPES))
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 1e-4 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (probe(x_test).argmax(-1) == y_test).float().mean().item()
