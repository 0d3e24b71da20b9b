"""Devices and numeric precision: ``device="auto"``, autocast contexts, and the fp16 gradient scaler.

- ``fp32``: plain float32.
- ``bf16``: `torch.autocast` to bfloat16 (same exponent range as float32: no scaler needed).
- ``fp16``: `torch.autocast` to float16 with a `torch.amp.GradScaler` (Micikevicius et al., 2018,
  "Mixed Precision Training"), which scales the loss so small gradients survive and skips steps whose
  gradients overflowed.

Weights, optimizer state and checkpoints stay float32 in every mode; only the forward's matmuls run
in the low precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_device(device: str) -> None:
    """ValueError naming ``device`` unless it is "auto", "cpu", "mps", "cuda" or "cuda:N"."""
    kind, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device: expected one of {list(DEVICE_KINDS)} or 'cuda:N', got {device!r}")


def resolve_device(device: str) -> torch.device:
    """The torch device for ``device``: "auto" picks CUDA when available, else CPU.

    ValueError naming the device when CUDA/MPS is asked for but this machine has none.
    """
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but torch finds no CUDA GPU here; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} asked for, but there are {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {device!r} asked for, but MPS is not available here; use 'cpu' or 'auto'")
    return resolved


def check_precision(precision: str) -> None:
    """ValueError naming ``precision`` unless it is one of `PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """`torch.autocast` to ``precision`` on ``device``'s type; nothing for "fp32"."""
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for "fp16" only (elsewhere its calls pass through unchanged)."""
    check_precision(precision)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
