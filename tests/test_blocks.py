"""Tests of `crossfuse.blocks`: gates at init, co-attention by hand, cached decoding, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from crossfuse.attention import CrossAttention, KVCache
from crossfuse.blocks import (
    BidirectionalCrossAttentionBlock,
    CrossAttentionBlock,
    GatedCrossAttentionBlock,
    SelfAttentionBlock,
    run_blocks,
    select_layers,
)

DTYPE = torch.float64


def attention_by_hand(attn: CrossAttention, query: Tensor, context: Tensor, context_mask: Tensor | None) -> Tensor:
    """Plain-math multi-head attention with ``attn``'s weights (Vaswani et al., 2017, eq. 1)."""
    heads, dh = attn.num_heads, attn.head_dim
    q = attn.to_q(query).unflatten(-1, (heads, dh)).transpose(1, 2)  # (B, H, Nq, dh)
    k = attn.to_k(context).unflatten(-1, (heads, dh)).transpose(1, 2)
    v = attn.to_v(context).unflatten(-1, (heads, dh)).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if context_mask is not None:
        scores = scores.masked_fill(~context_mask[:, None, None, :], float("-inf"))
    heads_out = scores.softmax(-1) @ v  # (B, H, Nq, dh)
    return attn.to_out(heads_out.transpose(1, 2).flatten(2))


def test_gated_block_is_identity_at_initialisation() -> None:
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(16, 12, 4).to(DTYPE)
    x, context = torch.randn(2, 5, 16, dtype=DTYPE), torch.randn(2, 7, 12, dtype=DTYPE)
    context_mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    assert torch.equal(block(x, context, context_mask).x, x)  # exactly, not approximately
    out, weights = block(x, context, context_mask, return_attention=True)
    assert torch.equal(out, x) and weights.shape == (2, 4, 5, 7)
    assert block(x, context, context_mask).weights is None

    with torch.no_grad():  # open the attention gate only: the update is tanh(alpha) * attention
        block.alpha_attn.fill_(0.5)
    expected = x + math.tanh(0.5) * attention_by_hand(
        block.cross, block.norm_cross(x), block.norm_context(context), context_mask
    )
    torch.testing.assert_close(block(x, context, context_mask).x, expected)
    with torch.no_grad():
        block.alpha_mlp.fill_(-0.3)
    assert not torch.allclose(block(x, context, context_mask).x, expected)


def test_gated_block_gates_receive_gradient_at_initialisation() -> None:
    """At alpha = 0 the block is the identity, but d out / d alpha = attention update != 0, so it can learn."""
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(8, 8, 2).to(DTYPE)
    x, context = torch.randn(2, 3, 8, dtype=DTYPE), torch.randn(2, 4, 8, dtype=DTYPE)
    block(x, context).x.sum().backward()
    update = block.cross(block.norm_cross(x), block.norm_context(context))
    torch.testing.assert_close(block.alpha_attn.grad, update.sum().reshape(1))  # tanh'(0) = 1
    assert block.cross.to_q.weight.grad.abs().sum() == 0  # gated off: no gradient reaches the attention yet


def test_bidirectional_block_equals_two_cross_attention_calls_by_hand() -> None:
    torch.manual_seed(0)
    block = BidirectionalCrossAttentionBlock(16, 12, 4).to(DTYPE)
    a, b = torch.randn(2, 5, 16, dtype=DTYPE), torch.randn(2, 7, 12, dtype=DTYPE)
    a_mask = torch.tensor([[True] * 5, [True] * 4 + [False]])
    b_mask = torch.tensor([[True] * 7, [True] * 2 + [False] * 5])
    new_a, new_b, a_to_b, b_to_a = block(a, b, a_mask, b_mask, return_attention=True)

    na, nb = block.norm_a(a), block.norm_b(b)  # both directions read the layer's inputs
    ref_a = a + attention_by_hand(block.a_to_b, na, nb, b_mask)
    ref_b = b + attention_by_hand(block.b_to_a, nb, na, a_mask)
    ref_a = ref_a + block.mlp_a(block.norm_mlp_a(ref_a))
    ref_b = ref_b + block.mlp_b(block.norm_mlp_b(ref_b))
    torch.testing.assert_close(new_a, ref_a)
    torch.testing.assert_close(new_b, ref_b)
    assert not torch.allclose(new_a, a) and not torch.allclose(new_b, b)  # both streams updated
    assert a_to_b.shape == (2, 4, 5, 7) and b_to_a.shape == (2, 4, 7, 5)
    assert torch.all(a_to_b[1, ..., 2:] == 0) and torch.all(b_to_a[1, ..., 4] == 0)
    torch.testing.assert_close(tuple(block(a, b, a_mask, b_mask)), (new_a, new_b, None, None))


@pytest.mark.parametrize("self_attention", [True, False], ids=["decoder", "cross_only"])
def test_cross_attention_block_with_caches_equals_without(self_attention: bool) -> None:
    torch.manual_seed(0)
    steps = 10
    block = CrossAttentionBlock(16, 12, 4, self_attention=self_attention).to(DTYPE).eval()
    x, context = torch.randn(3, steps, 16, dtype=DTYPE), torch.randn(3, 6, 12, dtype=DTYPE)
    context_mask = torch.ones(3, 6, dtype=torch.bool)
    context_mask[2, 4:] = False
    full = block(x, context, context_mask=context_mask, causal=True).x

    self_cache, cross_cache = KVCache(), KVCache(static=True)
    projections = [0]
    block.cross.to_k.register_forward_hook(lambda *_: projections.__setitem__(0, projections[0] + 1))
    outs = []
    for t in range(steps):
        first = t == 0
        outs.append(
            block(
                x[:, t : t + 1],
                context if first else None,
                context_mask=context_mask if first else None,
                causal=True,
                self_cache=self_cache,
                cross_cache=cross_cache,
            ).x
        )
    torch.testing.assert_close(torch.cat(outs, dim=1), full)
    assert projections == [1]  # the context is projected on the first step only
    assert self_cache.length == (steps if self_attention else 0)


def test_self_attention_block_with_cache_equals_without() -> None:
    torch.manual_seed(0)
    block = SelfAttentionBlock(8, 2).to(DTYPE)
    x = torch.randn(2, 10, 8, dtype=DTYPE)
    cache = KVCache()
    outs = [block(x[:, t : t + 1], causal=True, cache=cache).x for t in range(10)]
    torch.testing.assert_close(torch.cat(outs, dim=1), block(x, causal=True).x)


@pytest.mark.parametrize(
    ("query_dim", "context_dim", "heads", "head_dim", "out_dim", "bias"),
    [
        (16, 16, 4, None, None, True),
        (16, 12, 4, None, None, True),
        (16, 12, 4, 8, None, True),
        (16, 12, 3, 5, 10, True),
        (16, 12, 3, 5, 10, False),
        (512, 768, 8, 64, None, True),
    ],
)
def test_cross_attention_parameter_count_matches_formula(
    query_dim: int, context_dim: int, heads: int, head_dim: int | None, out_dim: int | None, bias: bool
) -> None:
    attn = CrossAttention(query_dim, context_dim, heads, head_dim=head_dim, out_dim=out_dim, bias=bias)
    inner = heads * (query_dim // heads if head_dim is None else head_dim)  # HD
    d_out = query_dim if out_dim is None else out_dim
    # Q from the query stream, K and V from the context stream, then the output projection
    expected = query_dim * inner + 2 * context_dim * inner + inner * d_out
    if bias:
        expected += 3 * inner + d_out
    assert sum(p.numel() for p in attn.parameters()) == expected


# ----------------------------------------------------------------------------- layer selection


@pytest.mark.parametrize(
    ("which", "true_means", "expected"),
    [
        (False, "last", set()),
        (True, "last", {3}),
        (True, "all", {0, 1, 2, 3}),
        ("last", "all", {3}),
        ("all", "last", {0, 1, 2, 3}),
        ([0, -1], "last", {0, 3}),
        ((), "last", set()),
        ({1}, "last", {1}),
    ],
)
def test_select_layers(which, true_means: str, expected: set[int]) -> None:
    assert select_layers(which, 4, true_means) == expected
    if not isinstance(which, list | set):
        assert select_layers(which, 0, true_means) == set()  # an empty stack has no weights to give


@pytest.mark.parametrize("which", ["first", [4], [-5], [1.0], [True], 3])
def test_select_layers_rejects_bad_requests(which) -> None:
    with pytest.raises(ValueError, match="return_attention"):
        select_layers(which, 4)


def test_run_blocks_all_returns_each_layers_own_weights() -> None:
    torch.manual_seed(0)
    blocks = nn.ModuleList(SelfAttentionBlock(8, 2) for _ in range(3)).to(DTYPE)
    x = torch.randn(2, 5, 8, dtype=DTYPE)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = run_blocks(blocks, x, select_layers("all", 3), mask=mask)
    h, expected = x, {}
    for i, block in enumerate(blocks):  # each layer called on its own, weights on
        h, expected[i] = block(h, mask, return_attention=True)
    torch.testing.assert_close(out.x, h)
    assert out.weights.keys() == expected.keys()
    for i in expected:
        torch.testing.assert_close(out.weights[i], expected[i])
    only_middle = run_blocks(blocks, x, select_layers([1], 3), mask=mask)
    assert list(only_middle.weights) == [1]
    torch.testing.assert_close(only_middle.weights[1], expected[1])
    torch.testing.assert_close(only_middle.x, h)  # the fast path on the other layers gives the same stream


def test_unselected_layers_skip_the_weights_path() -> None:
    """Only the selected layers ask `CrossAttention` for weights: a heatmap does not slow every layer."""
    blocks = nn.ModuleList(SelfAttentionBlock(8, 2) for _ in range(4))
    asked = []
    for i, block in enumerate(blocks):
        block.attn.register_forward_pre_hook(
            lambda _m, args, kwargs, i=i: asked.append((i, kwargs["return_attention"])), with_kwargs=True
        )
    run_blocks(blocks, torch.randn(1, 3, 8), select_layers("last", 4))
    assert asked == [(0, False), (1, False), (2, False), (3, True)]
