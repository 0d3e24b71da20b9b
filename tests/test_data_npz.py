"""The user-data loader: a good file loads exactly; every bad file is one clear ValueError."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from crossfuse.data.npz import load_npz, seeded_split, split_dataset


def arrays(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, 4, 3)).astype(np.float32),
        "text": rng.normal(size=(n, 5, 2)),  # float64: converted to float32
        "text__mask": rng.random((n, 5)) > 0.3,
        "y": rng.integers(0, 3, size=n),
    }


def write(tmp_path: Path, **data: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **data)
    return path


def test_good_file_loads_values_masks_and_targets(tmp_path: Path) -> None:
    data = arrays()
    data["tabular"] = np.arange(24).reshape(12, 2)  # (N, D) ints: one float token per sample
    data["split"] = np.array([0] * 8 + [1] * 2 + [2] * 2)
    dataset, split = load_npz(write(tmp_path, **data))
    assert set(dataset.inputs) == {"image", "text", "tabular"}
    torch.testing.assert_close(dataset.inputs["image"], torch.from_numpy(data["image"]))
    torch.testing.assert_close(dataset.inputs["text"], torch.from_numpy(data["text"]).float())
    assert dataset.inputs["tabular"].shape == (12, 1, 2) and dataset.inputs["tabular"].dtype == torch.float32
    assert torch.equal(dataset.masks["text"], torch.from_numpy(data["text__mask"]))
    assert dataset.masks["image"].all()  # no mask given: all valid
    assert dataset.y.dtype == torch.long and torch.equal(dataset.y, torch.from_numpy(data["y"]))
    np.testing.assert_array_equal(split, data["split"])
    parts = split_dataset(dataset, split)
    assert {k: len(v) for k, v in parts.items()} == {"train": 8, "val": 2, "test": 2}
    assert torch.equal(parts["val"].inputs["image"], dataset.inputs["image"][8:10])


def test_float_targets_and_predict_files_without_y(tmp_path: Path) -> None:
    data = arrays()
    data["y"] = np.linspace(0, 1, 24).reshape(12, 2)
    dataset, split = load_npz(write(tmp_path, **data))
    assert split is None and dataset.y.dtype == torch.float32 and dataset.y.shape == (12, 2)
    del data["y"]
    dataset, _ = load_npz(write(tmp_path, **data), require_y=False)
    assert len(dataset) == 12
    with pytest.raises(ValueError, match="no 'y' array"):
        load_npz(write(tmp_path, **data))


def test_seeded_split_is_seeded_and_proportional() -> None:
    a, b, c = seeded_split(1000, seed=3), seeded_split(1000, seed=3), seeded_split(1000, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(a).tolist() == [700, 150, 150]
    assert np.bincount(seeded_split(3), minlength=3).tolist() == [1, 1, 1]  # every part non-empty


BAD_CASES = {
    "missing y": (lambda d: d.pop("y"), r"no 'y' array .*found \['image', 'text', 'text__mask'\]"),
    "mismatched N": (
        lambda d: d.update(text=d["text"][:10], text__mask=d["text__mask"][:10]),
        r"disagree on the number of samples: image N=12, text N=10, y N=12",
    ),
    "NaN": (lambda d: d["image"].__setitem__((0, 0, slice(0, 3)), np.nan), r"'image' contains 3 NaN and 0 Inf"),
    "Inf": (lambda d: d["text"].__setitem__((1, 1, 0), -np.inf), r"'text' contains 0 NaN and 1 Inf"),
    "NaN in y": (lambda d: d.update(y=np.full(12, np.nan)), r"'y' contains 12 NaN"),
    "mask shape": (
        lambda d: d.update(text__mask=d["text__mask"][:, :4]),
        r"'text__mask' has shape \(12, 4\); .*\(12, 5\)",
    ),
    "mask of unknown modality": (lambda d: d.update(audio__mask=d["text__mask"]), r"unknown modalities \['audio'\]"),
    "non-bool mask": (lambda d: d.update(text__mask=d["text__mask"] * 2.5), r"must be bool"),
    "one sample": (lambda d: d.update({k: v[:1] for k, v in d.items()}), r"has 1 sample\(s\); expected at least 2"),
    "1-d modality": (lambda d: d.update(image=d["image"][:, 0, 0]), r"'image' has shape \(12,\).*reshape"),
    "4-d modality": (lambda d: d.update(image=d["image"][..., None]), r"'image' has shape \(12, 4, 3, 1\)"),
    "strings": (lambda d: d.update(text=np.array(["a"] * 12)), r"'text' has dtype <U1; expected numbers"),
    "split values": (
        lambda d: d.update(split=np.array([0] * 10 + [3, 5])),
        r"'split' must hold 0.*other values \[3, 5\]",
    ),
    "split shape": (
        lambda d: d.update(split=np.zeros(11, int)),
        r"'split' has shape \(11,\); expected \(N,\) = \(12,\)",
    ),
    "only y": (lambda d: [d.pop(k) for k in ("image", "text", "text__mask")], r"no modality arrays"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_file_is_one_line_value_error(tmp_path: Path, case: str) -> None:
    data = arrays()
    change, message = BAD_CASES[case]
    change(data)
    with pytest.raises(ValueError, match=message) as error:
        load_npz(write(tmp_path, **data))
    assert "\n" not in str(error.value) and str(error.value).startswith("data: ")


def test_unreadable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ValueError, match="is empty"):
        load_npz(empty)
    (tmp_path / "zero.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_npz(tmp_path / "zero.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "objects.npz", image=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2))
    with pytest.raises(ValueError, match="Python objects"):
        load_npz(tmp_path / "objects.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_npz(tmp_path / "missing.npz")


def test_values_beyond_float32_are_refused_after_the_cast(tmp_path: Path) -> None:
    x = np.zeros((4, 2, 3))
    x[1, 0, 2] = 1e300  # finite in float64, inf in float32
    np.savez(tmp_path / "big.npz", image=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"'image' contains 0 NaN and 1 Inf values as float32 \(1 of them beyond"):
        load_npz(tmp_path / "big.npz")
    np.savez(tmp_path / "bigy.npz", image=np.zeros((4, 3)), y=np.array([0.0, 1e300, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"array 'y' contains 0 NaN and 1 Inf"):
        load_npz(tmp_path / "bigy.npz")


def test_uint64_labels_beyond_int64_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", image=np.zeros((4, 3)), y=np.array([0, 1, 2**63, 1], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"'y' holds uint64 labels up to 9223372036854775808, beyond int64"):
        load_npz(tmp_path / "u.npz")
    np.savez(tmp_path / "ok.npz", image=np.zeros((4, 3)), y=np.array([0, 1, 2**63 - 1, 1], dtype=np.uint64))
    assert load_npz(tmp_path / "ok.npz")[0].y.max().item() == 2**63 - 1


def test_truncated_members_and_text_files_are_named(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((10, 3, 4)))
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as archive:
        archive.writestr("image.npy", buffer.getvalue()[:200])  # header intact, data cut short
        archive.writestr("y.npy", b"")
    with pytest.raises(ValueError, match=r"array '(image|y)' in .*cut.npz cannot be read") as caught:
        load_npz(tmp_path / "cut.npz")
    assert "Python objects" not in str(caught.value)
    (tmp_path / "table.npz").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"table.npz is not a readable \.npz archive \(not a zip file\)") as caught:
        load_npz(tmp_path / "table.npz")
    assert "allow_pickle" not in str(caught.value)
