"""Tests of `crossfuse.validation.check_tensor`: shapes with shared symbolic sizes, dtypes, messages."""

from __future__ import annotations

import pytest
import torch

from crossfuse.validation import check_tensor, describe


def test_describe_renders_names_ints_and_wildcards() -> None:
    assert describe(("B", None, 8)) == "(B, *, 8)"
    assert describe(()) == "()"


def test_returns_the_tensor_and_records_symbolic_sizes() -> None:
    sizes: dict[str, int] = {}
    x = torch.zeros(2, 3, 8)
    assert check_tensor("x", x, ("B", "N", 8), sizes) is x
    assert sizes == {"B": 2, "N": 3}


def test_symbolic_size_is_shared_between_arguments() -> None:
    sizes: dict[str, int] = {}
    check_tensor("query", torch.zeros(2, 3, 8), ("B", "Nq", 8), sizes)
    check_tensor("context", torch.zeros(2, 5, 4), ("B", "Nk", 4), sizes)  # same B: fine
    with pytest.raises(ValueError) as info:
        check_tensor("mask", torch.zeros(4, 5, dtype=torch.bool), ("B", "Nk"), sizes)
    message = str(info.value)
    assert message.startswith("mask: ")
    assert "(B=2, Nk=5)" in message and "(4, 5)" in message and "dimension 0 is 4, expected 2" in message


def test_wildcard_accepts_any_size() -> None:
    for n in (0, 1, 7):
        check_tensor("x", torch.zeros(n, 3), (None, 3))


def test_fixed_size_mismatch_names_argument_and_both_shapes() -> None:
    with pytest.raises(
        ValueError, match=r"x: expected shape \(B=2, 8\), got \(2, 9\) \(dimension 1 is 9, expected 8\)"
    ):
        check_tensor("x", torch.zeros(2, 9), ("B", 8))


def test_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"x: expected a 3-d tensor of shape \(B, N, 8\), got shape \(2, 8\) \(2-d\)"):
        check_tensor("x", torch.zeros(2, 8), ("B", "N", 8))


def test_rank_is_checked_before_sizes_are_recorded() -> None:
    sizes: dict[str, int] = {}
    with pytest.raises(ValueError):
        check_tensor("x", torch.zeros(2, 8), ("B", "N", 8), sizes)
    assert sizes == {}


@pytest.mark.parametrize("value", [[1.0, 2.0], 3.0, None, "tensor"])
def test_not_a_tensor(value: object) -> None:
    with pytest.raises(ValueError) as info:
        check_tensor("x", value, ("B", 2))
    assert str(info.value) == f"x: expected a torch.Tensor of shape (B, 2), got {type(value).__name__}"


def test_dtype_checks() -> None:
    check_tensor("m", torch.ones(2, dtype=torch.bool), (2,), dtype="bool")
    check_tensor("f", torch.ones(2, dtype=torch.float16), (2,), dtype="float")
    check_tensor("i", torch.ones(2, dtype=torch.int32), (2,), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"m: expected dtype torch.bool .* of shape \(2\), got torch.uint8 of shape"):
        check_tensor("m", torch.ones(2, dtype=torch.uint8), (2,), dtype="bool")
    with pytest.raises(ValueError, match=r"f: expected a floating-point tensor of shape \(2\), got torch.int64"):
        check_tensor("f", torch.ones(2, dtype=torch.long), (2,), dtype="float")
    with pytest.raises(
        ValueError, match=r"i: expected dtype torch.int32 of shape \(2\), got torch.int64 of shape \(2,\)"
    ):
        check_tensor("i", torch.ones(2, dtype=torch.long), (2,), dtype=torch.int32)
