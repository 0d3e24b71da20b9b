"""Speed and memory of `CrossAttention` against `nn.MultiheadAttention` and a naive einsum+softmax attention.

Prints two markdown tables; never asserts on time.

1. Forward and forward+backward time for shapes (B, H, Nq, Nk, d_head), model dim D = H * d_head = 512,
   all three implementations holding the same weights. The implementations are timed round-robin
   (one call of each per repeat, after a warm-up) and the median is reported, so the ratios come
   from one run under the same machine load.
2. Peak memory of one forward (no weights requested) at Nq = Nk = N for N in 4096, 8192, 16384
   (B=1, H=8, d_head=64), each measured in a fresh subprocess: the growth of the process's peak
   resident set size across the call, or ``torch.cuda.max_memory_allocated`` on CUDA. On Linux the
   peak is ``VmHWM`` from /proc/self/status: ``getrusage().ru_maxrss`` would do, except that Linux
   carries the parent's peak over fork + exec into the child's ``ru_maxrss``, hiding the growth.
   On CPU the child runs under an address-space cap (``--memory-cap-gb``) so that the naive
   version's N x N score matrices fail to allocate instead of swapping or waking the OOM killer
   on a shared machine; the table gives the megabytes they would have needed.

3. The weights path (``--tables weights``): ``CrossAttention(return_attention=True)`` against
   ``nn.MultiheadAttention(need_weights=True, average_attn_weights=False)`` (both return the
   (B, H, Nq, Nk) weights) at (B, Nq, Nk) = (8, 256, 1024) and (2, 1024, 4096), without a mask and
   with the last 25% of the keys padded, forward (no grad) and forward+backward. Timed interleaved
   (A, B, A, B, ...), median of the repeats; ``--clock cpu --threads 1`` times CPU seconds of one
   thread (``time.process_time``), which a machine loaded by other work disturbs least.

Usage:
    python benchmarks/attention.py            # full: more repeats (a few minutes on 2 CPU cores)
    python benchmarks/attention.py --quick    # fewer repeats
    python benchmarks/attention.py --device cuda
    python benchmarks/attention.py --tables weights --clock cpu --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from crossfuse.attention import CrossAttention

MODEL_DIM, HEADS, HEAD_DIM = 512, 8, 64
SHAPES = [(32, 8, 32, 196, 64), (8, 8, 256, 1024, 64), (1, 8, 4096, 4096, 64)]  # (B, H, Nq, Nk, dh)
# timed rounds per shape, after a warm-up round; multiples of 3 so each call order occurs equally often
REPEATS = {"full": (21, 12, 6), "quick": (6, 3, 3)}
MEMORY_LENGTHS = (4096, 8192, 16384)
TARGET_RATIO = 1.05
IMPLS = ("CrossAttention", "MHA", "naive")
WEIGHT_SHAPES = [(8, 256, 1024), (2, 1024, 4096)]  # (B, Nq, Nk), D = 512, H = 8
WEIGHT_REPEATS = {"full": (9, 5), "quick": (5, 3)}
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def naive_attention(attn: CrossAttention, query: Tensor, context: Tensor) -> Tensor:
    """Textbook attention with ``attn``'s weights: the full (B, H, Nq, Nk) scores, then softmax.

    Shapes: query: (B, Nq, D)  context: (B, Nk, D)  ->  (B, Nq, D)
    """
    heads, dh = attn.num_heads, attn.head_dim
    q = attn.to_q(query).unflatten(-1, (heads, dh)) * dh**-0.5
    k = attn.to_k(context).unflatten(-1, (heads, dh))
    v = attn.to_v(context).unflatten(-1, (heads, dh))
    weights = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(dim=-1)
    return attn.to_out(torch.einsum("bhqk,bkhd->bqhd", weights, v).flatten(2))


def dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (SDPA's flash and memory-efficient kernels), float32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build(device: torch.device) -> tuple[CrossAttention, nn.MultiheadAttention]:
    """A `CrossAttention` and an `nn.MultiheadAttention` with identical weights (D=512, H=8)."""
    torch.manual_seed(0)
    attn = CrossAttention(MODEL_DIM, MODEL_DIM, HEADS)
    mha = nn.MultiheadAttention(MODEL_DIM, HEADS, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.to_q.bias, attn.to_k.bias, attn.to_v.bias]))
        mha.out_proj.weight.copy_(attn.to_out.weight)
        mha.out_proj.bias.copy_(attn.to_out.bias)
    dtype = dtype_for(device)
    return attn.to(device, dtype).eval(), mha.to(device, dtype).eval()


def calls(attn: CrossAttention, mha: nn.MultiheadAttention) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    return {
        "CrossAttention": lambda q, c: attn(q, c),
        "MHA": lambda q, c: mha(q, c, c, need_weights=False)[0],
        "naive": lambda q, c: naive_attention(attn, q, c),
    }


def round_robin(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each function; one warm-up call each, then ``repeats`` interleaved rounds.

    The order rotates from round to round so that no function always runs first (e.g. right after
    the naive version has freed its large buffers).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeats + 1):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            fn = fns[name]
            sync()
            start = clock()
            fn()
            sync()
            if round_:  # round 0 is the warm-up
                times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed_calls(
    impls: dict[str, Callable[[Tensor, Tensor], Tensor]],
    weights: dict[str, list[Tensor]],
    query: Tensor,
    context: Tensor,
    backward: bool,
) -> dict[str, Callable[[], object]]:
    """Zero-argument calls to time: a no-grad forward, or forward + gradients w.r.t. inputs and own weights."""
    grad_out = torch.ones(query.shape[0], query.shape[1], MODEL_DIM, device=query.device, dtype=query.dtype)

    def forward(fn: Callable[[Tensor, Tensor], Tensor]) -> object:
        with torch.no_grad():
            return fn(query, context)

    def forward_backward(fn: Callable[[Tensor, Tensor], Tensor], own: list[Tensor]) -> object:
        return torch.autograd.grad(fn(query, context), [query, context, *own], grad_out)

    if backward:
        return {name: partial(forward_backward, fn, weights[name]) for name, fn in impls.items()}
    return {name: partial(forward, fn) for name, fn in impls.items()}


def speed_table(device: torch.device, size: str, clock: Callable[[], float] = time.perf_counter) -> list[str]:
    attn, mha = build(device)
    impls = calls(attn, mha)
    weights = {name: list((mha if name == "MHA" else attn).parameters()) for name in IMPLS}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = [
        "| shape (B, H, Nq, Nk, dh) | pass | CrossAttention ms | MHA ms | naive ms "
        f"| CrossAttention / MHA (target <= {TARGET_RATIO}) | naive / MHA | max abs diff vs MHA |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(rows), flush=True)
    for shape, repeats in zip(SHAPES, REPEATS[size], strict=True):
        batch, heads, n_query, n_key, dh = shape
        if heads != HEADS or heads * dh != MODEL_DIM:
            raise ValueError(f"SHAPES: expected H={HEADS} and H*dh={MODEL_DIM}, got {shape}")
        torch.manual_seed(1)
        query = torch.randn(batch, n_query, MODEL_DIM, device=device, dtype=dtype_for(device), requires_grad=True)
        context = torch.randn(batch, n_key, MODEL_DIM, device=device, dtype=dtype_for(device), requires_grad=True)
        with torch.no_grad():
            outs = {name: fn(query, context) for name, fn in impls.items()}
        diff = max((outs[name] - outs["MHA"]).abs().max().item() for name in ("CrossAttention", "naive"))
        del outs
        for label, backward in (("forward", False), ("fwd+bwd", True)):
            t = round_robin(timed_calls(impls, weights, query, context, backward), repeats, sync, clock)
            ratio = t["CrossAttention"] / t["MHA"]
            mark = "ok" if ratio <= TARGET_RATIO else "MISSED"
            rows.append(
                f"| {shape} | {label} | {1e3 * t['CrossAttention']:.2f} | {1e3 * t['MHA']:.2f} "
                f"| {1e3 * t['naive']:.2f} | {ratio:.2f} {mark} | {t['naive'] / t['MHA']:.2f} | {diff:.1e} |"
            )
            print(rows[-1], flush=True)
    return rows


def weights_table(device: torch.device, size: str, clock: Callable[[], float]) -> list[str]:
    """CrossAttention's weights path against MHA's (both return per-head weights); see the docstring."""
    attn, mha = build(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = [
        "| (B, Nq, Nk) | mask | pass | CrossAttention + weights ms | MHA + weights ms | ratio (target <= 1.0) "
        "| max abs diff of weights |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    print("\n".join(rows), flush=True)
    for (batch, n_query, n_key), repeats in zip(WEIGHT_SHAPES, WEIGHT_REPEATS[size], strict=True):
        torch.manual_seed(1)
        query = torch.randn(batch, n_query, MODEL_DIM, device=device, dtype=dtype_for(device), requires_grad=True)
        context = torch.randn(batch, n_key, MODEL_DIM, device=device, dtype=dtype_for(device), requires_grad=True)
        for padded in (False, True):
            valid = torch.ones(batch, n_key, dtype=torch.bool, device=device)
            if padded:
                valid[:, n_key - n_key // 4 :] = False
            ours = partial(attn, query, context, context_mask=valid if padded else None, return_attention=True)
            theirs = partial(
                mha,
                query,
                context,
                context,
                key_padding_mask=~valid if padded else None,
                need_weights=True,
                average_attn_weights=False,
            )
            with torch.no_grad():
                diff = (ours()[1] - theirs()[1]).abs().max().item()
            params = {"CrossAttention": list(attn.parameters()), "MHA": list(mha.parameters())}
            for label, backward in (("forward", False), ("fwd+bwd", True)):
                fns = {"CrossAttention": ours, "MHA": theirs}
                timed = {name: _weights_call(fn, backward, [query, context, *params[name]]) for name, fn in fns.items()}
                t = round_robin(timed, repeats, sync, clock)
                ratio = t["CrossAttention"] / t["MHA"]
                rows.append(
                    f"| ({batch}, {n_query}, {n_key}) | {'25% padding' if padded else 'none'} | {label} "
                    f"| {1e3 * t['CrossAttention']:.1f} | {1e3 * t['MHA']:.1f} "
                    f"| {ratio:.2f} {'ok' if ratio <= 1.0 else 'MISSED'} | {diff:.1e} |"
                )
                print(rows[-1], flush=True)
    return rows


def _weights_call(
    fn: Callable[[], tuple[Tensor, Tensor]], backward: bool, inputs: list[Tensor]
) -> Callable[[], object]:
    """A no-grad forward, or forward + gradients of (output + weights) w.r.t. inputs and parameters."""

    def forward() -> object:
        with torch.no_grad():
            return fn()

    def forward_backward() -> object:
        out, weights = fn()
        return torch.autograd.grad(out.sum() + weights.sum(), inputs)

    return forward_backward if backward else forward


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (its own pages only, see the module docstring)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # bytes on macOS, KiB elsewhere


def memory_child(impl: str, length: int, device: torch.device, cap_gb: float) -> dict[str, object]:
    """Runs in a fresh process: growth of peak memory across one forward of ``impl`` at Nq = Nk = ``length``."""
    if device.type == "cpu" and cap_gb > 0:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    attn, mha = build(device)
    fn = calls(attn, mha)[impl]
    torch.manual_seed(1)
    x = torch.randn(1, length, MODEL_DIM, device=device, dtype=dtype_for(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = peak_rss_bytes()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = fn(x, x)
    except (RuntimeError, MemoryError) as error:  # the cap refused an allocation
        return {"error": str(error).splitlines()[0][:120]}
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = peak_rss_bytes() - before
    return {"peak_bytes": peak, "seconds": time.perf_counter() - start, "finite": bool(out.isfinite().all())}


def measure_memory(impl: str, length: int, device: torch.device, cap_gb: float) -> dict[str, object]:
    command = [sys.executable, __file__, "--memory-child", impl, str(length), "--device", str(device)]
    command += ["--memory-cap-gb", str(cap_gb)]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": f"child exited with {run.returncode}: {run.stderr.strip()[-200:]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def memory_table(device: torch.device, cap_gb: float) -> list[str]:
    where = "peak RSS growth" if device.type == "cpu" else "max_memory_allocated growth"
    rows = [
        f"| N = Nq = Nk | CrossAttention peak MB ({where}) | naive peak MB | naive's two N x N fp32 scores, MB |",
        "|---:|---:|---:|---:|",
    ]
    print("\n".join(rows), flush=True)
    peaks: list[float] = []
    for length in MEMORY_LENGTHS:
        cells = []
        for impl in ("CrossAttention", "naive"):
            result = measure_memory(impl, length, device, cap_gb)
            if "error" in result:
                cap = f"under a {cap_gb:g} GB address-space cap" if device.type == "cpu" else ""
                cells.append(f"failed to allocate {cap}".strip())
            else:
                cells.append(f"{result['peak_bytes'] / 2**20:.0f} ({result['seconds']:.1f} s)")
                if impl == "CrossAttention":
                    peaks.append(result["peak_bytes"])
        scores_mb = 2 * HEADS * length * length * 4 / 2**20
        rows.append(f"| {length} | {cells[0]} | {cells[1]} | {scores_mb:.0f} |")
        print(rows[-1], flush=True)
    if len(peaks) == len(MEMORY_LENGTHS):
        growth = ", ".join(f"{b / a:.2f}x" for a, b in itertools.pairwise(peaks))
        linear = all(b / a < 3.0 for a, b in itertools.pairwise(peaks))  # 2x = linear, 4x = quadratic
        rows.append("")
        rows.append(
            f"CrossAttention memory growth per doubling of N: {growth} "
            f"(target: linear, i.e. ~2x; quadratic would be 4x) -> {'ok' if linear else 'MISSED'}"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0, help="address-space cap of the CPU memory runs")
    parser.add_argument("--tables", default="speed,memory", help="comma-separated: speed, memory, weights")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall seconds or CPU seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"--device: expected 'cpu' or 'cuda', got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: 'cuda' requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    if args.memory_child:
        impl, length = args.memory_child
        print(json.dumps(memory_child(impl, int(length), device, args.memory_cap_gb)))
        return

    tables = {t.strip() for t in args.tables.split(",") if t.strip()}
    if not tables or tables - {"speed", "memory", "weights"}:
        raise SystemExit(f"--tables: expected names from speed, memory, weights; got {args.tables!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "quick" if args.quick else "full"
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# crossfuse attention benchmark ({size})")
    print(
        f"torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} threads, "
        f"D = H * dh = {MODEL_DIM}, {dtype_for(device)}, median of {REPEATS[size]} repeats per shape, "
        f"load average at start {os.getloadavg()[0]:.1f}\n"
    )
    clock = CLOCKS[args.clock]
    if "speed" in tables:
        speed_table(device, size, clock)
    if "weights" in tables:
        print(f"\nWeights path, D = {MODEL_DIM}, H = {HEADS}, {args.clock} clock, median of the repeats:\n")
        weights_table(device, size, clock)
    if "memory" in tables:
        print(f"\nPeak memory of one forward, B=1, H={HEADS}, dh={HEAD_DIM}, each in a fresh subprocess:\n")
        memory_table(device, args.memory_cap_gb)


if __name__ == "__main__":
    main()
