"""A training run on disk: the directory rules, ``config.json``, and rebuilding the trained model.

A run directory holds ``config.json`` (written by `crossfuse.train.fit`), ``metrics.jsonl`` and the
checkpoints ``best/`` and ``last/`` (`crossfuse.checkpoint`). ``config.json`` is::

    {"format": "crossfuse-run/1",
     "model": {"fusion": "cross", "modalities": {name: {"dim": D_m, "length": T_m}},
               "num_outputs": C, "fusion_config": {...FusionConfig...}},
     "train": {...TrainConfig...},
     "metadata": {"targets": {...TargetEncoding...}, "data": {...}, ...}}

so `load_run` rebuilds the model with `crossfuse.fusion.build_fusion` and loads its weights, and
`TargetEncoding` maps model outputs back to the user's labels or units.

Shapes: TargetEncoding.encode: y (N,) labels, (N, K) 0/1 label indicators or (N,) / (N, K) floats -> (N,)
class ids, (N, K) float 0/1, or the same shape standardised; decode: outputs (N, C) -> (N,) labels,
(N, K) logits -> (N, K) 0/1, or (N, K) -> (N,) / (N, K) values.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crossfuse import checkpoint as ckpt
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.fusion import FUSIONS, FusionConfig, FusionModel, ModalitySpec, build_fusion
from crossfuse.run_dir import prepare_run_dir  # noqa: F401  (re-exported: the directory rules live there)

RUN_CONFIG_FILE = "config.json"
FORMAT = "crossfuse-run/1"


# ----------------------------------------------------------------------------- config.json


def model_spec(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model``: fusion name, modality specs, outputs, FusionConfig (else only its class)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, FusionModel):
        return {"class": f"{type(inner).__module__}.{type(inner).__qualname__}"}
    name = next((n for n, builder in FUSIONS.items() if builder is type(inner)), None)
    return {
        "fusion": name,
        "class": f"{type(inner).__module__}.{type(inner).__qualname__}",
        "modalities": {n: dataclasses.asdict(s) for n, s in inner.modalities.items()},
        "num_outputs": inner.num_outputs,
        "fusion_config": dataclasses.asdict(inner.config),
        **(
            {
                "input_encoders": {
                    n: f"{type(m).__module__}.{type(m).__qualname__}" for n, m in inner.input_encoders.items()
                }
            }
            if len(inner.input_encoders)
            else {}
        ),
    }


def write_run_config(
    out_dir: Path,
    model: nn.Module,
    train_config: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    data_fingerprint: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/config.json`` (atomically); ``metadata`` must be JSON-serialisable.

    ``data_fingerprint`` (rows and SHA-256 of the training and validation data, see
    `crossfuse.resume.data_fingerprint`) is stored under ``"data_fingerprint"``.
    """
    path = Path(out_dir) / RUN_CONFIG_FILE
    record = {"format": FORMAT, "model": model_spec(model), "train": train_config, "metadata": metadata or {}}
    if data_fingerprint is not None:
        record["data_fingerprint"] = data_fingerprint
    ckpt.write_json_atomic(path, json.loads(json.dumps(record)))
    return path


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run; FileNotFoundError / ValueError if it is missing or foreign."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run: no {RUN_CONFIG_FILE} in {run_dir} (is it a crossfuse run directory?)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"run: {path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"run: {path} holds a JSON {type(config).__name__}, expected an object with format {FORMAT!r}")
    if config.get("format") != FORMAT:
        raise ValueError(f"run: {path} has format {config.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in ("model", "train") if not isinstance(config.get(key), dict)]
    if missing:
        raise ValueError(
            f"run: {path} lacks the section(s) {missing}; expected a config.json written by crossfuse train"
        )
    return config


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetEncoding:
    """Maps the user's targets to what the model trains on, and its outputs back.

    Classification: labels ``classes[i]`` <-> class id ``i``. Regression: standardised with the
    training rows' ``mean`` and ``std`` per column; ``vector`` records that y was (N,), not (N, K).
    """

    task: str
    classes: tuple[Any, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    vector: bool = True

    @classmethod
    def fit(cls, task: str, y: Tensor, rows: Tensor | None = None) -> TargetEncoding:
        """Labels from all of ``y``; regression statistics from ``y[rows]`` (the training rows)."""
        if task == "classification":
            if y.dim() != 1 or y.is_floating_point():
                raise ValueError(
                    f"y: classification needs integer labels of shape (N,), got {y.dtype} {tuple(y.shape)}"
                )
            classes = tuple(torch.unique(y).tolist())
            if len(classes) < 2:
                raise ValueError(f"y: classification needs at least 2 classes, got only {list(classes)}")
            return cls(task, classes=classes)
        if task == "multilabel":
            from crossfuse.multilabel import multilabel_targets

            return cls(task, classes=tuple(range(multilabel_targets(y).shape[1])), vector=False)
        if task != "regression":
            raise ValueError(f"task: expected 'classification', 'multilabel' or 'regression', got {task!r}")
        if y.dim() not in (1, 2):
            raise ValueError(f"y: regression needs targets of shape (N,) or (N, K), got {tuple(y.shape)}")
        fitted = (y if rows is None else y[rows]).double().reshape(len(y if rows is None else rows), -1)
        std = fitted.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(task, mean=tuple(fitted.mean(0).tolist()), std=tuple(std.tolist()), vector=y.dim() == 1)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task in ("classification", "multilabel") else len(self.mean)

    def encode(self, y: Tensor) -> Tensor:
        """User targets -> training targets (class ids (N,) long, or standardised float32)."""
        if self.task == "classification":
            known = torch.tensor(self.classes, dtype=y.dtype)
            index = torch.searchsorted(known, y.contiguous()).clamp_max(len(known) - 1)
            unknown = known[index] != y
            if unknown.any():
                raise ValueError(
                    f"y: labels {sorted(set(y[unknown].tolist()))[:10]} are not among "
                    f"the run's classes {list(self.classes)}"
                )
            return index.long()
        if self.task == "multilabel":
            from crossfuse.multilabel import multilabel_targets

            labels = multilabel_targets(y)
            if labels.shape[1] != len(self.classes):
                raise ValueError(f"y: expected {len(self.classes)} label columns as in training, got {tuple(y.shape)}")
            return labels
        expected = (len(self.mean),)
        got = tuple(y.shape[1:]) if y.dim() == 2 else (1,)
        if got != expected:
            raise ValueError(f"y: expected {expected[0]} target column(s) as in training, got shape {tuple(y.shape)}")
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        z = (y.double().reshape(len(y), -1) - mean) / std
        return (z.reshape(y.shape) if y.dim() == 1 else z).float()

    def decode(self, outputs: Tensor) -> Tensor:
        """Model outputs (N, C) -> labels (N,), or (N, K) -> values in the user's units."""
        if self.task == "classification":
            return torch.tensor(self.classes)[outputs.argmax(-1)]
        if self.task == "multilabel":
            return (outputs > 0).long()  # probability > 0.5
        values = outputs.double() * torch.tensor(self.std, dtype=torch.float64) + torch.tensor(
            self.mean, dtype=torch.float64
        )
        return values[:, 0] if self.vector else values

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TargetEncoding:
        return cls(
            record["task"],
            tuple(record.get("classes", ())),
            tuple(record.get("mean", ())),
            tuple(record.get("std", ())),
            bool(record.get("vector", True)),
        )


# ----------------------------------------------------------------------------- reloading


@dataclass
class LoadedRun:
    """A trained model rebuilt from its run directory, in eval mode, with its config and targets."""

    model: FusionModel
    config: dict[str, Any]
    targets: TargetEncoding | None
    checkpoint: Path

    @property
    def task(self) -> str:
        return self.config["train"]["task"]

    def check_data(self, data: MultimodalDataset, argument: str = "data") -> None:
        """ValueError unless ``data`` has the modalities, feature sizes and lengths the model was trained on."""
        specs = self.model.modalities
        if set(data.inputs) != set(specs):
            raise ValueError(
                f"{argument}: expected modalities {sorted(specs)} (as in training), got {sorted(data.inputs)}"
            )
        for name, spec in specs.items():
            got = tuple(data.inputs[name].shape[1:])
            want = (spec.length if spec.length is not None else got[0], spec.dim)
            if got != want:
                raise ValueError(
                    f"{argument}: modality {name!r} expected (N, T, D) = (N, {want[0]}, {want[1]}) as in training, "
                    f"got (N, {got[0]}, {got[1]})"
                )


def build_model(spec: dict[str, Any]) -> FusionModel:
    """Rebuild an (untrained) fusion model from a `model_spec` record."""
    if not spec.get("fusion"):
        raise ValueError(
            f"config.json: model {spec.get('class')!r} is not a registered fusion strategy; cannot rebuild it"
        )
    known = {f.name for f in dataclasses.fields(FusionConfig)}
    unknown = sorted(set(spec["fusion_config"]) - known)
    if unknown:
        raise ValueError(f"config.json: fusion_config has fields {unknown} that this FusionConfig lacks")
    if spec.get("input_encoders"):
        raise ValueError(
            f"config.json: the model has your own input encoders {spec['input_encoders']}, which config.json cannot "
            "rebuild; build the model again with build_fusion(..., encoders=...) and load the weights with "
            "crossfuse.checkpoint.load_weights"
        )
    modalities = {n: ModalitySpec(**s) for n, s in spec["modalities"].items()}

    def build() -> FusionModel:
        return build_fusion(spec["fusion"], modalities, int(spec["num_outputs"]), FusionConfig(**spec["fusion_config"]))

    count = count_parameters(build)
    limit = _memory_bytes() // 2
    if 4 * count > limit:
        raise ValueError(
            f"config.json: the model would hold {count:,} parameters ({4 * count / 2**30:.1f} GiB as float32), "
            f"more than half of this machine's memory ({limit / 2**30:.1f} GiB); check its sizes (dim, layers)"
        )
    return build()


def count_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters of the module ``build()`` returns, built on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        return 2**62


def load_run(run_dir: Path, checkpoint: str = "best") -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load the ``checkpoint`` ("best" or "last") weights.

    Falls back to ``last`` when there is no ``best`` (a run without validation data written by an
    interrupted fit). Loading reads JSON and safetensors only.
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint: expected 'best' or 'last', got {checkpoint!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    try:
        model = build_model(config["model"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"run: {run_dir / RUN_CONFIG_FILE} has an incomplete model section ({error!r})") from None
    found = ckpt.resolve_checkpoint(run_dir / checkpoint) or ckpt.resolve_checkpoint(run_dir / "last")
    if found is None:
        raise FileNotFoundError(f"run: no checkpoint in {run_dir} (expected {checkpoint}/{ckpt.MODEL_FILE})")
    ckpt.load_weights(found, model)
    model.eval()
    targets = config.get("metadata", {}).get("targets")
    return LoadedRun(model, config, None if targets is None else TargetEncoding.from_json(targets), found)
