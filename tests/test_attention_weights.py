"""Tests of `crossfuse.attention.attention_weights` (the fast weights path) and `CrossAttention`'s input checks.

The reference is the textbook math: ``softmax((q k^T) / sqrt(dh))`` with masked keys at -inf, computed
out of place in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from crossfuse.attention import CrossAttention, KVCache, attention_weights


def reference(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return weights if valid is None else weights.masked_fill(~valid, 0.0)


def inputs(grad: bool, per_query: bool = True) -> tuple[torch.Tensor, ...]:
    """q, k, a mask per query (or per key only: the padding case) with one fully masked row, valid rows."""
    torch.manual_seed(0)
    q = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=grad)
    k = torch.randn(3, 2, 7, 4, dtype=torch.float64, requires_grad=grad)
    keep = torch.rand(3, 1, 5 if per_query else 1, 7) > 0.4
    if per_query:
        keep[1, :, 2] = False  # a fully masked row
    else:
        keep[1] = False  # every key of batch row 1 is padding: all its query rows are fully masked
    valid = keep.any(-1, keepdim=True)
    return q, k, keep | ~valid, valid


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("compiling", [False, True])
@pytest.mark.parametrize("per_query", [True, False])
def test_weights_match_the_textbook_math_and_its_gradient(
    grad: bool, compiling: bool, per_query: bool, monkeypatch
) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)  # the plain-ops path
    q, k, mask, valid = inputs(grad, per_query)
    got = attention_weights(q, k, mask, valid)
    want = reference(q, k, mask, valid)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[1, :, 2], torch.zeros_like(got[1, :, 2]))
    if grad:
        upstream = torch.randn_like(got)
        torch.testing.assert_close(
            torch.autograd.grad(got, (q, k), upstream), torch.autograd.grad(want, (q, k), upstream)
        )


def test_weights_without_mask_sum_to_one() -> None:
    q, k, _, _ = inputs(False)
    weights = attention_weights(q, k)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 5, dtype=torch.float64))


def test_no_grad_path_returns_the_one_scores_buffer() -> None:
    q, k, mask, valid = inputs(False)
    with torch.no_grad():
        weights = attention_weights(q, k, mask, valid)
    assert weights.is_contiguous() and weights.shape == (3, 2, 5, 7)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4)])
@pytest.mark.parametrize("weights", [False, True])
def test_empty_batch_or_empty_query_works(shape: tuple[int, int, int], weights: bool) -> None:
    attn = CrossAttention(8, 6, 2)
    batch, n_query, n_key = shape
    mask = torch.ones(batch, n_key, dtype=torch.bool)
    result = attn(
        torch.randn(batch, n_query, 8), torch.randn(batch, n_key, 6), context_mask=mask, return_attention=weights
    )
    out = result[0] if weights else result
    assert out.shape == (batch, n_query, 8)
    if weights:
        assert result[1].shape == (batch, 2, n_query, n_key)


def test_dtype_mismatch_names_the_argument_and_autocast_is_allowed() -> None:
    attn = CrossAttention(8, 6, 2)
    with pytest.raises(ValueError, match=r"query: expected dtype torch.float32 .*got torch.float64"):
        attn(torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match=r"context: expected dtype torch.float32 .*got torch.float64"):
        attn(torch.randn(2, 3, 8), torch.randn(2, 4, 6, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(torch.randn(2, 3, 8), torch.randn(2, 4, 6, dtype=torch.bfloat16))
    assert out.shape == (2, 3, 8)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_heads": 0}, "num_heads"),
        ({"head_dim": 0}, "head_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"query_dim": 0}, "query_dim"),
    ],
)
def test_constructor_arguments_are_checked(kwargs: dict, argument: str) -> None:
    args = {"query_dim": 8, "context_dim": 8, "num_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        CrossAttention(**args)


def test_cache_reset_starts_a_new_sequence() -> None:
    attn, cache = CrossAttention(8, 8, 2), KVCache()
    attn(torch.randn(2, 4, 8), cache=cache)
    cache.reset()
    assert cache.length == 0 and cache.mask is None
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(attn(x, cache=cache, causal=True), attn(x, causal=True))


@pytest.mark.parametrize("weights", [False, True])
def test_nan_in_padded_keys_does_not_leak(weights: bool) -> None:
    attn = CrossAttention(8, 6, 2)
    context = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    poisoned = context.clone()
    poisoned[0, 3:] = float("nan")
    query = torch.randn(2, 3, 8)
    clean = attn(query, context, context_mask=mask, return_attention=weights)
    dirty = attn(query, poisoned, context_mask=mask, return_attention=weights)
    torch.testing.assert_close(dirty, clean)


def test_a_filled_static_cache_refuses_another_context_until_reset() -> None:
    attn = CrossAttention(8, 8, 2).eval()
    cache, query = KVCache(static=True), torch.randn(1, 1, 8)
    first, second = torch.randn(1, 5, 8), torch.randn(1, 7, 8)
    attn(query, first, cache=cache)
    with pytest.raises(ValueError, match=r"context: the static cache already holds"):
        attn(query, second, cache=cache)  # would silently attend over ``first``
    reused = attn(query, None, cache=cache)
    torch.testing.assert_close(reused, attn(query, first))
    cache.reset()
    torch.testing.assert_close(attn(query, second, cache=cache), attn(query, second))
