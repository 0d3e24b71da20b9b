"""Cached vs uncached generation: tokens per second of the captioner's greedy and beam decoding.

A 128x128 image with 8x8 patches gives 256 patch features; the decoder writes 64 tokens per
report (EOS ignored, so every run has the same length). Without a cache every step re-runs the
decoder over the whole prefix and re-projects the 256 patches into keys/values in every layer;
with the cache the patches are projected once per image and each step feeds one token. Both must
produce the same tokens; the script checks it and prints a table (median of ``--repeats`` runs).
Weights are random: the cost of a step does not depend on them.

    .venv/bin/python benchmarks/decode.py [--batch 8] [--layers 2] [--dim 128] [--repeats 3]
    .venv/bin/python benchmarks/decode.py --device cuda   # bf16 autocast (unmeasured so far)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import torch

from crossfuse.models.captioner import Captioner, CaptionerConfig
from crossfuse.models.decoding import beam_search, greedy_decode

TOKENS = 64


def timed(fn, repeats: int, device: torch.device | None = None):
    """Median wall time of ``repeats`` calls (after one warm-up) and the last output."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    out = fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images decoded together")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (the encoder has 2)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--beam", type=int, default=3, help="beam size of the beam-search rows (0: skip them)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (float32) or cuda (bf16 autocast)")
    args = parser.parse_args()
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device: expected 'cpu' or an available 'cuda', got {args.device!r}")
    device = torch.device(args.device)
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    torch.manual_seed(0)
    config = CaptionerConfig(
        vocab_size=64,
        image_size=128,
        patch_size=8,
        dim=args.dim,
        encoder_layers=2,
        decoder_layers=args.layers,
        num_heads=args.heads,
        max_len=TOKENS + 1,
    )
    model = Captioner(config).eval().to(device)
    images = torch.rand(args.batch, 1, 128, 128, device=device)
    patches = model.encoder.num_patches
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# decode benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}, "
        f"load average {load:.1f}"
    )
    print(
        f"# {args.batch} images x {patches} patches, dim {args.dim}, {args.layers} decoder layers, "
        f"{TOKENS} tokens each (EOS ignored), median of {args.repeats}"
    )

    with torch.no_grad(), precision:
        t_encode, memory = timed(lambda: model.encode(images), args.repeats, device)

    def greedy(use_cache: bool):
        return greedy_decode(model, images, TOKENS, use_cache=use_cache, ignore_eos=True, memory=memory)

    def beam(use_cache: bool):
        return beam_search(model, images, args.beam, TOKENS, use_cache=use_cache, memory=memory)

    rows = []
    modes = [("greedy", greedy, 1)] + ([(f"beam {args.beam}", beam, args.beam)] if args.beam > 1 else [])
    for name, decode, hypotheses in modes:
        if hypotheses > 1:  # beam search stops once `beam` hypotheses end: keep them all open to 64 tokens
            model.head.bias.data[config.eos_id] = -1e4
        with precision:
            t_cached, cached = timed(lambda decode=decode: decode(True), args.repeats, device)
            t_plain, plain = timed(lambda decode=decode: decode(False), args.repeats, device)
        same = cached.tokens == plain.tokens and all(len(t) == TOKENS for t in cached.tokens)
        rows.append((name, t_plain, t_cached, args.batch * hypotheses * TOKENS, same))

    print()
    print(f"encoder (shared by both, not in the table): {t_encode * 1000:.0f} ms for {args.batch} images\n")
    print("| decoding | uncached tok/s | cached tok/s | speed-up | end to end, with encoder | identical tokens |")
    print("|---|---:|---:|---:|---:|---|")
    for name, t_plain, t_cached, tokens, same in rows:
        speed = f"{tokens / t_plain:,.0f} | {tokens / t_cached:,.0f} | {t_plain / t_cached:.1f}x"
        end_to_end = f"{(t_plain + t_encode) / (t_cached + t_encode):.1f}x"
        print(f"| {name} | {speed} | {end_to_end} | {'yes' if same else 'NO'} |")
    print("\n(tok/s counts every hypothesis's tokens; target: cached >= 5x uncached with identical output)")


if __name__ == "__main__":
    main()
