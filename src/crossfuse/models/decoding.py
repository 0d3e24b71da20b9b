"""Greedy and beam-search generation for the `Captioner`, with or without KV caches.

With ``use_cache=True`` each image's memory is projected into cross-attention keys/values once
(``KVCache(static=True)``) and each step feeds only the newest token, appending its
self-attention keys/values; without a cache every step re-runs the decoder over the whole
prefix. Both give the same tokens; the cache makes a step cost O(T) instead of O(T^2) and skips
re-projecting the N patches (see ``benchmarks/decode.py``).

Beam search keeps ``k`` hypotheses per image, ranks the 2k best continuations by summed
log-probability, and moves a hypothesis that emits EOS to a finished list scored with the
length penalty ``sum log p / |Y|^alpha`` (|Y| counts EOS; Wu et al., 2016 use a smoothed variant).
An image is done once it has ``k`` finished hypotheses (early stopping as in fairseq and Hugging
Face); hypotheses still open at ``max_len`` are scored as they are. Beam 1 is greedy decoding.

Shapes: images: (B, C, H, W)  ->  `Generation`: tokens: B lists of ids (no BOS/EOS),
attention: B tensors (T_i, L, H, M), the cross-attention of the step that produced each token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from crossfuse.blocks import AttentionLayers
from crossfuse.models.captioner import Captioner, DecoderCache


@dataclass
class Generation:
    """Generated token ids per image, their scores and (on request) cross-attention per token.

    Shapes: tokens: B lists of T_i ids (without BOS and EOS)  scores: (B,) (greedy: summed
    log-probability, EOS included; beam: length-penalised)  attention: B tensors (T_i, L, H, M) or None,
    L = the decoder layers selected by ``return_attention`` (True = all).
    """

    tokens: list[list[int]]
    scores: Tensor
    attention: list[Tensor] | None = None

    def mean_attention(self, i: int) -> Tensor:
        """Image ``i``'s attention averaged over layers and heads. Shapes: -> (T_i, M)."""
        if self.attention is None:
            raise ValueError("attention: generate with return_attention=True to get attention weights")
        return self.attention[i].mean(dim=(1, 2))


def _step(
    model: Captioner, tokens: Tensor, memory: Tensor, cache: DecoderCache | None, return_attention: AttentionLayers
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities of the next token (B, V) and that step's cross-attention (B, L, H, M) or None."""
    inputs = tokens[:, -1:] if cache is not None else tokens
    logits, attention = model.decode(inputs, memory, cache, return_attention)
    logits = logits[:, -1].float()
    # BOS and PAD are never generated.
    logits[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
    weights = None if not attention else torch.stack([a[:, :, -1] for a in attention], dim=1)
    return logits.log_softmax(dim=-1), weights


def _check(model: Captioner, images: Tensor, max_len: int | None) -> int:
    model.check_inputs(images)
    limit = model.config.max_len if max_len is None else max_len
    if not 1 <= limit <= model.config.max_len:
        raise ValueError(f"max_len: expected 1..{model.config.max_len} (the model's max_len), got {max_len}")
    return limit


@torch.no_grad()
def greedy_decode(
    model: Captioner,
    images: Tensor,
    max_len: int | None = None,
    use_cache: bool = True,
    return_attention: AttentionLayers = False,
    ignore_eos: bool = False,
    memory: Tensor | None = None,
) -> Generation:
    """Pick the most likely token at every step until EOS (or ``max_len`` tokens).

    ``ignore_eos=True`` always generates ``max_len`` tokens (for benchmarks); ``memory`` is
    ``model.encode(images)`` if already computed.
    Shapes: images: (B, C, H, W)  memory: (B, M, D) or None -> Generation with B entries.
    """
    max_len = _check(model, images, max_len)
    cfg = model.config
    memory = model.encode(images) if memory is None else memory
    batch = images.shape[0]
    tokens = torch.full((batch, 1), cfg.bos_id, dtype=torch.long, device=images.device)
    cache = model.new_cache() if use_cache else None
    finished = torch.zeros(batch, dtype=torch.bool, device=images.device)
    lengths = torch.full((batch,), max_len, dtype=torch.long)
    scores = torch.zeros(batch, device=images.device)
    steps = []
    for step in range(max_len):
        log_probs, weights = _step(model, tokens, memory, cache, return_attention)
        best = log_probs.argmax(dim=-1)
        scores += torch.where(finished, 0.0, log_probs.gather(1, best[:, None])[:, 0])
        best = torch.where(finished, cfg.pad_id, best)
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        if weights is not None:
            steps.append(weights)
        if not ignore_eos:
            newly = (best == cfg.eos_id) & ~finished
            lengths[newly.cpu()] = step
            finished |= newly
            if bool(finished.all()):
                break
    out = [tokens[i, 1 : 1 + int(lengths[i])].tolist() for i in range(batch)]
    attention = None
    if steps:
        stacked = torch.stack(steps, dim=1)  # (B, steps, L, H, M)
        attention = [stacked[i, : len(out[i])] for i in range(batch)]
    return Generation(out, scores, attention)


@torch.no_grad()
def beam_search(
    model: Captioner,
    images: Tensor,
    beam_size: int = 3,
    max_len: int | None = None,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    return_attention: AttentionLayers = False,
    memory: Tensor | None = None,
) -> Generation:
    """Keep the ``beam_size`` best hypotheses per image; return the best by length-penalised score.

    ``memory`` is ``model.encode(images)`` if already computed.
    Shapes: images: (B, C, H, W)  memory: (B, M, D) or None -> Generation with B entries (the best of each).
    """
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size: expected an int >= 1, got {beam_size!r}")
    max_len = _check(model, images, max_len)
    cfg = model.config
    batch, k = images.shape[0], beam_size
    device = images.device
    memory = (model.encode(images) if memory is None else memory).repeat_interleave(k, dim=0)  # (B*k, M, D)
    tokens = torch.full((batch * k, 1), cfg.bos_id, dtype=torch.long, device=device)
    cache = model.new_cache() if use_cache else None
    beam_scores = torch.full((batch, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: only one may expand
    history: Tensor | None = None  # (B*k, steps, L, H, M)
    finished: list[list[tuple[float, list[int], Tensor | None]]] = [[] for _ in range(batch)]
    done = [False] * batch

    def penalised(score: float, length: int) -> float:
        return score / (length**length_penalty)

    for step in range(max_len):
        log_probs, weights = _step(model, tokens, memory, cache, return_attention)
        vocab = log_probs.shape[-1]
        if weights is not None:
            history = weights[:, None] if history is None else torch.cat([history, weights[:, None]], dim=1)
        candidates = (beam_scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)
        top_scores, top_index = top_scores.cpu(), top_index.cpu()
        rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            chosen: list[tuple[int, int, float]] = []
            for rank in range(top_index.shape[1]):
                score = float(top_scores[b, rank])
                source = b * k + int(top_index[b, rank]) // vocab
                token = int(top_index[b, rank]) % vocab
                if done[b] or score == float("-inf"):
                    break
                if token == cfg.eos_id:
                    if rank < k:  # only an EOS among the k best counts (as in Hugging Face)
                        path = tokens[source, 1:].tolist()
                        att = None if history is None else history[source, :-1].clone()
                        finished[b].append((penalised(score, step + 1), path, att))
                    continue
                chosen.append((source, token, score))
                if len(chosen) == k:
                    break
            while len(chosen) < k:  # a done image (or too few candidates): dead rows
                chosen.append((b * k, cfg.pad_id, float("-inf")))
            for source, token, score in chosen:
                rows.append(source)
                next_tokens.append(token)
                next_scores.append(score)
            done[b] = done[b] or len(finished[b]) >= k
        if all(done):
            break
        index = torch.tensor(rows, device=device)
        tokens = torch.cat([tokens[index], torch.tensor(next_tokens, device=device)[:, None]], dim=1)
        beam_scores = torch.tensor(next_scores, device=device).view(batch, k)
        if cache is not None:
            cache.reorder(index)
        if history is not None:
            history = history[index]
    else:  # max_len reached: open hypotheses compete as they are
        for b in range(batch):
            if done[b]:
                continue
            for j in range(k):
                row = b * k + j
                score = float(beam_scores[b, j])
                if score > float("-inf"):
                    att = None if history is None else history[row].clone()
                    finished[b].append((penalised(score, max_len), tokens[row, 1:].tolist(), att))
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    scores = torch.tensor([h[0] for h in best])
    attention = [h[2] for h in best] if return_attention else None
    return Generation([h[1] for h in best], scores, attention)
