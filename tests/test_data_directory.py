"""Data-set directories: memory-mapped, batch reads equal the in-memory data set, subsets never copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.directory import MappedDataset, open_dataset_dir, write_dataset_dir


def arrays(n: int = 50, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, 6)) > 0.2
    return {
        "inputs": {"image": rng.standard_normal((n, 6, 3)), "text": rng.standard_normal((n, 4))},
        "masks": {"image": mask},
        "y": rng.integers(0, 3, n),
        "split": rng.integers(0, 3, n),
    }


def test_batches_equal_the_in_memory_data_set(tmp_path: Path) -> None:
    a = arrays()
    write_dataset_dir(tmp_path / "d", a["inputs"], a["y"], a["masks"], a["split"])
    mapped, split = open_dataset_dir(tmp_path / "d")
    reference = MultimodalDataset(
        {k: torch.as_tensor(v, dtype=torch.float32) for k, v in a["inputs"].items()},
        torch.as_tensor(a["y"]),
        {"image": torch.as_tensor(a["masks"]["image"])},
    )
    assert isinstance(mapped, MappedDataset) and len(mapped) == 50 and np.array_equal(split, a["split"])
    index = torch.tensor([7, 3, 3, 49])
    got, want = mapped[index], reference[index]
    for key in ("inputs", "masks"):
        for name in want[key]:
            torch.testing.assert_close(got[key][name], want[key][name])
    torch.testing.assert_close(got["y"], want["y"])
    # a subset of a subset maps back to the right rows, without copying the arrays
    sub = mapped.subset(torch.tensor([10, 20, 30])).subset(torch.tensor([2, 0]))
    assert len(sub) == 2 and sub.inputs["image"].data_ptr() == mapped.inputs["image"].data_ptr()
    torch.testing.assert_close(
        sub[torch.arange(2)]["inputs"]["text"], reference[torch.tensor([30, 10])]["inputs"]["text"]
    )


def test_the_mapping_is_never_written_back(tmp_path: Path) -> None:
    a = arrays()
    write_dataset_dir(tmp_path / "d", a["inputs"], a["y"])
    before = (tmp_path / "d" / "image.npy").read_bytes()
    mapped, split = open_dataset_dir(tmp_path / "d")
    mapped.inputs["image"][0] += 1.0  # copy-on-write: changes this process's view only
    del mapped
    assert (tmp_path / "d" / "image.npy").read_bytes() == before and split is None


def test_bad_input_leaves_nothing_behind(tmp_path: Path) -> None:
    a = arrays()
    a["inputs"]["image"][5, 2, 1] = np.inf
    with pytest.raises(ValueError, match=r"'image' holds NaN or Inf values \(rows 0-49\)"):
        write_dataset_dir(tmp_path / "d", a["inputs"], a["y"])
    assert not (tmp_path / "d").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_dataset_dir(tmp_path / "full", arrays()["inputs"], arrays()["y"])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="not a crossfuse data-set directory"):
        open_dataset_dir(tmp_path / "full")
    (tmp_path / "full" / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match="not a valid crossfuse data-set manifest"):
        open_dataset_dir(tmp_path / "full")
