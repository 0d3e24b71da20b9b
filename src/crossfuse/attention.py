"""Multi-head cross-attention: the one attention primitive of crossfuse.

Queries come from one stream, keys and values from another (Vaswani et al., 2017):
``softmax(Q K^T / sqrt(d_head)) V``. Self-attention is the special case ``context = query``.
The fast path calls ``torch.nn.functional.scaled_dot_product_attention`` and never builds an
``Nq x Nk`` matrix unless a mask forces one; ``return_attention=True`` computes the same math
explicitly and also returns the weights.

Masks follow one convention everywhere: boolean, ``True = attend / valid``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossfuse.validation import check_tensor


@dataclass
class KVCache:
    """Projected keys/values of one attention layer, kept between decoding steps.

    ``static=True`` holds a fixed context (cross-attention into image patches): the context is
    projected on the first call and reused afterwards. ``static=False`` appends the keys/values
    of each call (causal self-attention over the tokens generated so far).

    Shapes: key, value: (B, H, Nk, d_head)  mask: (B, Nk) bool, True = attend, or None.
    """

    static: bool = False
    key: Tensor | None = None
    value: Tensor | None = None
    mask: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached key positions (0 when empty)."""
        return 0 if self.key is None else self.key.shape[2]

    def reset(self) -> None:
        """Forget the cached keys, values and mask (start a new sequence; ``static`` is kept)."""
        self.key = self.value = self.mask = None

    def reorder(self, index: Tensor) -> None:
        """Select batch rows in place, e.g. the surviving hypotheses of a beam search.

        Shapes: index: (B',) long  ->  cache holds B' rows.
        """
        if self.key is None:
            return
        self.key = self.key.index_select(0, index)
        self.value = self.value.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)

    def update(self, key: Tensor, value: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store (static) or append (incremental) new keys/values; return everything cached."""
        if self.static or self.key is None:
            self.key, self.value, self.mask = key, value, mask
            return key, value, mask
        if self.mask is not None or mask is not None:
            old = self.mask if self.mask is not None else _all_true(self.key)
            new = mask if mask is not None else _all_true(key)
            self.mask = torch.cat([old, new], dim=1)
        self.key = torch.cat([self.key, key], dim=2)
        self.value = torch.cat([self.value, value], dim=2)
        return self.key, self.value, self.mask


def _all_true(key: Tensor) -> Tensor:
    return torch.ones(key.shape[0], key.shape[2], dtype=torch.bool, device=key.device)


class CrossAttention(nn.Module):
    """Multi-head attention whose queries come from ``query`` and keys/values from ``context``.

    Args:
        query_dim: feature size Dq of the query stream.
        context_dim: feature size Dk of the context stream (= query_dim for self-attention).
        num_heads: number of heads H.
        head_dim: size of each head; default ``query_dim // num_heads``.
        dropout: dropout on the attention weights during training.
        bias: whether the projections have biases.
        out_dim: output feature size; default ``query_dim``.

    Shapes:
        query: (B, Nq, Dq)  context: (B, Nk, Dk) or None (self-attention, Nk = Nq)
        context_mask: (B, Nk) bool, True = attend  attn_mask: (B or 1, Nq, Nk) bool, True = attend
        ->  output: (B, Nq, out_dim), and with ``return_attention`` weights: (B, H, Nq, Nk)

    A query row with no key to attend returns exactly zeros (and zero gradients), not NaN.
    ``causal=True`` lets query i see keys j <= i + (Nk - Nq), i.e. queries are the last Nq
    positions of the key sequence (as when decoding with a cache).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("query_dim", query_dim), ("context_dim", context_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}: expected an integer >= 1, got {value!r}")
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1):
            raise ValueError(f"head_dim: expected an integer >= 1 or None, got {head_dim!r}")
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if head_dim is None:
            if query_dim % num_heads:
                raise ValueError(
                    f"num_heads: query_dim={query_dim} is not divisible by num_heads={num_heads}; "
                    "pass head_dim explicitly"
                )
            head_dim = query_dim // num_heads
        self.query_dim, self.context_dim = query_dim, context_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.out_dim = query_dim if out_dim is None else out_dim
        self.dropout = dropout
        inner = num_heads * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim, inner, bias=bias)
        self.to_out = nn.Linear(inner, self.out_dim, bias=bias)

    def forward(
        self,
        query: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        return_attention: bool = False,
        cache: KVCache | None = None,
        causal: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``query`` to ``context`` (to ``query`` itself when ``context`` is None).

        Shapes:
            query: (B, Nq, Dq)  context: (B, Nk, Dk) or None  context_mask: (B, Nk) bool, True = attend
            attn_mask: (B or 1, Nq, Nk) bool, True = attend
            ->  output: (B, Nq, out_dim), or (output, weights: (B, H, Nq, Nk)) with ``return_attention``.
        ``cache`` appends (or, when static, reuses) projected keys/values; ``causal`` as in the class.
        """
        self._validate(query, context, context_mask, attn_mask, cache)
        batch, n_query, _ = query.shape
        q = self._split_heads(self.to_q(query))
        k, v, context_mask = self._keys_values(query, context, context_mask, cache)
        mask = _combine_masks(context_mask, attn_mask, causal, n_query, k.shape[2], q.device, explicit=return_attention)
        # Rows with no key to attend would be 0/0 in the softmax: give them every key so
        # the kernel stays finite, then zero their output (and so their gradient) below.
        valid_rows = None
        if mask is not None:
            valid_rows = mask.any(dim=-1, keepdim=True)  # (B|1, 1, Nq|1, 1)
            mask = mask | ~valid_rows
        elif k.shape[2] == 0:  # an empty context: no row has a key (the output would be to_out's bias)
            valid_rows = torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=q.device)
        dropout_p = self.dropout if self.training else 0.0
        if return_attention:
            weights = attention_weights(q, k, mask, valid_rows)
            heads = (F.dropout(weights, dropout_p, self.training) if dropout_p else weights) @ v
        else:
            use_causal_flag = causal and mask is None
            heads = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=use_causal_flag
            )
        out = self.to_out(heads.transpose(1, 2).reshape(batch, n_query, self.num_heads * self.head_dim))
        if valid_rows is not None:
            out = out.masked_fill(~valid_rows[:, 0], 0.0)  # (B|1, Nq|1, 1) broadcasts over D
        if return_attention:
            # The tensor the output was computed from (no new view when shapes agree), so callers can
            # take gradients with respect to the weights (gradient-weighted attention maps).
            same = weights.shape[0] == batch and weights.shape[2] == n_query
            return out, weights if same else weights.expand(batch, -1, n_query, -1)
        return out

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _keys_values(
        self, query: Tensor, context: Tensor | None, context_mask: Tensor | None, cache: KVCache | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        if cache is not None and cache.static and cache.key is not None:
            return cache.key, cache.value, cache.mask
        source = query if context is None else context
        if context_mask is not None:  # padding may hold anything (NaN, inf): 0 * NaN would leak through the weights
            source = source.masked_fill(~context_mask[:, :, None], 0.0)
        k, v = self._split_heads(self.to_k(source)), self._split_heads(self.to_v(source))
        if cache is None:
            return k, v, context_mask
        return cache.update(k, v, context_mask)

    def _validate(
        self,
        query: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
        attn_mask: Tensor | None,
        cache: KVCache | None,
    ) -> None:
        sizes: dict[str, int] = {}
        check_tensor("query", query, ("B", "Nq", self.query_dim), sizes, dtype="float")
        weight = self.to_q.weight
        if query.dtype != weight.dtype and not torch.is_autocast_enabled(query.device.type):
            raise ValueError(
                f"query: expected dtype {weight.dtype} (the module's parameters), got {query.dtype}; "
                "call .to(dtype) on the module or the input, or run under torch.autocast"
            )
        reuse_static = cache is not None and cache.static and cache.key is not None
        if context is None and not reuse_static and self.context_dim != self.query_dim:
            raise ValueError(
                f"context: required because context_dim={self.context_dim} differs from "
                f"query_dim={self.query_dim} (self-attention needs equal sizes)"
            )
        if context is not None and not reuse_static:
            check_tensor("context", context, ("B", "Nk", self.context_dim), sizes, dtype="float")
            if context.dtype != query.dtype and not torch.is_autocast_enabled(query.device.type):
                raise ValueError(
                    f"context: expected dtype {query.dtype} (the query's), got {context.dtype}; "
                    "cast one of them or run under torch.autocast"
                )
        elif reuse_static:
            if context is not None:
                raise ValueError(
                    "context: the static cache already holds a projected context and would ignore this one; "
                    "pass context=None to reuse it, or call cache.reset() first"
                )
            sizes["Nk"] = cache.length
            if cache.key.shape[0] != sizes["B"]:
                raise ValueError(
                    f"cache: holds a context for batch size {cache.key.shape[0]}, query has B={sizes['B']}"
                )
        else:
            sizes["Nk"] = sizes["Nq"]
        if cache is not None and not cache.static and cache.key is not None:
            if cache.key.shape[0] != sizes["B"]:
                raise ValueError(
                    f"cache: holds keys for batch size {cache.key.shape[0]}, query has B={sizes['B']} "
                    "(call cache.reorder(index) to select rows)"
                )
            sizes["Nk_total"] = cache.length + sizes["Nk"]
        if context_mask is not None:
            if reuse_static:
                raise ValueError("context_mask: the cache already holds the context's mask; pass None")
            check_tensor("context_mask", context_mask, ("B", "Nk"), sizes, dtype="bool")
        if attn_mask is not None:
            n_keys = sizes.get("Nk_total", sizes["Nk"])
            keys = f"Nk={n_keys}" if "Nk_total" not in sizes else f"Nk={n_keys} (cached {cache.length} + new)"
            expected = f"(B={sizes['B']} or 1, Nq={sizes['Nq']}, {keys})"
            if (
                isinstance(attn_mask, Tensor)
                and attn_mask.dim() == 3
                and (attn_mask.shape[0] not in (1, sizes["B"]) or attn_mask.shape[1:] != (sizes["Nq"], n_keys))
            ):
                raise ValueError(f"attn_mask: expected shape {expected}, got {tuple(attn_mask.shape)}")
            check_tensor("attn_mask", attn_mask, (None, sizes["Nq"], n_keys), dtype="bool")  # rank, type, dtype


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, valid_rows: Tensor | None = None) -> Tensor:
    """Attention weights ``softmax(q k^T / sqrt(d_head))`` with masked keys at 0.

    Shapes:
        q: (B, H, Nq, dh)  k: (B, H, Nk, dh)  mask: (B|1, 1|H, Nq|1, Nk) bool, True = attend, or None
        valid_rows: (B|1, 1, Nq|1, 1) bool, False = the row has no key (its weights are set to 0)
        ->  weights: (B, H, Nq, Nk)

    The same math as MHA's ``need_weights=True`` path, at its speed: the scale is folded into ``q``
    (Nq x dh, not Nq x Nk multiplications), the scores are the one (B, H, Nq, Nk) buffer, masked and
    soft-maxed in place when no gradient is needed. Rows of ``mask`` must have a True somewhere (the
    caller gives fully masked rows every key and passes ``valid_rows``), so no row is 0/0.
    Under ``torch.compile``/``torch.export`` plain out-of-place ops are used (no in-place tracing).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    batch, heads, n_query, dh = q.shape
    n_key = k.shape[2]
    plain = torch.compiler.is_compiling()
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    if plain:
        scores = (q * scale) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if valid_rows is not None:
            weights = weights.masked_fill(~valid_rows, 0.0)
        return weights
    # One (B*H, Nq, Nk) buffer from the pre-scaled queries. A key-padding mask (no Nq axis) becomes an
    # additive (B*H, 1, Nk) bias of baddbmm, as in MHA: nothing to mask in place, nothing to undo in backward.
    q3 = (q * scale).reshape(batch * heads, n_query, dh)
    k3 = k.reshape(batch * heads, n_key, dh).transpose(1, 2)
    if mask is not None and mask.shape[2] == 1:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        scores = torch.baddbmm(bias.expand(batch, heads, 1, n_key).reshape(batch * heads, 1, n_key), q3, k3)
        scores = scores.view(batch, heads, n_query, n_key)
    else:
        scores = torch.bmm(q3, k3).view(batch, heads, n_query, n_key)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))  # safe under autograd: bmm does not save its output
    if needs_grad:
        weights = scores.softmax(dim=-1)  # softmax saves its output for backward: no in-place after it
        if valid_rows is not None and not bool(valid_rows.all()):
            weights = weights.masked_fill(~valid_rows, 0.0)
        return weights
    torch.softmax(scores, dim=-1, out=scores)
    if valid_rows is not None:
        scores.masked_fill_(~valid_rows, 0.0)
    return scores


def _combine_masks(
    context_mask: Tensor | None,
    attn_mask: Tensor | None,
    causal: bool,
    n_query: int,
    n_key: int,
    device: torch.device,
    explicit: bool = False,
) -> Tensor | None:
    """Merge key-padding, per-query and causal masks into one (B|1, 1, Nq|1, Nk) bool mask.

    Returns None when nothing is masked and causality can be left to SDPA's ``is_causal``
    (square case, ``explicit=False``), so no Nq x Nk matrix is built.
    """
    mask = None
    if context_mask is not None:
        mask = context_mask[:, None, None, :]
    if attn_mask is not None:
        mask = attn_mask[:, None] if mask is None else mask & attn_mask[:, None]
    if causal and (explicit or mask is not None or n_query != n_key):
        offset = n_key - n_query
        rows = torch.arange(n_query, device=device)[:, None] + offset
        allowed = torch.arange(n_key, device=device)[None, :] <= rows  # (Nq, Nk)
        mask = allowed[None, None] if mask is None else mask & allowed
    return mask
