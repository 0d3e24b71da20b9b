"""Reader for the ``.ts`` archive format of multivariate time series (as used by aeon and sktime).

A ``.ts`` file has ``#`` comment lines, ``@`` metadata lines (``@problemName``, ``@timeStamps``,
``@missing``, ``@univariate``, ``@dimension(s)``, ``@equalLength``, ``@seriesLength``,
``@classLabel true <labels...>`` or ``@targetLabel true``, ``@data`` last) and then one case per line:
channels separated by ``:``, values within a channel by ``,``, the class label or target after the last
``:``; ``?`` or ``NaN`` is a missing value. Time-stamped values (``@timeStamps true``) are not supported.

`group_channels` turns the channels into crossfuse modalities (e.g. accelerometer = channels 0, 1, 2 and
gyroscope = 3, 4, 5): each modality is a (N, T, C_m) sequence with a (N, T) mask that is False after
the end of a shorter series and at time steps where any of its channels is missing (values set to 0).

A malformed file raises ValueError naming the file and the line number. The parser is small and
self-contained so reading one needs neither aeon nor sktime (nor pandas).

Shapes: read_ts(path) -> TsData(series: list of N arrays (C, T_i) float64, y: (N,) labels (str) or
(N,) float64 targets, class_labels, problem); group_channels(data, {name: [channels]}) ->
({name: (N, T_max, C_m) float32}, {name: (N, T_max) bool})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_BOOL = {"true": True, "false": False}


@dataclass
class TsData:
    """What a ``.ts`` file holds: per-case (channels, time) arrays, targets and its metadata."""

    series: list[np.ndarray]
    y: np.ndarray
    class_labels: list[str] | None
    problem: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return int(self.series[0].shape[0]) if self.series else 0


def _flag(path: Path, number: int, key: str, value: str) -> bool:
    word = value.split()[0].lower() if value.split() else ""
    if word not in _BOOL:
        raise ValueError(f"{path}:{number}: @{key} expects true or false, got {value!r}")
    return _BOOL[word]


def _value(path: Path, number: int, text: str) -> float:
    text = text.strip()
    if text in ("?", "NaN", "nan", ""):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}:{number}: expected a number, got {text[:40]!r}") from None


def read_ts(path: str | Path) -> TsData:
    """Parse a ``.ts`` file (see the module docstring); one-line errors carry ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    metadata: dict[str, str] = {}
    labels: list[str] | None = None
    regression = False
    in_data = False
    series: list[np.ndarray] = []
    targets: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"path: {path} is not a UTF-8 text file; expected a .ts file") from None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(f"{path}:{number}: expected an @ metadata line before @data, got {line[:40]!r}")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
            elif key == "classlabel":
                if _flag(path, number, key, value):
                    labels = value.split()[1:]
                    if not labels:
                        raise ValueError(f"{path}:{number}: @classLabel true must list the class labels")
            elif key == "targetlabel":
                regression = _flag(path, number, key, value)
            elif key == "timestamps" and _flag(path, number, key, value):
                raise ValueError(f"{path}:{number}: @timeStamps true is not supported; write plain values")
            else:
                if key in ("missing", "univariate", "equallength"):
                    _flag(path, number, key, value)
                metadata[key] = value.strip()
            continue
        parts = line.split(":")
        has_target = labels is not None or regression
        channels = parts[:-1] if has_target else parts
        if has_target:
            if len(parts) < 2:
                raise ValueError(f"{path}:{number}: expected channels and a target separated by ':'")
            targets.append(parts[-1].strip())
        values = [[_value(path, number, v) for v in channel.split(",")] for channel in channels]
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise ValueError(f"{path}:{number}: channels of one case have different lengths {sorted(lengths)}")
        if series and len(values) != series[0].shape[0]:
            raise ValueError(f"{path}:{number}: expected {series[0].shape[0]} channels, got {len(values)}")
        series.append(np.asarray(values, dtype=np.float64))
    if not in_data:
        raise ValueError(f"{path}: no @data line; expected a .ts file")
    if not series:
        raise ValueError(f"{path}: @data has no cases")
    declared = metadata.get("dimensions", metadata.get("dimension"))
    if declared is not None and declared.isdigit() and int(declared) != series[0].shape[0]:
        raise ValueError(f"{path}: @dimensions says {declared} channels, the data has {series[0].shape[0]}")
    y = _targets(path, targets, labels, regression) if targets else np.zeros(len(series))
    return TsData(series, y, labels, metadata.get("problemname", ""), metadata)


def _targets(path: Path, targets: list[str], labels: list[str] | None, regression: bool) -> np.ndarray:
    if regression:
        return np.asarray([_value(path, 0, t) for t in targets], dtype=np.float64)
    assert labels is not None
    unknown = sorted(set(targets) - set(labels))
    if unknown:
        raise ValueError(f"{path}: class labels {unknown[:5]} are not declared in @classLabel {labels}")
    return np.asarray(targets)


def class_indices(y: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """String class labels -> int64 indices in the order ``labels`` declares them. Shapes: (N,) -> (N,)."""
    lookup = {label: i for i, label in enumerate(labels)}
    return np.asarray([lookup[v] for v in y.tolist()], dtype=np.int64)


def group_channels(
    data: TsData, groups: Mapping[str, Sequence[int]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Modalities from channel groups, padded to the longest series; see the module docstring."""
    if not groups:
        raise ValueError("groups: expected at least one modality, e.g. {'accelerometer': [0, 1, 2]}")
    channels = data.num_channels
    for name, chosen in groups.items():
        bad = [c for c in chosen if not 0 <= c < channels]
        if not chosen or bad:
            raise ValueError(f"groups[{name!r}]: channels must be in 0..{channels - 1}, got {list(chosen)}")
    n, longest = len(data.series), max(s.shape[1] for s in data.series)
    inputs, masks = {}, {}
    for name, chosen in groups.items():
        x = np.zeros((n, longest, len(chosen)), dtype=np.float32)
        mask = np.zeros((n, longest), dtype=bool)
        for i, case in enumerate(data.series):
            values = case[list(chosen)].T  # (T_i, C_m)
            present = ~np.isnan(values).any(axis=1)
            x[i, : len(values)] = np.where(np.isnan(values), 0.0, values)
            mask[i, : len(values)] = present
        inputs[name], masks[name] = x, mask
    return inputs, masks


def parse_groups(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["acc=0,1,2", "gyro=3-5"]`` -> ``{"acc": [0, 1, 2], "gyro": [3, 4, 5]}`` (ranges inclusive)."""
    groups: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, channels = spec.partition("=")
        if not sep or not name.strip() or not channels.strip():
            raise ValueError(f"modality: expected NAME=CHANNELS such as acc=0,1,2, got {spec!r}")
        chosen: list[int] = []
        try:
            for part in channels.split(","):
                low, dash, high = part.strip().partition("-")
                chosen += list(range(int(low), int(high) + 1)) if dash else [int(low)]
        except ValueError:
            raise ValueError(f"modality: channels must be integers or ranges such as 0-2, got {spec!r}") from None
        if name.strip() in groups:
            raise ValueError(f"modality: {name.strip()!r} is given twice")
        groups[name.strip()] = chosen
    return groups
