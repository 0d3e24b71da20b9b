"""Shape and type checks for tensors that cross a public boundary.

Errors are `ValueError`s that name the argument and give the expected and the actual
shape or dtype, so a user can fix the call without reading the source.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Dim = int | str | None
"""One expected dimension: an int must match, a str names a size shared between
arguments (resolved on first sight), None accepts anything."""


def describe(spec: Sequence[Dim]) -> str:
    """Render an expected shape such as ``(B, Nk)`` or ``(B, 5, D)``."""
    return "(" + ", ".join("*" if d is None else str(d) for d in spec) + ")"


def check_tensor(
    name: str,
    value: object,
    spec: Sequence[Dim],
    sizes: dict[str, int] | None = None,
    dtype: torch.dtype | str | None = None,
) -> Tensor:
    """Check that ``value`` is a tensor with shape ``spec``; return it.

    ``sizes`` maps symbolic names to sizes already seen (it is updated in place), so
    ``check_tensor("context", c, ("B", None, 8), sizes)`` after the query fixed ``B``
    also checks the batch size. ``dtype`` is a dtype, ``"float"`` or ``"bool"``.
    """
    sizes = {} if sizes is None else sizes
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {describe(spec)}, got {type(value).__name__}")
    if value.dim() != len(spec):
        raise ValueError(
            f"{name}: expected a {len(spec)}-d tensor of shape {describe(spec)}, "
            f"got shape {tuple(value.shape)} ({value.dim()}-d)"
        )
    got = f"got {value.dtype} of shape {tuple(value.shape)}"
    if dtype == "bool" and value.dtype != torch.bool:
        raise ValueError(f"{name}: expected dtype torch.bool (True = attend/valid) of shape {describe(spec)}, {got}")
    if dtype == "float" and not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor of shape {describe(spec)}, {got}")
    if isinstance(dtype, torch.dtype) and value.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} of shape {describe(spec)}, {got}")
    for axis, (want, got) in enumerate(zip(spec, value.shape, strict=True)):
        if isinstance(want, str):
            want = sizes.setdefault(want, got)
        if want is not None and want != got:
            named = [f"{s}={sizes[s]}" if isinstance(s, str) and s in sizes else describe([s])[1:-1] for s in spec]
            raise ValueError(
                f"{name}: expected shape ({', '.join(named)}), got {tuple(value.shape)} "
                f"(dimension {axis} is {got}, expected {want})"
            )
    return value
