"""Benchmark the fusion strategies: training throughput and size vs sequence length, and the cost of co-attention.

1. For every registered strategy and sequence length N (two modalities, N tokens each, D_m = 32,
   FusionConfig(dim=64) defaults otherwise): parameter count and training throughput in samples/s
   of one step = forward + cross-entropy + backward + AdamW step at batch 32.
2. Bidirectional cross-attention: the two CrossAttention calls of a BidirectionalCrossAttentionBlock
   (a_to_b and b_to_a) at (B, Na, Nb) = (8, 256, 1024), D = 512, H = 8, against ONE direction
   (a_to_b alone), as a ratio of the fastest of several interleaved repeats in the same run; forward
   (no grad) and forward + backward. Each direction is its own SDPA kernel, so the expected ratio
   is ~2x (both directions compute Na x Nb scores).

3. ``--tables fit``: per strategy, samples/s of `crossfuse.train.fit` against a plain hand-written
   PyTorch loop (shuffle, forward, cross-entropy, backward, clip, AdamW step, ``loss.item()``) on the same
   model, data (``FIT_ROWS`` rows, N = ``FIT_LENGTH`` tokens per modality) and settings (batch 32, no
   validation, no run directory), timed interleaved (fit, loop, fit, loop, ...), median of the repeats.
   Target: fit / loop >= 0.9 (fit within 10% of the loop).

Prints markdown tables. Times are wall-clock on whatever device runs it, or with ``--clock cpu`` the CPU
time of a single thread (use that on a busy shared machine: other processes then barely change it); never
asserted on.

    .venv/bin/python benchmarks/fusion.py            # lengths 16, 64, 256, 1024
    .venv/bin/python benchmarks/fusion.py --quick    # lengths 16, 64, 256, fewer repeats
    .venv/bin/python benchmarks/fusion.py --clock cpu  # one thread, CPU time
    .venv/bin/python benchmarks/fusion.py --tables fit --clock cpu  # fit vs a plain loop
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from crossfuse.blocks import BidirectionalCrossAttentionBlock
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FUSIONS, FusionConfig, ModalitySpec, build_fusion
from crossfuse.train import TrainConfig, fit

BATCH = 32
FEATURES = 32
NUM_CLASSES = 2
FIT_ROWS, FIT_LENGTH, FIT_EPOCHS = 256, 64, 2
TABLES = ("throughput", "bidirectional", "fit")


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (SDPA's flash / memory-efficient kernels), nothing on CPU (float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_throughput(
    name: str, length: int, device: torch.device, min_time: float, min_steps: int, clock: Callable[[], float]
) -> tuple[int, float | None]:
    """(parameter count, samples/s) of AdamW training steps at batch `BATCH`; samples/s None if it fails."""
    specs = {"a": ModalitySpec(FEATURES, length), "b": ModalitySpec(FEATURES, length)}
    torch.manual_seed(0)
    model = build_fusion(name, specs, NUM_CLASSES, FusionConfig(dim=64)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = {k: torch.randn(BATCH, length, FEATURES, device=device) for k in specs}
    y = torch.randint(0, NUM_CLASSES, (BATCH,), device=device)

    def step() -> None:
        with precision(device):
            loss = F.cross_entropy(model(inputs).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        step()  # warm-up: allocations, kernel selection, AdamW state
        sync(device)
        per_step = []
        start = clock()
        while len(per_step) < min_steps or clock() - start < min_time:
            t0 = clock()
            step()
            sync(device)
            per_step.append(clock() - t0)
    except (RuntimeError, MemoryError) as error:  # e.g. out of memory at the longest length
        print(f"  {name} N={length}: failed ({str(error).splitlines()[0][:80]})")
        return model.num_parameters, None
    # fastest step (timeit's rule): other processes on the machine only ever add time
    return model.num_parameters, BATCH / min(per_step)


def mean_time(fn: Callable[[], None], device: torch.device, inner: int, clock: Callable[[], float]) -> float:
    """Seconds per call, averaged over ``inner`` back-to-back calls."""
    sync(device)
    start = clock()
    for _ in range(inner):
        fn()
    sync(device)
    return (clock() - start) / inner


def bidirectional_cost(
    device: torch.device, repeats: int, inner: int, clock: Callable[[], float]
) -> dict[str, dict[str, float]]:
    """Median seconds of one direction and of both directions, forward and forward+backward."""
    batch, na, nb, dim, heads = 8, 256, 1024, 512, 8
    torch.manual_seed(0)
    block = BidirectionalCrossAttentionBlock(dim, dim, heads).to(device)
    a = torch.randn(batch, na, dim, device=device, requires_grad=True)
    b = torch.randn(batch, nb, dim, device=device, requires_grad=True)

    def one() -> torch.Tensor:
        with precision(device):
            return block.a_to_b(a, b).float().sum()

    def both() -> torch.Tensor:
        with precision(device):
            return block.a_to_b(a, b).float().sum() + block.b_to_a(b, a).float().sum()

    def forward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn()

        return run

    def backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            block.zero_grad(set_to_none=True)
            fn().backward()

        return run

    results: dict[str, dict[str, float]] = {}
    for mode, wrap in (("forward", forward), ("forward+backward", backward)):
        runs = {"one direction (a->b)": wrap(one), "both directions": wrap(both)}
        for fn in runs.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):  # interleaved, so drifts in clock speed hit both alike
            for label, fn in runs.items():
                times[label].append(mean_time(fn, device, inner, clock))
        results[mode] = {label: min(t) for label, t in times.items()}  # fastest repeat, as for throughput
    return results


def fit_vs_loop(name: str, device: torch.device, repeats: int, clock: Callable[[], float]) -> tuple[float, float]:
    """(fit samples/s, plain loop samples/s) for strategy ``name``: medians of interleaved repeats."""
    specs = {"a": ModalitySpec(FEATURES, FIT_LENGTH), "b": ModalitySpec(FEATURES, FIT_LENGTH)}
    generator = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(FIT_ROWS, FIT_LENGTH, FEATURES, generator=generator) for k in specs}
    y = torch.randint(0, NUM_CLASSES, (FIT_ROWS,), generator=generator)
    data = MultimodalDataset(inputs, y)
    config = TrainConfig(epochs=FIT_EPOCHS, batch_size=BATCH, device=str(device))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_fusion(name, specs, NUM_CLASSES, FusionConfig(dim=64))

    def with_fit() -> None:
        fit(model(), data, None, config)

    def plain_loop() -> None:
        net = model().to(device).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        x = {k: v.to(device) for k, v in data.inputs.items()}
        m = {k: v.to(device) for k, v in data.masks.items()}
        target = data.y.to(device)
        for _ in range(FIT_EPOCHS):
            for index in torch.randperm(FIT_ROWS).split(BATCH):
                index = index.to(device)
                loss = F.cross_entropy(
                    net({k: v[index] for k, v in x.items()}, {k: v[index] for k, v in m.items()}).logits, target[index]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
                optimizer.step()
                loss.item()

    times: dict[str, list[float]] = {"fit": [], "loop": []}
    for round_ in range(repeats + 1):
        for label, fn in (("fit", with_fit), ("loop", plain_loop))[:: 1 if round_ % 2 else -1]:
            sync(device)
            start = clock()
            fn()
            sync(device)
            if round_:  # round 0 is the warm-up
                times[label].append(clock() - start)
    samples = FIT_ROWS * FIT_EPOCHS
    return samples / statistics.median(times["fit"]), samples / statistics.median(times["loop"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 16, 64, 256 and fewer repeats")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 16 64 256 1024)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--skip-throughput", action="store_true", help="only the bidirectional-cost table")
    parser.add_argument("--tables", default="throughput,bidirectional", help=f"comma-separated, from {TABLES}")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: wall-clock time, default threads; cpu: one thread, timed by its CPU time (stable on a busy "
        "shared machine; then samples/s means per CPU-second of one core)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.clock == "cpu":
        if device.type != "cpu":
            parser.error(f"--clock: cpu time only measures --device cpu, got --device {args.device}")
        torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    tables = {t.strip() for t in args.tables.split(",") if t.strip()}
    if not tables or tables - set(TABLES):
        parser.error(f"--tables: expected names from {', '.join(TABLES)}, got {args.tables!r}")
    if args.skip_throughput:
        tables.discard("throughput")
    lengths = args.lengths or ([16, 64, 256] if args.quick else [16, 64, 256, 1024])
    min_time, min_steps = (0.5, 2) if args.quick else (2.0, 3)
    repeats, inner = (3, 1) if args.quick else (7, 2)
    names = [n for n in ("flatten", "late", "early", "cross", "gated", "bicross") if n in FUSIONS]
    names += sorted(set(FUSIONS) - set(names))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# crossfuse fusion benchmark: torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, load average {load:.1f} at start, clock: {args.clock}"
    )
    if "throughput" in tables:
        rows = {name: {} for name in names}
        for length in lengths:
            for name in names:
                rows[name][length] = training_throughput(name, length, device, min_time, min_steps, clock)
        print(
            f"\n## Training throughput (samples/s; forward+backward+AdamW, batch {BATCH}), two modalities "
            f"of N tokens, D_m={FEATURES}, dim=64, 2 fusion + 1 encoder layers\n"
        )
        print("| strategy | " + " | ".join(f"N={n} samples/s" for n in lengths) + " |")
        print("|---|" + "---:|" * len(lengths))
        for name in names:
            cells = [f"{rows[name][n][1]:.0f}" if rows[name][n][1] is not None else "failed" for n in lengths]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("\n## Parameters\n")
        print("| strategy | " + " | ".join(f"N={n}" for n in lengths) + " |")
        print("|---|" + "---:|" * len(lengths))
        for name in names:
            print(f"| {name} | " + " | ".join(f"{rows[name][n][0]:,}" for n in lengths) + " |")

    if "fit" in tables:
        print(
            f"\n## crossfuse.train.fit vs a plain PyTorch loop (samples/s, {FIT_ROWS} rows x {FIT_EPOCHS} epochs, "
            f"N={FIT_LENGTH}, batch {BATCH}, median of {repeats} interleaved repeats; target fit/loop >= 0.90)\n"
        )
        print("| strategy | fit samples/s | loop samples/s | fit / loop |")
        print("|---|---:|---:|---:|")
        for name in names:
            with_fit, loop = fit_vs_loop(name, device, repeats, clock)
            print(f"| {name} | {with_fit:.0f} | {loop:.0f} | {with_fit / loop:.2f} |", flush=True)
    if "bidirectional" not in tables:
        return
    cost = bidirectional_cost(device, repeats, inner, clock)
    print(
        "\n## Bidirectional cross-attention cost: a_to_b + b_to_a vs a_to_b alone, "
        "(B, Na, Nb) = (8, 256, 1024), D=512, H=8 (target <= 2.0x)\n"
    )
    print("| pass | one direction (ms) | both directions (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for mode, t in cost.items():
        one, both = t["one direction (a->b)"], t["both directions"]
        print(f"| {mode} | {one * 1e3:.1f} | {both * 1e3:.1f} | {both / one:.2f}x |")


if __name__ == "__main__":
    main()
