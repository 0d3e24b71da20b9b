"""Tests of `crossfuse.attention`: reference equivalence with `nn.MultiheadAttention`, properties, cache, errors.

Everything runs in float64 so the comparisons can use tight tolerances: a wrong scale, a swapped
projection or a mask applied on the wrong side shows up as a mismatch far above rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from crossfuse.attention import CrossAttention, KVCache

DTYPE = torch.float64
PROPERTY = settings(max_examples=30, deadline=None)


# ----------------------------------------------------------------------------------------------
# reference: torch.nn.MultiheadAttention with the same weights
# ----------------------------------------------------------------------------------------------


def mha_projections(mha: nn.MultiheadAttention) -> dict[str, Tensor]:
    """MHA's parameters under CrossAttention's names (views, so ``.grad`` can be read the same way)."""
    if mha._qkv_same_embed_dim:  # kdim = vdim = embed_dim: one packed (3E, E) matrix
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    return {
        "to_q.weight": wq,
        "to_k.weight": wk,
        "to_v.weight": wv,
        "to_q.bias": bq,
        "to_k.bias": bk,
        "to_v.bias": bv,
        "to_out.weight": mha.out_proj.weight,
        "to_out.bias": mha.out_proj.bias,
    }


def mha_grads(mha: nn.MultiheadAttention) -> dict[str, Tensor]:
    """Gradients of MHA's parameters, split like `mha_projections`."""
    if mha._qkv_same_embed_dim:
        gq, gk, gv = mha.in_proj_weight.grad.chunk(3)
    else:
        gq, gk, gv = mha.q_proj_weight.grad, mha.k_proj_weight.grad, mha.v_proj_weight.grad
    bq, bk, bv = mha.in_proj_bias.grad.chunk(3)
    return {
        "to_q.weight": gq,
        "to_k.weight": gk,
        "to_v.weight": gv,
        "to_q.bias": bq,
        "to_k.bias": bk,
        "to_v.bias": bv,
        "to_out.weight": mha.out_proj.weight.grad,
        "to_out.bias": mha.out_proj.bias.grad,
    }


def mha_pair(query_dim: int, context_dim: int, num_heads: int, seed: int = 0):
    """An `nn.MultiheadAttention` and a `CrossAttention` holding the same (random) weights."""
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(query_dim, num_heads, batch_first=True, kdim=context_dim, vdim=context_dim).to(DTYPE)
    with torch.no_grad():  # MHA starts its biases at 0; random biases make a bias mix-up visible
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    attn = CrossAttention(query_dim, context_dim, num_heads).to(DTYPE)
    params = dict(attn.named_parameters())
    with torch.no_grad():
        for name, value in mha_projections(mha).items():
            params[name].copy_(value)
    return mha, attn


def to_mha_masks(context_mask: Tensor | None, attn_mask: Tensor | None, num_heads: int):
    """Our masks (True = attend) -> MHA's (True = NOT attend); attn_mask (B, Nq, Nk) -> (B*H, Nq, Nk)."""
    key_padding_mask = None if context_mask is None else ~context_mask
    if attn_mask is None:
        return key_padding_mask, None
    if attn_mask.shape[0] == 1:
        return key_padding_mask, ~attn_mask[0]  # (Nq, Nk), shared by every batch row and head
    return key_padding_mask, (~attn_mask).repeat_interleave(num_heads, dim=0)  # row b*H + h


def random_masks(case: str, batch: int, n_query: int, n_key: int, gen: torch.Generator):
    """Masks for the MHA comparison; every query keeps at least one key (MHA returns NaN otherwise)."""
    context_mask = torch.rand(batch, n_key, generator=gen) > 0.4
    attn_mask = torch.rand(batch, n_query, n_key, generator=gen) > 0.4
    keep = torch.randint(n_key, (batch,), generator=gen)
    context_mask[torch.arange(batch), keep] = True
    attn_mask[torch.arange(batch), :, keep] = True
    if case == "none":
        return None, None
    if case == "key_padding":
        return context_mask, None
    if case == "attn_mask":
        return None, attn_mask
    if case == "attn_mask_shared":
        return None, attn_mask[:1]
    return context_mask, attn_mask


MASK_CASES = ["none", "key_padding", "attn_mask", "attn_mask_shared", "both"]


@pytest.mark.parametrize("weights", [False, True], ids=["sdpa", "return_attention"])
@pytest.mark.parametrize("self_attention", [False, True], ids=["cross", "self"])
@pytest.mark.parametrize("case", MASK_CASES)
def test_matches_multihead_attention(case: str, self_attention: bool, weights: bool) -> None:
    batch, n_query, n_key, query_dim, context_dim, heads = 3, 5, 7, 16, 12, 4
    if self_attention:
        n_key, context_dim = n_query, query_dim
    mha, attn = mha_pair(query_dim, context_dim, heads)
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(batch, n_query, query_dim, dtype=DTYPE, generator=gen, requires_grad=True)
    context = query if self_attention else torch.randn(batch, n_key, context_dim, dtype=DTYPE, generator=gen)
    context.requires_grad_(True)
    context_mask, attn_mask = random_masks(case, batch, n_query, n_key, gen)
    key_padding_mask, mha_attn_mask = to_mha_masks(context_mask, attn_mask, heads)

    result = attn(
        query,
        None if self_attention else context,
        context_mask=context_mask,
        attn_mask=attn_mask,
        return_attention=weights,
    )
    expected, expected_weights = mha(
        query,
        context,
        context,
        key_padding_mask=key_padding_mask,
        attn_mask=mha_attn_mask,
        need_weights=weights,
        average_attn_weights=False,
    )
    out, got_weights = result if weights else (result, None)
    torch.testing.assert_close(out, expected)

    grad_out = torch.randn(out.shape, dtype=DTYPE, generator=gen)
    loss, ref_loss = (out * grad_out).sum(), (expected * grad_out).sum()
    if weights:
        torch.testing.assert_close(got_weights, expected_weights)
        grad_w = torch.randn(got_weights.shape, dtype=DTYPE, generator=gen)
        loss, ref_loss = loss + (got_weights * grad_w).sum(), ref_loss + (expected_weights * grad_w).sum()
    inputs = [query] if self_attention else [query, context]
    ours = torch.autograd.grad(loss, inputs + list(attn.parameters()))
    theirs = torch.autograd.grad(ref_loss, inputs + [p for p in mha.parameters()])
    for got, want in zip(ours[: len(inputs)], theirs[: len(inputs)], strict=True):
        torch.testing.assert_close(got, want)
    # parameter gradients: store MHA's, then read them under our names (its packed matrix split in three)
    for p, g in zip(mha.parameters(), theirs[len(inputs) :], strict=True):
        p.grad = g
    reference = mha_grads(mha)
    for (name, _), got in zip(attn.named_parameters(), ours[len(inputs) :], strict=True):
        torch.testing.assert_close(got, reference[name], msg=lambda m, name=name: f"{name}: {m}")


def test_fully_masked_batch_row_is_zero_where_multihead_attention_is_nan() -> None:
    """The motivating difference: MHA (torch 2.13) gives NaN where every key is masked; we give zeros."""
    mha, attn = mha_pair(8, 8, 2)
    x = torch.randn(2, 4, 8, dtype=DTYPE)
    context_mask = torch.tensor([[True] * 4, [False] * 4])
    expected, _ = mha(x, x, x, key_padding_mask=~context_mask)
    out = attn(x, context_mask=context_mask)
    torch.testing.assert_close(out[0], expected[0])
    assert torch.equal(out[1], torch.zeros_like(out[1]))


# ----------------------------------------------------------------------------------------------
# properties over random shapes and masks
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One random attention problem; `build` returns the module and inputs (float64)."""

    batch: int
    n_query: int
    n_key: int
    heads: int
    head_dim: int
    query_dim: int
    context_dim: int
    context_mask: Tensor | None
    attn_mask: Tensor | None
    seed: int

    def build(self, requires_grad: bool = False) -> tuple[CrossAttention, Tensor, Tensor]:
        torch.manual_seed(self.seed)
        attn = CrossAttention(self.query_dim, self.context_dim, self.heads, head_dim=self.head_dim).to(DTYPE)
        query = torch.randn(self.batch, self.n_query, self.query_dim, dtype=DTYPE, requires_grad=requires_grad)
        context = torch.randn(self.batch, self.n_key, self.context_dim, dtype=DTYPE, requires_grad=requires_grad)
        return attn, query, context

    def allowed(self) -> Tensor:
        """The combined mask (B, Nq, Nk), True = attend."""
        mask = torch.ones(self.batch, self.n_query, self.n_key, dtype=torch.bool)
        if self.context_mask is not None:
            mask = mask & self.context_mask[:, None, :]
        if self.attn_mask is not None:
            mask = mask & self.attn_mask
        return mask


def bool_tensors(shape: tuple[int, ...]) -> st.SearchStrategy[Tensor]:
    size = 1
    for s in shape:
        size *= s
    return st.lists(st.booleans(), min_size=size, max_size=size).map(lambda v: torch.tensor(v).view(shape))


@st.composite
def cases(draw: st.DrawFn, dead_rows: bool = False) -> Case:
    """Random small shapes and masks; ``dead_rows=True`` forces at least one fully masked query row."""
    batch, n_query, n_key = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    context_mask = draw(st.none() | bool_tensors((batch, n_key)))
    mask_batch = draw(st.sampled_from([1, batch]))
    attn_mask = draw(st.none() | bool_tensors((mask_batch, n_query, n_key)))
    if dead_rows:
        dead = draw(bool_tensors((mask_batch, n_query)).filter(lambda d: bool(d.any())))
        base = torch.ones(mask_batch, n_query, n_key, dtype=torch.bool) if attn_mask is None else attn_mask
        attn_mask = base & ~dead[..., None]
    return Case(
        batch=batch,
        n_query=n_query,
        n_key=n_key,
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 4)),
        query_dim=draw(st.integers(1, 6)),
        context_dim=draw(st.integers(1, 6)),
        context_mask=context_mask,
        attn_mask=attn_mask,
        seed=draw(st.integers(0, 2**16)),
    )


@PROPERTY
@given(case=cases())
def test_weights_sum_to_one_over_attended_keys_and_are_zero_on_masked(case: Case) -> None:
    attn, query, context = case.build()
    out, weights = attn(query, context, case.context_mask, case.attn_mask, return_attention=True)
    assert weights.shape == (case.batch, case.heads, case.n_query, case.n_key)
    allowed = case.allowed()[:, None].expand_as(weights)
    assert torch.all(weights[~allowed] == 0)  # exactly 0, not just small
    live = allowed.any(dim=-1)
    sums = weights.sum(dim=-1)
    torch.testing.assert_close(sums[live], torch.ones_like(sums[live]))
    assert torch.all(sums[~live] == 0)
    assert torch.all(out[~case.allowed().any(dim=-1)] == 0)


@PROPERTY
@given(case=cases(), data=st.data())
def test_permuting_keys_and_values_together_leaves_output_unchanged(case: Case, data: st.DataObject) -> None:
    perm = torch.tensor(data.draw(st.permutations(range(case.n_key))), dtype=torch.long)
    attn, query, context = case.build()
    out, weights = attn(query, context, case.context_mask, case.attn_mask, return_attention=True)
    out_p, weights_p = attn(
        query,
        context[:, perm],
        None if case.context_mask is None else case.context_mask[:, perm],
        None if case.attn_mask is None else case.attn_mask[..., perm],
        return_attention=True,
    )
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(weights_p, weights[..., perm])
    fast_p = attn(
        query,
        context[:, perm],
        None if case.context_mask is None else case.context_mask[:, perm],
        None if case.attn_mask is None else case.attn_mask[..., perm],
    )
    torch.testing.assert_close(fast_p, out)


@PROPERTY
@given(case=cases(), data=st.data())
def test_each_query_row_depends_only_on_its_own_query(case: Case, data: st.DataObject) -> None:
    row = data.draw(st.integers(0, case.n_query - 1))
    attn, query, context = case.build()
    out = attn(query, context, case.context_mask, case.attn_mask)
    moved = query.clone()
    moved[:, row] += 3.0 * torch.randn(case.batch, case.query_dim, dtype=DTYPE)
    out_moved = attn(moved, context, case.context_mask, case.attn_mask)
    others = [i for i in range(case.n_query) if i != row]
    torch.testing.assert_close(out_moved[:, others], out[:, others])


@PROPERTY
@given(case=cases(dead_rows=True), weights=st.booleans())
def test_fully_masked_rows_give_exact_zeros_and_zero_gradients(case: Case, weights: bool) -> None:
    attn, query, context = case.build(requires_grad=True)
    result = attn(query, context, case.context_mask, case.attn_mask, return_attention=weights)
    out = result[0] if weights else result
    dead = ~case.allowed().any(dim=-1)  # (B, Nq)
    assert dead.any()
    assert torch.equal(out[dead], torch.zeros_like(out[dead]))
    if weights:
        assert torch.all(result[1].permute(0, 2, 1, 3)[dead] == 0)
    # gradient of everything is finite ...
    inputs = [query, context, *attn.parameters()]
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), inputs, retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    # ... and what flows back from the dead rows alone is exactly zero
    grads = torch.autograd.grad(out[dead].sum(), inputs, allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in grads)


@PROPERTY
@given(case=cases(), causal=st.booleans())
def test_sdpa_path_equals_return_attention_path(case: Case, causal: bool) -> None:
    attn, query, context = case.build(requires_grad=True)
    fast = attn(query, context, case.context_mask, case.attn_mask, causal=causal)
    slow, _ = attn(query, context, case.context_mask, case.attn_mask, causal=causal, return_attention=True)
    torch.testing.assert_close(fast, slow)
    grad_out = torch.randn_like(fast)
    inputs = [query, context, *attn.parameters()]
    for got, want in zip(
        torch.autograd.grad((fast * grad_out).sum(), inputs),
        torch.autograd.grad((slow * grad_out).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("kwargs", "expected_mask", "is_causal"),
    [
        ({}, None, False),
        ({"causal": True}, None, True),  # square causal: SDPA's flag, no (Nq, Nk) mask
        ({"context_mask": torch.ones(2, 6, dtype=torch.bool)}, (2, 1, 1, 6), False),  # one row per batch
    ],
    ids=["no_mask", "causal", "padding"],
)
def test_sdpa_path_builds_no_query_by_key_mask(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, expected_mask: tuple | None, is_causal: bool
) -> None:
    """Memory stays linear in Nq (the benchmark measures it): only padding masks of size (B, 1, 1, Nk) reach SDPA."""
    seen: list[tuple[tuple | None, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, **rest: object) -> Tensor:
        seen.append((None if attn_mask is None else tuple(attn_mask.shape), bool(rest.get("is_causal"))))
        return sdpa(q, k, v, attn_mask=attn_mask, **rest)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    CrossAttention(8, 8, 2)(torch.randn(2, 6, 8), **kwargs)
    assert seen == [(expected_mask, is_causal)]


# ----------------------------------------------------------------------------------------------
# causal masking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [False, True], ids=["sdpa", "return_attention"])
@pytest.mark.parametrize("with_padding", [False, True], ids=["plain", "padded"])
@pytest.mark.parametrize(("n_query", "n_key"), [(6, 6), (3, 7), (7, 4)])
def test_causal_equals_lower_triangular_attn_mask(n_query: int, n_key: int, with_padding: bool, weights: bool) -> None:
    torch.manual_seed(0)
    attn = CrossAttention(8, 8, 2).to(DTYPE)
    query, context = torch.randn(2, n_query, 8, dtype=DTYPE), torch.randn(2, n_key, 8, dtype=DTYPE)
    context_mask = torch.rand(2, n_key) > 0.3 if with_padding else None
    # query i is position i + (Nk - Nq) of the key sequence: it sees keys j <= i + Nk - Nq
    tril = torch.ones(n_query, n_key, dtype=torch.bool).tril(diagonal=n_key - n_query)[None]
    got = attn(query, context, context_mask, causal=True, return_attention=weights)
    want = attn(query, context, context_mask, attn_mask=tril, return_attention=weights)
    for g, w in zip(got if weights else [got], want if weights else [want], strict=True):
        torch.testing.assert_close(g, w)
    if n_query == n_key and not with_padding:  # self-attention: SDPA's is_causal flag, no mask built
        torch.testing.assert_close(attn(query, causal=True), attn(query, attn_mask=tril))


def test_causal_first_query_sees_only_first_key() -> None:
    """Analytic check: with causal square attention, output row 0 is to_out(v_0)."""
    torch.manual_seed(0)
    attn = CrossAttention(8, 8, 2).to(DTYPE)
    x = torch.randn(1, 5, 8, dtype=DTYPE)
    out = attn(x, causal=True)
    torch.testing.assert_close(out[:, 0], attn.to_out(attn.to_v(x[:, 0])))


# ----------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------


def call_counter(module: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("weights", [False, True], ids=["sdpa", "return_attention"])
def test_static_cross_cache_projects_context_once_and_matches_full(weights: bool) -> None:
    torch.manual_seed(0)
    steps, batch = 20, 3
    attn = CrossAttention(16, 12, 4).to(DTYPE).eval()
    tokens = torch.randn(batch, steps, 16, dtype=DTYPE)
    context = torch.randn(batch, 9, 12, dtype=DTYPE)
    context_mask = torch.ones(batch, 9, dtype=torch.bool)
    context_mask[1, 6:] = False  # a padded image
    k_calls, v_calls = call_counter(attn.to_k), call_counter(attn.to_v)
    cache = KVCache(static=True)
    outs, step_weights = [], []
    for t in range(steps):
        first = t == 0
        result = attn(
            tokens[:, t : t + 1],
            context if first else None,
            context_mask if first else None,
            cache=cache,
            return_attention=weights,
        )
        out, w = result if weights else (result, None)
        outs.append(out)
        step_weights.append(w)
    assert k_calls == [1] and v_calls == [1]
    assert cache.length == 9
    full = attn(tokens, context, context_mask, return_attention=weights)
    torch.testing.assert_close(torch.cat(outs, dim=1), full[0] if weights else full)
    if weights:
        torch.testing.assert_close(torch.cat(step_weights, dim=2), full[1])


@pytest.mark.parametrize("chunks", [[1] * 20, [5] + [1] * 15, [7, 6, 7]], ids=["1x20", "prefill5", "chunks"])
def test_incremental_self_cache_matches_full_causal(chunks: list[int]) -> None:
    torch.manual_seed(0)
    batch, steps = 2, sum(chunks)
    attn = CrossAttention(16, 16, 4).to(DTYPE).eval()
    x = torch.randn(batch, steps, 16, dtype=DTYPE)
    padding = torch.ones(batch, steps, dtype=torch.bool)
    padding[1, :3] = False  # left padding of the second sequence, inside the first chunk
    cache, outs, start = KVCache(), [], 0
    for n in chunks:
        mask = padding[:, start : start + n]
        mask = None if mask.all() else mask  # chunks past the padding pass no mask: the cache fills in True
        outs.append(attn(x[:, start : start + n], context_mask=mask, causal=True, cache=cache))
        start += n
    assert cache.length == steps
    full = attn(x, context_mask=padding, causal=True)
    torch.testing.assert_close(torch.cat(outs, dim=1), full)


def test_incremental_self_cache_return_attention_matches_full() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(8, 8, 2).to(DTYPE)
    x = torch.randn(2, 20, 8, dtype=DTYPE)
    cache = KVCache()
    rows = [attn(x[:, t : t + 1], causal=True, cache=cache, return_attention=True)[1] for t in range(20)]
    _, full = attn(x, causal=True, return_attention=True)
    for t, w in enumerate(rows):
        torch.testing.assert_close(w[..., 0, :], full[..., t, : t + 1])


def test_reorder_selects_beams_for_self_and_cross_caches() -> None:
    torch.manual_seed(0)
    batch, steps, split = 2, 20, 8
    self_attn = CrossAttention(8, 8, 2).to(DTYPE)
    cross_attn = CrossAttention(8, 6, 2).to(DTYPE)
    x = torch.randn(batch, steps, 8, dtype=DTYPE)
    context = torch.randn(batch, 5, 6, dtype=DTYPE)
    context_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    self_cache, cross_cache = KVCache(), KVCache(static=True)

    def step(tokens: Tensor, ctx: Tensor | None, ctx_mask: Tensor | None) -> Tensor:
        h = tokens + self_attn(tokens, causal=True, cache=self_cache)
        return cross_attn(h, ctx, ctx_mask, cache=cross_cache)

    for t in range(split):
        step(x[:, t : t + 1], context if t == 0 else None, context_mask if t == 0 else None)
    beams = torch.tensor([1, 0, 1])  # three hypotheses: two continue row 1, one continues row 0
    self_cache.reorder(beams)
    cross_cache.reorder(beams)
    xb = x[beams]
    outs = [step(xb[:, t : t + 1], None, None) for t in range(split, steps)]
    full = cross_attn(xb + self_attn(xb, causal=True), context[beams], context_mask[beams])
    torch.testing.assert_close(torch.cat(outs, dim=1), full[:, split:])


def test_cache_with_wrong_batch_size_is_rejected() -> None:
    attn = CrossAttention(8, 8, 2)
    cache = KVCache()
    attn(torch.randn(3, 1, 8), cache=cache)
    with pytest.raises(ValueError, match=r"cache: holds keys for batch size 3, query has B=2"):
        attn(torch.randn(2, 1, 8), cache=cache)


def test_empty_context_gives_zeros() -> None:
    attn = CrossAttention(8, 8, 2)  # biases are random, so a missing zeroing would show to_out's bias
    query = torch.randn(2, 3, 8, requires_grad=True)
    for weights in (False, True):
        result = attn(query, torch.randn(2, 0, 8), return_attention=weights)
        out = result[0] if weights else result
        assert torch.equal(out, torch.zeros(2, 3, 8))
        (grad,) = torch.autograd.grad(out.sum(), query)
        assert torch.equal(grad, torch.zeros_like(query))


# ----------------------------------------------------------------------------------------------
# error messages
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def attn() -> CrossAttention:
    return CrossAttention(16, 12, 4)


def raises(attn: CrossAttention, *fragments: str, **kwargs: object) -> None:
    args = {"query": torch.randn(2, 3, 16), "context": torch.randn(2, 5, 12), **kwargs}
    with pytest.raises(ValueError) as info:
        attn(**args)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_error_wrong_rank(attn: CrossAttention) -> None:
    raises(attn, "query:", "(B, Nq, 16)", "(3, 16)", query=torch.randn(3, 16))
    raises(attn, "context:", "(B, Nk, 12)", "(2, 1, 5, 12)", context=torch.randn(2, 1, 5, 12))


def test_error_mismatched_batch(attn: CrossAttention) -> None:
    raises(attn, "context:", "B=2", "(4, 5, 12)", context=torch.randn(4, 5, 12))


def test_error_wrong_feature_size(attn: CrossAttention) -> None:
    raises(attn, "query:", "(B=2, Nq=3, 16)", "(2, 3, 15)", query=torch.randn(2, 3, 15))
    raises(attn, "context:", "(B=2, Nk=5, 12)", "(2, 5, 16)", context=torch.randn(2, 5, 16))


def test_error_context_required_when_dims_differ(attn: CrossAttention) -> None:
    raises(attn, "context:", "context_dim=12", "query_dim=16", context=None)


def test_error_wrong_context_mask_shape(attn: CrossAttention) -> None:
    raises(attn, "context_mask:", "(B=2, Nk=5)", "(2, 4)", context_mask=torch.ones(2, 4, dtype=torch.bool))
    raises(attn, "context_mask:", "(B=2, Nk=5)", "(1, 5)", context_mask=torch.ones(1, 5, dtype=torch.bool))


def test_error_wrong_mask_dtype(attn: CrossAttention) -> None:
    raises(attn, "context_mask:", "torch.bool", "torch.float32", "(2, 5)", context_mask=torch.ones(2, 5))
    raises(attn, "attn_mask:", "torch.bool", "torch.int64", attn_mask=torch.ones(2, 3, 5, dtype=torch.long))


def test_error_wrong_query_dtype(attn: CrossAttention) -> None:
    raises(attn, "query:", "floating-point", "torch.int64", "(2, 3, 16)", query=torch.ones(2, 3, 16, dtype=torch.long))


def test_error_wrong_attn_mask_shape(attn: CrossAttention) -> None:
    expected = "(B=2 or 1, Nq=3, Nk=5)"
    raises(attn, "attn_mask:", expected, "(2, 3, 4)", attn_mask=torch.ones(2, 3, 4, dtype=torch.bool))
    raises(attn, "attn_mask:", expected, "(3, 3, 5)", attn_mask=torch.ones(3, 3, 5, dtype=torch.bool))
    raises(attn, "attn_mask:", "(*, 3, 5)", "(3, 5)", attn_mask=torch.ones(3, 5, dtype=torch.bool))


def test_error_attn_mask_must_cover_cached_keys() -> None:
    attn, cache = CrossAttention(8, 8, 2), KVCache()
    attn(torch.randn(2, 4, 8), cache=cache)
    with pytest.raises(ValueError, match=r"attn_mask: expected shape \(B=2 or 1, Nq=1, Nk=5 \(cached 4"):
        attn(torch.randn(2, 1, 8), attn_mask=torch.ones(2, 1, 1, dtype=torch.bool), cache=cache)


def test_error_not_a_tensor(attn: CrossAttention) -> None:
    raises(attn, "query:", "torch.Tensor", "(B, Nq, 16)", "list", query=[[0.0] * 16])
    raises(attn, "context_mask:", "torch.Tensor", "(B, Nk)", "list", context_mask=[[True] * 5] * 2)


def test_error_mask_with_reused_static_cache() -> None:
    attn, cache = CrossAttention(8, 8, 2), KVCache(static=True)
    attn(torch.randn(2, 1, 8), torch.randn(2, 5, 8), cache=cache)
    with pytest.raises(ValueError, match="context_mask: the cache already holds"):
        attn(torch.randn(2, 1, 8), context_mask=torch.ones(2, 5, dtype=torch.bool), cache=cache)
    with pytest.raises(ValueError, match="cache: holds a context for batch size 2, query has B=3"):
        attn(torch.randn(3, 1, 8), cache=cache)


def test_error_heads_do_not_divide_dim() -> None:
    with pytest.raises(ValueError, match="num_heads: query_dim=10 is not divisible by num_heads=4"):
        CrossAttention(10, 10, 4)
