"""The hook points of `crossfuse.train.fit`: what a gradient monitor or a rebalancing method may do per step.

Per optimisation step `fit` runs: forward and loss -> backward -> ``after_backward`` (true gradients,
before clipping; under fp16 they are unscaled first) -> gradient clipping -> ``after_clip`` (optional:
clipped gradients just before the optimizer step, e.g. OGM-GE's Gaussian noise, Peng et al., 2022) ->
optimizer step -> ``step_record``.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn


class TrainHook(Protocol):
    """Called by `fit` around each optimisation step (gradient monitors, rebalancing).

    Optional methods: ``after_clip(model, batch, output, step)`` (same arguments as ``after_backward``,
    called after clipping, before the optimizer step); ``state_dict() -> dict`` (tensors and JSON values)
    and ``load_state_dict(state)``, which `fit` stores in ``last/`` so resuming restores the hook.
    """

    def after_backward(self, model: nn.Module, batch: Any, output: Any, step: int) -> None:
        """Gradients are in ``.grad``; may inspect or rescale them before clipping and the step."""
        ...

    def step_record(self) -> dict[str, float]:
        """Values to add to this step's metrics record (may be empty)."""
        ...

    def messages(self) -> list[str]:
        """One-line warnings for the user collected so far (e.g. modality dominance)."""
        ...


def run_after_clip(hooks: list[TrainHook], model: nn.Module, batch: Any, output: Any, step: int) -> None:
    """Call ``after_clip`` on the hooks that define it."""
    for hook in hooks:
        after_clip = getattr(hook, "after_clip", None)
        if after_clip is not None:
            after_clip(model, batch, output, step)
