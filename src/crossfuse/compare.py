"""Several fusion strategies trained over several seeds on one data set: one table of mean ± std.

`compare_fusions` trains every (strategy, seed) pair with `crossfuse.train.fit`, scores the final
weights on the validation rows (and the test rows when the split has them) and returns a `Comparison`;
`Comparison.write` saves ``compare.csv`` (one row per strategy, mean and std of every metric),
``compare.json`` (the table, every seed's record and per-epoch curves, the settings), ``compare.png`` (bar
chart with error bars over seeds, `crossfuse.curves.compare_figure`) and ``compare_curves.png`` (training
loss and the validation headline metric per epoch, mean ± std over seeds per strategy,
`crossfuse.curves.compare_curves_figure`). Standard deviations are over seeds, ddof=0.

Two references come with every comparison: a linear baseline (`crossfuse.baseline`: a linear model on
the mean-pooled, concatenated inputs) as the table's first row, with each strategy's ``gap`` to it on
the held-out split's headline metric and a one-line notice when no strategy beats it by more than 0.01;
and a per-modality ablation (`crossfuse.ablation`: each modality dropped at test time), mean over seeds.

Shapes: no tensors at this level; data as in `crossfuse.data.targets.TrainingData`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossfuse.ablation import HEADLINE, Ablation, ablation, format_ablation, mean_ablation
from crossfuse.atomic import atomic_write_text
from crossfuse.baseline import baseline_metrics, baseline_notice, fit_baseline
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.npz import split_dataset
from crossfuse.data.targets import TrainingData
from crossfuse.fusion import FUSIONS, FusionConfig, ModalitySpec, build_fusion
from crossfuse.lab.common import mean_std
from crossfuse.runs import TargetEncoding
from crossfuse.train import TrainConfig, evaluate, fit, seed_everything

FILES = ("compare.csv", "compare.json", "compare.png", "compare_curves.png")


def check_fusion_names(names: Sequence[str], argument: str = "fusions") -> None:
    """ValueError naming ``argument`` unless every name is a registered strategy (and there is one)."""
    unknown = [n for n in names if n not in FUSIONS]
    if unknown or not names:
        shown = ", ".join(map(repr, unknown)) or "(none given)"
        raise ValueError(f"{argument}: unknown fusion strategy {shown}; known: {', '.join(sorted(FUSIONS))}")


def main_metric(task: str) -> str:
    """The metric the table and the chart lead with (accuracy, map or r2)."""
    return HEADLINE[task]


@dataclass
class Comparison:
    """Per-strategy records (one per seed) and the settings that produced them."""

    task: str
    seeds: list[int]
    epochs: int
    settings: dict[str, Any]
    raw: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)  # the linear baseline's record (same columns)
    ablations: dict[str, list[Ablation]] = field(default_factory=dict)  # per strategy, one per seed
    held_out: str = "val"  # the split the gap and the ablation are measured on ("test" when there is one)
    curves: dict[str, list[dict[str, list[float]]]] = field(default_factory=dict)  # per strategy, one per seed

    @property
    def headline(self) -> str:
        """The column the gap is measured on, e.g. ``test_accuracy``."""
        return f"{self.held_out}_{main_metric(self.task)}"

    def gaps(self) -> dict[str, float]:
        """Each strategy's mean headline metric minus the baseline's (positive = better than the baseline)."""
        if not self.baseline:
            return {}
        base = self.baseline[self.headline]
        return {name: float(np.mean([r[self.headline] for r in rs])) - base for name, rs in self.raw.items()}

    def notice(self, margin: float = 0.01) -> str:
        """One line when no strategy beats the baseline by more than ``margin``; else ""."""
        if not self.baseline:
            return ""
        means = {name: float(np.mean([r[self.headline] for r in rs])) for name, rs in self.raw.items()}
        return baseline_notice(self.baseline[self.headline], means, self.headline, margin)

    def ablation_lines(self) -> list[str]:
        """The ablation table (mean over seeds): the headline metric, then each modality dropped."""
        if not self.ablations:
            return []
        table = format_ablation({name: mean_ablation(results) for name, results in self.ablations.items()})
        return table.splitlines()

    @property
    def columns(self) -> list[str]:
        first = next(iter(self.raw.values()))[0]
        return [c for c in first if c.startswith(("val_", "test_"))]

    def _rows(self) -> dict[str, list[dict[str, float]]]:
        return {**({"baseline": [self.baseline]} if self.baseline else {}), **self.raw}

    def summary(self) -> list[dict[str, Any]]:
        """One entry per row (the baseline first): parameters, {"mean", "std"} of every metric and the
        training time, and ``gap`` (the baseline's is 0)."""
        table, gaps = [], self.gaps()
        for name, records in self._rows().items():
            entry: dict[str, Any] = {"fusion": name, "parameters": records[0]["parameters"]}
            for c in [*self.columns, "train_time_s"]:
                values = np.array([r[c] for r in records], dtype=float)
                entry[c] = {"mean": float(values.mean()), "std": float(values.std())}
            entry["gap"] = gaps.get(name, 0.0)
            table.append(entry)
        return table

    def table_lines(self) -> list[str]:
        """The printed table: a header line, the baseline row, one line per strategy, columns aligned."""
        gaps = self.gaps()
        header = ["fusion", *self.columns, "parameters", "train_time_s", *([f"gap_{self.headline}"] if gaps else [])]
        rows = [
            [
                name,
                *(mean_std([r[c] for r in records], digits=4) for c in self.columns),
                f"{records[0]['parameters']:,}",
                f"{np.mean([r['train_time_s'] for r in records]):.1f}",
                *([f"{gaps[name]:+.4f}" if name in gaps else "-"] if gaps else []),
            ]
            for name, records in self._rows().items()
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
        return [
            "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *rows]
        ]

    def write(self, out: str | Path) -> list[Path]:
        """Write `FILES` into ``out`` (created); return their paths in that order."""
        from crossfuse.curves import compare_curves_figure, compare_figure

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        stats = [*self.columns, "train_time_s"]
        lines = [["fusion", "parameters", *(f"{c}_{m}" for c in stats for m in ("mean", "std")), "gap"]]
        lines += [
            [
                e["fusion"],
                e["parameters"],
                *(f"{e[c][m]:.6g}" for c in stats for m in ("mean", "std")),
                f"{e['gap']:.6g}",
            ]
            for e in summary
        ]
        paths = [out / name for name in FILES]
        with open(paths[0], "w", newline="") as handle:
            csv.writer(handle).writerows(lines)
        record = {"task": self.task, "seeds": self.seeds, "epochs": self.epochs, **self.settings}
        record["ablation"] = {n: dataclasses.asdict(mean_ablation(a)) for n, a in self.ablations.items()}
        record["held_out"] = self.held_out
        raw = {**self.raw, **({"baseline": [self.baseline]} if self.baseline else {})}
        payload = {**record, "table": summary, "raw": raw, "curves": self.curves}
        atomic_write_text(paths[1], json.dumps(payload, indent=1))
        metric = f"val_{main_metric(self.task)}"
        compare_figure({n: [r[metric] for r in rs] for n, rs in self.raw.items()}, metric, paths[2])
        compare_curves_figure(self.curves, ("train_loss", metric), paths[3])
        return paths


def compare_fusions(
    names: Sequence[str],
    training: TrainingData,
    fusion_config: FusionConfig,
    train_config: TrainConfig,
    seeds: Sequence[int],
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Train each strategy in ``names`` once per seed (``train_config`` with its ``seed`` replaced).

    ``progress`` receives one line per finished (strategy, seed). The final weights are scored: the
    ``val_*`` metrics of the last epoch and, when the split has test rows, ``test_*`` metrics. The linear
    baseline is fitted first; the ablation runs on the test rows (else the validation rows).
    """
    check_fusion_names(names)
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got none")
    data, split, task = training.data, training.split, training.task
    targets = TargetEncoding.fit(task, data.y, torch.from_numpy(np.flatnonzero(split == 0)))
    parts = split_dataset(MultimodalDataset(data.inputs, targets.encode(data.y), data.masks), split)
    modalities = {n: ModalitySpec(dim=x.shape[2], length=x.shape[1]) for n, x in data.inputs.items()}
    metric = main_metric(task)
    settings = {"split": training.source, "fusion_config": dataclasses.asdict(fusion_config)}
    result = Comparison(task, list(seeds), train_config.epochs, settings)
    result.held_out = "test" if "test" in parts else "val"
    started = time.perf_counter()
    baseline = fit_baseline(parts["train"], task, targets.num_outputs)
    result.baseline = {"seed": -1, "parameters": baseline.num_parameters, "train_time_s": time.perf_counter() - started}
    for split_name in ("val", "test"):
        if split_name in parts:
            scores = baseline_metrics(baseline, parts[split_name]).items()
            result.baseline.update({f"{split_name}_{k}": v for k, v in scores if k != "score"})
    if progress is not None:
        score = result.baseline[f"val_{metric}"]
        progress(f"baseline (linear model on pooled, concatenated inputs): val {metric} {score:.4f}")
    for name in names:
        for i, seed in enumerate(seeds):
            seed_everything(seed)
            model = build_fusion(name, modalities, targets.num_outputs, fusion_config)
            started = time.perf_counter()
            fitted = fit(model, parts["train"], parts["val"], dataclasses.replace(train_config, seed=seed, task=task))
            record = {"seed": seed, "parameters": model.num_parameters, "train_time_s": time.perf_counter() - started}
            record.update({k: v for k, v in fitted.final.items() if k.startswith("val_") and k != "val_score"})
            if "test" in parts:
                scores = evaluate(model, parts["test"], task)
                record.update({f"test_{k}": v for k, v in scores.items() if k != "score"})
            result.raw.setdefault(name, []).append(record)
            result.curves.setdefault(name, []).append(
                {k: [float(h.get(k, float("nan"))) for h in fitted.history] for k in ("train_loss", f"val_{metric}")}
            )
            result.ablations.setdefault(name, []).append(ablation(model, parts[result.held_out], task))
            if progress is not None:
                progress(
                    f"{name} seed {i + 1}/{len(seeds)}: val {metric} {record[f'val_{metric}']:.4f} "
                    f"({record['train_time_s']:.1f} s)"
                )
    return result
