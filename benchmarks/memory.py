"""Train from a data-set directory twice the size of a memory cap; print the peak memory against the cap.

The data (``--data-gb``, default 2.0 GB of float32 tokens) is written once as a memory-mapped directory
(`crossfuse.data.directory`). Training runs in a child process placed in a cgroup (v1 or v2) with a hard
memory limit of ``--cap-gb`` (default 1.0 GB), so exceeding it would kill the child. The child trains a
small cross-attention model for one epoch over every row, then reports its peak RSS (``ru_maxrss``) and
the cgroup's peak usage. As a control, a second child tries to load the same data into memory whole
(what reading an ``.npz`` does) under the same cap.

Needs root (to create a cgroup); without it, the run is reported with no cap. Prints figures, asserts
nothing about time.

    python benchmarks/memory.py [--data-gb 2.0] [--cap-gb 1.0] [--dir /tmp/crossfuse-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOKENS, DIM, TEXT_TOKENS, TEXT_DIM = 64, 128, 8, 16

CHILD_TRAIN = """
import json, resource, sys, threading, time, torch
peak = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in peak:
                peak[key] = max(peak[key], int(line.split()[1]))
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
from crossfuse.data.directory import open_dataset_dir
from crossfuse.data.npz import split_dataset
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.train import TrainConfig, fit
torch.set_num_threads(2)
data, split = open_dataset_dir(sys.argv[1])
parts = split_dataset(data, split)
specs = {name: ModalitySpec(x.shape[-1], x.shape[1]) for name, x in data.inputs.items()}
model = build_fusion("cross", specs, 4, FusionConfig(dim=32, num_heads=2, num_layers=1, encoder_layers=0))
t0 = time.perf_counter()
result = fit(model, parts["train"], parts["val"], TrainConfig(epochs=1, batch_size=256, lr=1e-3))
print(json.dumps({"rows": len(parts["train"]), "seconds": time.perf_counter() - t0,
                  "final": result.final,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_anon_mb": peak["RssAnon"] / 1024, "peak_file_mb": peak["RssFile"] / 1024}))
"""

CHILD_LOAD_WHOLE = """
import numpy as np, sys
whole = np.load(sys.argv[1] + "/image.npy")  # reads every byte into memory, as loading an .npz does
print(float(whole[-1, -1, -1]))
"""


def make_cgroup(cap_bytes: int) -> tuple[Path | None, str]:
    """A fresh memory cgroup limited to ``cap_bytes``; (path, version) or (None, reason)."""
    name = f"crossfuse-bench-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup")
    v1 = Path("/sys/fs/cgroup/memory")
    try:
        if (v2 / "cgroup.controllers").is_file() and "memory" in (v2 / "cgroup.controllers").read_text():
            path = v2 / name
            path.mkdir()
            (path / "memory.max").write_text(str(cap_bytes))
            (path / "memory.swap.max").write_text("0")
            return path, "v2"
        if v1.is_dir():
            path = v1 / name
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(cap_bytes))
            return path, "v1"
    except OSError as error:
        return None, f"cannot create a memory cgroup ({error})"
    return None, "no memory cgroup controller"


def cgroup_peak(path: Path, version: str) -> float:
    file = path / ("memory.peak" if version == "v2" else "memory.max_usage_in_bytes")
    return int(file.read_text()) / 2**20 if file.is_file() else float("nan")


def drop_cached_pages(directory: Path) -> None:
    """Evict the data files from the page cache, so the child's reads are charged to its own cgroup
    (pages cached by the writer would be charged to the writer's and not count against the cap)."""
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def run_child(code: str, data_dir: Path, cgroup: Path | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a child that joins ``cgroup`` before doing anything else."""
    drop_cached_pages(data_dir)
    join = f"open({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))\n" if cgroup else ""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-c", join + code, str(data_dir)], capture_output=True, text=True, env=env, check=False
    )


def write_data(directory: Path, data_gb: float) -> int:
    from crossfuse.data.directory import write_dataset_dir

    row_bytes = TOKENS * DIM * 4
    n = int(data_gb * 2**30 / row_bytes)
    scratch = directory.parent / (directory.name + "-scratch")
    scratch.mkdir(parents=True, exist_ok=True)
    # the source arrays are memmaps too, filled chunk by chunk, so writing never holds the data set in memory
    image = np.lib.format.open_memmap(scratch / "image.npy", mode="w+", dtype=np.float32, shape=(n, TOKENS, DIM))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, n)
    prototypes = rng.standard_normal((4, DIM)).astype(np.float32)
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        noise = rng.standard_normal((stop - start, TOKENS, DIM), dtype=np.float32)
        image[start:stop] = noise + 0.5 * prototypes[y[start:stop]][:, None, :]
    text = rng.standard_normal((n, TEXT_TOKENS, TEXT_DIM)).astype(np.float32)
    split = np.where(rng.random(n) < 0.9, 0, 1)
    write_dataset_dir(directory, {"image": image, "text": text}, y, split=split)
    del image
    shutil.rmtree(scratch)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-gb", type=float, default=2.0)
    parser.add_argument("--cap-gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/crossfuse-memory"))
    args = parser.parse_args()
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    data_dir = args.dir / "data"
    if not (data_dir / "manifest.json").is_file():
        shutil.rmtree(args.dir, ignore_errors=True)
        t0 = time.perf_counter()
        n = write_data(data_dir, args.data_gb)
        print(f"wrote {n} rows in {time.perf_counter() - t0:.1f}s")
    size_mb = sum(f.stat().st_size for f in data_dir.iterdir()) / 2**20
    cap = int(args.cap_gb * 2**30)
    print(f"data-set directory: {size_mb:.0f} MB; memory cap: {cap / 2**20:.0f} MB ({size_mb / (cap / 2**20):.2f}x)")
    rows = []
    for label, code in (
        ("train from the directory (memory-mapped)", CHILD_TRAIN),
        ("load whole (control)", CHILD_LOAD_WHOLE),
    ):
        cgroup, version = make_cgroup(cap)
        if cgroup is None:
            print(f"note: {version}; running without a cap")
        done = run_child(code, data_dir, cgroup)
        peak = cgroup_peak(cgroup, version) if cgroup else float("nan")
        outcome = "ok" if done.returncode == 0 else f"killed/failed (exit {done.returncode})"
        detail = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
        rows.append((label, outcome, peak, detail))
        if cgroup is not None:
            cgroup.rmdir()
    print("\n| run | outcome | cgroup peak (MB) | child report |\n|---|---|---:|---|")
    for label, outcome, peak, detail in rows:
        print(f"| {label} | {outcome} | {peak:.0f} | {detail} |")
    report = json.loads(rows[0][3]) if rows[0][1] == "ok" else None
    if report:
        print(
            f"\ntraining process against a {cap / 2**20:.0f} MB cap and {size_mb:.0f} MB of data: cgroup peak "
            f"{rows[0][2]:.0f} MB (its own memory plus the mapped file pages charged to it, reclaimed at the cap); "
            f"peak anonymous memory {report['peak_anon_mb']:.0f} MB, peak file-backed resident "
            f"{report['peak_file_mb']:.0f} MB, ru_maxrss {report['peak_rss_mb']:.0f} MB; "
            f"{report['rows']} training rows in {report['seconds']:.1f}s"
        )


if __name__ == "__main__":
    main()
