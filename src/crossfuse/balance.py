"""Modality dominance: per-modality gradient monitoring and gradient rebalancing.

In joint training a modality that predicts the label quickly can dominate: once its branch fits
most samples the loss, and with it every encoder's gradient, shrinks, and the slower modality's
encoder stops learning (Wang et al., 2020, "What makes training multi-modal classification
networks hard?"; Peng et al., 2022, "Balanced multimodal learning via on-the-fly gradient
modulation"). This module watches and counters that through `crossfuse.train.TrainHook`s:

- `GradientNormMonitor`: per step, the L2 norm of each modality encoder's gradient, each
  modality's share of their sum, its ratio to the others, and each modality's contribution score;
  warns when a modality's share stays below a threshold for a stretch of steps.
- `OGMGE`: on-the-fly gradient modulation with generalisation enhancement (Peng et al., 2022),
  the paper's coefficient by default (`ogm_coefficients`), the GE noise added after clipping.
- `AuxiliaryLoss`: unimodal auxiliary cross-entropy on each modality's logit contribution.
- `build_hooks(model, config)`: the hooks `fit` installs for ``TrainConfig.balance`` and
  ``TrainConfig.monitor_gradients``.

The hooks work on `crossfuse.fusion.FusionModel`s (``model.modalities``,
``model.modality_parameters(name)``) whose `FusionOutput.modality_logits` split the logits into
per-modality contributions ``W_m h_m + b / M``. A DDP-wrapped model is unwrapped (``.module``).

Shapes: batch = {"inputs": {name: (B, N_m, D_m)}, "masks": {name: (B, N_m) bool}, "y": (B,) long};
output.modality_logits: {name: (B, C)}.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BALANCE_METHODS = ("none", "ogm-ge", "aux")
"""Values of ``TrainConfig.balance``."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The fusion model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def modality_names(model: nn.Module) -> list[str]:
    """Names of the modalities of a fusion model, in its order; ValueError if it is not one."""
    inner = _unwrap(model)
    modalities = getattr(inner, "modalities", None)
    if not isinstance(modalities, dict) or not modalities or not hasattr(inner, "modality_parameters"):
        raise ValueError(
            "model: expected a crossfuse FusionModel (with .modalities and .modality_parameters(name)), "
            f"got {type(inner).__name__}"
        )
    return list(modalities)


def modality_grad_norms(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """L2 norm of the gradient of each modality's encoder parameters (all of them as one vector).

    Parameters without a gradient count as zero.
    Shapes: -> {name: float}
    """
    inner = _unwrap(model)
    names = modality_names(inner) if names is None else names
    norms = {}
    for name in names:
        grads = [p.grad.detach().float() for p in inner.modality_parameters(name) if p.grad is not None]
        # Norm of the per-tensor norms = norm of all gradients as one vector (as clip_grad_norm_ computes it).
        per_tensor = [torch.linalg.vector_norm(g) for g in grads]
        norms[name] = torch.linalg.vector_norm(torch.stack(per_tensor)).item() if per_tensor else 0.0
    return norms


def contribution_scores(modality_logits: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """Mean softmax probability each modality's own contribution gives the true class (OGM-GE's s_m).

    Peng et al. (2022) sum ``softmax(W_m h_m + b / M)_y`` over the batch; the mean gives
    the same ratios and reads as a confidence in [0, 1].
    Shapes: modality_logits: {name: (B, C)}  y: (B,) long  ->  {name: float}
    """
    scores = {}
    for name, logits in modality_logits.items():
        if logits.dim() != 2 or y.dim() != 1 or logits.shape[0] != y.shape[0]:
            raise ValueError(
                f"modality_logits[{name!r}]: expected shape (B, C) with B = len(y) = {tuple(y.shape)}, "
                f"got {tuple(logits.shape)}"
            )
        probs = logits.detach().float().softmax(dim=-1)
        scores[name] = probs.gather(1, y.long()[:, None]).mean().item()
    return scores


OGM_COEFFICIENTS = ("paper", "shifted")
"""Forms of the OGM modulation coefficient (see `ogm_coefficients`)."""


def ogm_coefficients(
    scores: dict[str, float], alpha: float, coefficient: str = "paper"
) -> tuple[dict[str, float], dict[str, float]]:
    """OGM-GE modulation coefficients ``k_m`` and ratios ``rho_m``.

    ``rho_m = s_m / mean_{j != m} s_j`` (for two modalities Peng et al.'s ``s_a / s_v``); only a
    modality that contributes more than the others (rho > 1) is slowed down:

    - ``"paper"`` (default): ``k_m = 1 - tanh(alpha * rho_m)`` for rho_m > 1, else 1, as in Peng et
      al. (2022), Eq. 10, and the authors' code. It jumps at rho = 1 (to ``1 - tanh(alpha)``).
    - ``"shifted"``: ``k_m = 1 - tanh(alpha * relu(rho_m - 1))``, continuous and equal to 1 for
      balanced modalities; milder (at alpha 0.5, rho 2: 0.54 against the paper's 0.24).

    Shapes: {name: float} -> ({name: k}, {name: rho})
    """
    if len(scores) < 2:
        raise ValueError(f"scores: OGM-GE needs at least two modalities, got {list(scores)}")
    if coefficient not in OGM_COEFFICIENTS:
        raise ValueError(f"coefficient: expected one of {list(OGM_COEFFICIENTS)}, got {coefficient!r}")
    coefficients, ratios = {}, {}
    for name, score in scores.items():
        others = [s for other, s in scores.items() if other != name]
        rho = score / max(sum(others) / len(others), 1e-12)
        ratios[name] = rho
        if coefficient == "paper":
            coefficients[name] = 1.0 - math.tanh(alpha * rho) if rho > 1.0 else 1.0
        else:
            coefficients[name] = 1.0 - math.tanh(alpha * max(rho - 1.0, 0.0))
    return coefficients, ratios


def _labels(batch: Any, method: str) -> Tensor:
    y = batch.get("y") if isinstance(batch, dict) else None
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point():
        got = None if y is None else f"{y.dtype} of shape {tuple(y.shape)}"
        raise ValueError(f"batch['y']: {method} needs class labels of shape (B,) long (classification), got {got}")
    return y


def _modality_logits(output: Any, method: str) -> dict[str, Tensor]:
    modality_logits = getattr(output, "modality_logits", None)
    if not modality_logits:
        raise ValueError(
            f"output.modality_logits: {method} needs each modality's logit contribution, but the fusion "
            "strategy returned none (use one with a linear head over per-modality features: early, late, "
            "cross, bicross, gated)"
        )
    return modality_logits


class GradientNormMonitor:
    """Records each modality encoder's gradient norm per step and warns about starved modalities.

    Per step it records ``grad_norm/<m>`` (L2 norm of modality m's encoder gradient),
    ``grad_share/<m>`` (its fraction of the sum over modalities), ``grad_ratio/<m>`` (its norm
    over the mean norm of the other modalities) and, for classification batches whose output
    carries ``modality_logits``, ``contribution/<m>`` (mean softmax probability of the true class
    from modality m's own logit contribution, the OGM-GE score). It reads ``.grad`` as it is when
    called: `build_hooks` places it before any rebalancing hook, so it sees the task loss's gradient.

    A warning is raised (see `messages`) for every stretch of at least ``patience`` consecutive
    steps during which a modality's share stays below ``threshold``.

    Shapes: after_backward(model, batch, output, step) -> None; step_record() -> {key: float}.
    """

    def __init__(self, model: nn.Module, threshold: float = 0.1, patience: int = 50) -> None:
        self.names = modality_names(model)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: expected a share in (0, 1), got {threshold!r}")
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an int >= 1, got {patience!r}")
        self.threshold, self.patience = threshold, patience
        self.history: list[dict[str, float]] = []
        self._record: dict[str, float] = {}
        self._stretch: dict[str, tuple[int, int] | None] = dict.fromkeys(self.names)
        self._closed: list[tuple[str, int, int]] = []

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        norms = modality_grad_norms(model, self.names)
        record: dict[str, float] = {"step": float(step)}
        total = sum(norms.values())
        for name, norm in norms.items():
            record[f"grad_norm/{name}"] = norm
            if total > 0:
                record[f"grad_share/{name}"] = norm / total
            if len(norms) > 1:
                others = (total - norm) / (len(norms) - 1)
                if others > 0:
                    record[f"grad_ratio/{name}"] = norm / others
        modality_logits = getattr(output, "modality_logits", None)
        y = batch.get("y") if isinstance(batch, dict) else None
        if modality_logits and isinstance(y, Tensor) and y.dim() == 1 and not y.is_floating_point():
            for name, score in contribution_scores(modality_logits, y).items():
                record[f"contribution/{name}"] = score
        if total > 0:
            for name in self.names:
                self._track(name, record[f"grad_share/{name}"] < self.threshold, step)
        self._record = record
        self.history.append(record)

    def _track(self, name: str, below: bool, step: int) -> None:
        stretch = self._stretch[name]
        if below:
            self._stretch[name] = (step, step) if stretch is None else (stretch[0], step)
        elif stretch is not None:
            self._closed.append((name, *stretch))
            self._stretch[name] = None

    def step_record(self) -> dict[str, float]:
        return {k: v for k, v in self._record.items() if k != "step"}

    def state_dict(self) -> dict[str, Any]:
        """The open and closed low-share stretches (so a resumed run still warns about them)."""
        return {
            "open": {name: list(s) for name, s in self._stretch.items() if s is not None},
            "closed": [list(s) for s in self._closed],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._stretch = dict.fromkeys(self.names)
        self._stretch.update({name: (int(a), int(b)) for name, (a, b) in state.get("open", {}).items()})
        self._closed = [(str(n), int(a), int(b)) for n, a, b in state.get("closed", [])]

    def messages(self) -> list[str]:
        """One line per stretch of >= ``patience`` steps with a share below ``threshold`` (open ones too)."""
        stretches = self._closed + [(n, *s) for n, s in self._stretch.items() if s is not None]
        return [
            f"modality {name!r} gradient share stayed below {self.threshold:.0%} for {end - start + 1} steps "
            f"(steps {start}-{end})"
            for name, start, end in sorted(stretches, key=lambda s: (s[1], s[0]))
            if end - start + 1 >= self.patience
        ]


class OGMGE:
    """On-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

    Each step, from the batch's contribution scores ``s_m`` (see `contribution_scores`) and
    ``rho_m = s_m / mean_{j != m} s_j``, every encoder gradient of modality m becomes
    ``k_m * g + n``: ``k_m`` from `ogm_coefficients` (``coefficient="paper"``, the default,
    ``1 - tanh(alpha * rho)`` for rho > 1; or ``"shifted"``), so the dominant modality is slowed and
    the others keep k = 1; with ``noise=True`` (GE), ``n ~ N(0, std(g)^2)``: Gaussian noise with the
    unmodulated gradient tensor's own standard deviation, added to every encoder weight matrix
    (tensors with >= 2 dims, the analogue of the convolution kernels of the authors' code) of every
    modality, to restore the SGD noise that down-scaling removes.

    Order within a training step (`crossfuse.train.fit`):
    ``loss.backward()`` -> `after_backward` (record std(g), scale by k) -> gradient clipping ->
    `after_clip` (add the noise) -> ``optimizer.step()``. The noise is added after clipping so that
    clipping, which acts on the global norm the noise would inflate, cannot shrink it (nor,
    through the raised global norm, every other gradient); clipping applies to the task gradient only.

    Noise comes from a private generator seeded with ``seed``, so runs repeat and the global RNG is
    untouched. Under DDP the scores are averaged over ranks (the gradients already are) and every
    rank draws the same noise, so the replicas stay identical.

    Shapes: after_backward / after_clip(model, batch, output, step) with output.modality_logits
    {name: (B, C)}, batch["y"] (B,) long -> change ``.grad`` in place.
    """

    def __init__(
        self, model: nn.Module, alpha: float = 0.5, seed: int = 0, noise: bool = True, coefficient: str = "paper"
    ) -> None:
        self.names = modality_names(model)
        if len(self.names) < 2:
            raise ValueError(f"model: OGM-GE needs at least two modalities, got {self.names}")
        if not isinstance(alpha, int | float) or alpha < 0:
            raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
        if coefficient not in OGM_COEFFICIENTS:
            raise ValueError(f"coefficient: expected one of {list(OGM_COEFFICIENTS)}, got {coefficient!r}")
        self.alpha, self.noise, self.coefficient = float(alpha), noise, coefficient
        # Offset so the noise stream differs from the data-order generator seeded with the same seed.
        self.generator = torch.Generator().manual_seed(int(seed) + 0x06E6E)
        self._record: dict[str, float] = {}
        self._noise_std: list[tuple[Tensor, float]] = []

    @torch.no_grad()
    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        y = _labels(batch, "OGM-GE")
        scores = _synchronised(contribution_scores(_modality_logits(output, "OGM-GE"), y), y.shape[0], y.device)
        coefficients, ratios = ogm_coefficients(scores, self.alpha, self.coefficient)
        inner = _unwrap(model)
        self._noise_std = []
        for name in self.names:
            k = coefficients[name]
            for p in inner.modality_parameters(name):
                if p.grad is None:
                    continue
                if self.noise and p.grad.dim() >= 2:
                    self._noise_std.append((p, p.grad.float().std().item()))
                if k != 1.0:
                    p.grad.mul_(k)
        self._record = {}
        for name in self.names:
            self._record[f"ogm_coeff/{name}"] = coefficients[name]
            self._record[f"ogm_ratio/{name}"] = ratios[name]

    @torch.no_grad()
    def after_clip(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        """GE: add the noise recorded by `after_backward` (after clipping, so clipping cannot undo it)."""
        for p, std in self._noise_std:
            if p.grad is None:
                continue
            noise = torch.randn(p.grad.shape, generator=self.generator) * (std + 1e-8)
            p.grad.add_(noise.to(device=p.grad.device, dtype=p.grad.dtype))
        self._noise_std = []

    def step_record(self) -> dict[str, float]:
        return dict(self._record)

    def messages(self) -> list[str]:
        return []

    def state_dict(self) -> dict[str, Any]:
        """The noise generator's state, so a resumed run draws the same noise as an uninterrupted one."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def _synchronised(scores: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Scores averaged over all DDP ranks (weighted by batch size), so every replica scales alike."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return scores
    if torch.distributed.get_world_size() == 1:
        return scores
    names = list(scores)
    sums = torch.tensor([scores[n] * count for n in names] + [float(count)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(sums)
    return {n: (sums[i] / sums[-1]).item() for i, n in enumerate(names)}


class AuxiliaryLoss:
    """Unimodal auxiliary losses: adds ``weight * sum_m CE(modality_logits[m], y)`` to the gradient.

    Each modality's logit contribution ``W_m h_m + b / M`` is trained to classify on its own, so a
    modality keeps a learning signal after another one has fitted the data (the weighted
    unimodal + multimodal losses of Wang et al., 2020, with fixed weights). Through the hook
    protocol the fused loss's graph is already freed, so the hook runs one more forward pass on
    the batch and back-propagates the auxiliary term; gradients accumulate onto the fused loss's,
    which makes ``.grad`` the gradient of ``loss + weight * aux`` (up to float rounding; with
    dropout the second pass draws new masks).

    Shapes: after_backward(model, batch, output, step) with batch["y"] (B,) long -> adds to ``.grad``.
    """

    def __init__(self, model: nn.Module, weight: float = 0.5) -> None:
        self.names = modality_names(model)
        if not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"weight: expected a number >= 0, got {weight!r}")
        self.weight = float(weight)
        self._record: dict[str, float] = {}

    def auxiliary_losses(self, modality_logits: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of each modality's logit contribution. Shapes: {name: (B, C)}, (B,) -> {name: ()}."""
        return {name: F.cross_entropy(modality_logits[name], y) for name in self.names}

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        y = _labels(batch, "the auxiliary loss")
        with torch.enable_grad():
            fresh = model(batch["inputs"], batch.get("masks"))
            losses = self.auxiliary_losses(_modality_logits(fresh, "the auxiliary loss"), y)
            (self.weight * torch.stack(list(losses.values())).sum()).backward()
        self._record = {f"aux_loss/{name}": loss.item() for name, loss in losses.items()}

    def step_record(self) -> dict[str, float]:
        return dict(self._record)

    def messages(self) -> list[str]:
        return []


def build_hooks(model: nn.Module, config: Any) -> list[Any]:
    """The `TrainHook`s for ``config.balance`` ("none" | "ogm-ge" | "aux") and ``config.monitor_gradients``.

    The monitor comes first (it records the task loss's gradient before rebalancing). "ogm-ge"
    uses ``config.balance_alpha`` as OGM-GE's alpha, the paper's coefficient (the one the dominance
    experiment uses) and ``config.seed`` for its noise; "aux" uses
    it as the auxiliary-loss weight. Both need ``config.task == "classification"``.
    Shapes: -> list of hooks, empty for balance "none" without monitoring.
    """
    balance = getattr(config, "balance", "none")
    alpha = getattr(config, "balance_alpha", 0.5)
    if balance not in BALANCE_METHODS:
        raise ValueError(f"balance: expected one of {list(BALANCE_METHODS)}, got {balance!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha < 0:
        raise ValueError(f"balance_alpha: expected a number >= 0, got {alpha!r}")
    task = getattr(config, "task", "classification")
    if balance != "none" and task != "classification":
        raise ValueError(f"balance: {balance!r} needs task 'classification', got task {task!r}")
    hooks: list[Any] = []
    if getattr(config, "monitor_gradients", False):
        hooks.append(GradientNormMonitor(model))
    if balance == "ogm-ge":
        hooks.append(OGMGE(model, alpha=alpha, seed=getattr(config, "seed", 0)))
    elif balance == "aux":
        hooks.append(AuxiliaryLoss(model, weight=alpha))
    return hooks
