"""The .ts reader: a file written here round-trips, channel groups become masked modalities, errors name the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossfuse.data.ts_format import class_indices, group_channels, parse_groups, read_ts

HEADER = """# a tiny activity data set
@problemName tiny
@timeStamps false
@missing true
@univariate false
@dimensions 4
@equalLength false
@classLabel true walk run
@data
"""


def write_ts(path: Path, cases: list[tuple[np.ndarray, str]], header: str = HEADER) -> Path:
    lines = [
        ":".join(",".join("?" if np.isnan(v) else repr(float(v)) for v in ch) for ch in x) + f":{y}" for x, y in cases
    ]
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_of_unequal_lengths_and_missing_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = [(rng.standard_normal((4, t)), label) for t, label in ((5, "walk"), (3, "run"), (5, "run"))]
    cases[2][0][1, 2] = np.nan
    data = read_ts(write_ts(tmp_path / "tiny.ts", cases))
    assert data.problem == "tiny" and data.class_labels == ["walk", "run"] and data.num_channels == 4
    for (x, _), got in zip(cases, data.series, strict=True):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(x))
    assert class_indices(data.y, data.class_labels).tolist() == [0, 1, 1]
    inputs, masks = group_channels(data, {"acc": [0, 1], "gyro": [2, 3]})
    assert inputs["acc"].shape == (3, 5, 2) and masks["acc"].shape == (3, 5)
    np.testing.assert_allclose(inputs["gyro"][0], cases[0][0][2:4].T, rtol=1e-6)
    assert masks["acc"][1].tolist() == [True, True, True, False, False]  # shorter series: padded and masked
    assert masks["acc"][2].tolist() == [True, True, False, True, True]  # channel 1 missing at t = 2
    assert masks["gyro"][2].all() and inputs["acc"][2, 2, 1] == 0.0  # the missing value itself reads as 0


def test_regression_targets(tmp_path: Path) -> None:
    header = "@problemName r\n@univariate true\n@targetLabel true\n@data\n"
    path = tmp_path / "r.ts"
    path.write_text(header + "1,2,3:0.5\n4,5,6:-1.25\n", encoding="utf-8")
    data = read_ts(path)
    assert data.y.tolist() == [0.5, -1.25] and data.class_labels is None and data.series[1].tolist() == [[4, 5, 6]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("@problemName x\n@classLabel true a b\n@data\n1,2:1,2:c\n", r"bad.ts: class labels \['c'\]"),
        ("@problemName x\n@classLabel true a b\n@data\n1,2:1,x:a\n", r"bad.ts:4: expected a number, got 'x'"),
        ("@problemName x\n@classLabel true a b\n@data\n1,2:1,2:a\n1,2:a\n", r"bad.ts:5: expected 2 channels, got 1"),
        ("@problemName x\n@classLabel true a\n@data\n1,2:1:a\n", r"bad.ts:4: channels of one case have different"),
        ("@problemName x\n@timeStamps true\n@data\n", r"bad.ts:2: @timeStamps true is not supported"),
        ("@problemName x\n@missing maybe\n@data\n", r"bad.ts:2: @missing expects true or false"),
        ("@problemName x\n1,2\n", r"bad.ts:2: expected an @ metadata line"),
        ("@problemName x\n", r"no @data line"),
        ("@problemName x\n@dimensions 3\n@classLabel true a\n@data\n1:2:a\n", r"@dimensions says 3 channels"),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.ts"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_ts(path)


def test_channel_groups_parse_and_are_checked(tmp_path: Path) -> None:
    assert parse_groups(["acc=0,1,2", "gyro=3-5"]) == {"acc": [0, 1, 2], "gyro": [3, 4, 5]}
    for bad in (["acc"], ["acc=a"], ["acc=0", "acc=1"]):
        with pytest.raises(ValueError, match="modality"):
            parse_groups(bad)
    data = read_ts(write_ts(tmp_path / "t.ts", [(np.ones((4, 2)), "walk")]))
    with pytest.raises(ValueError, match=r"groups\['acc'\]: channels must be in 0..3"):
        group_channels(data, {"acc": [2, 4]})
