"""The ``crossfuse`` command: parses arguments, validates them, calls library functions.

Bad input prints one line ``crossfuse: error: ...`` and exits with status 2; no traceback
(set ``CROSSFUSE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from crossfuse import cli_data
from crossfuse.config_file import add_config_argument, apply_config_defaults


class UsageError(Exception):
    """A user mistake the CLI reports in one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_attention_demo(args: argparse.Namespace) -> int:
    """Print a word's attention over a toy image and save the heatmap."""
    from crossfuse.demo import COLOURS, toy_image, word_attention
    from crossfuse.viz.figures import save_attention_demo

    image = toy_image(seed=args.seed)
    weights = word_attention(image, args.word)
    print(f"image (colour ids: {', '.join(f'{i}={c}' for i, c in enumerate(COLOURS))}):")
    for row in image.tolist():
        print("  " + " ".join(str(v) for v in row))
    print(f"attention of the word {args.word!r} over the 6x6 patches (rows sum to {weights.sum():.3f}):")
    for row in weights.tolist():
        print("  " + " ".join(f"{v:.3f}" for v in row))
    on_target = weights[image == COLOURS.index(args.word)].sum().item()
    print(f"attention mass on {args.word} patches: {on_target:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_attention_demo(image, weights, args.word, out / "attention_demo.png")
    print(f"heatmap written to {path}")
    return 0


def _print_lab_end(lab, report: Path, started: float) -> int:
    """Summary lines after a lab run; exit status 1 if any experiment failed, 130 if interrupted."""
    import time

    for record in lab.records:
        verdict = record.result.verdict if record.result is not None else f"FAILED ({record.error})"
        print(f"  {record.name:<18} {verdict}")
    print(f"total time {time.monotonic() - started:.1f}s; report: {report}")
    if lab.failed:
        print(f"crossfuse: {len(lab.failed)} experiment(s) failed: {', '.join(lab.failed)} (see their log.txt)")
    return 130 if lab.interrupted else (1 if lab.failed else 0)


def cmd_lab(args: argparse.Namespace) -> int:
    """Run lab experiments (all, --only a subset, or `lab run NAME`), write results.json and report.html."""
    import time

    from crossfuse.lab.runner import resolve_names, run_lab
    from crossfuse.viz.html import write_report

    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds: expected an integer >= 1, got {args.seeds}")
    one = getattr(args, "name", None)
    names = resolve_names([one], "NAME") if one else resolve_names(args.only)
    _set_threads(args.threads)
    started = time.monotonic()
    lab = run_lab(names, size=args.size, seed=args.seed, num_seeds=args.seeds, out=args.out)
    report = write_report(lab.out)
    return _print_lab_end(lab, report, started)


def cmd_lab_list(args: argparse.Namespace) -> int:
    """Print every experiment with its claim (or why its module cannot be imported)."""
    from crossfuse.lab import result as lab_result

    for name in lab_result.EXPERIMENTS:
        try:
            claim = str(lab_result.load_experiment(name).CLAIM)
        except Exception as error:  # a missing or broken module is listed, not fatal
            claim = f"(not available: {type(error).__name__}: {error})"
        print(f"{name:<18} {claim}")
    return 0


def _add_lab_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--size/--seeds/--seed/--out on `lab` and on `lab run`; the subcommand's own default is SUPPRESS so an
    option given before `run` is not reset by it."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--size", choices=["smoke", "quick", "full"], default=default("quick"))
    parser.add_argument("--seeds", type=int, default=default(None), help="seeds per experiment (default: by size)")
    parser.add_argument("--seed", type=int, default=default(0), help="first seed")
    parser.add_argument("--out", default=default(None), help="new or empty directory (default runs/lab-<time>)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default(1),
        help="torch CPU threads (default 1: the lab's models are small, and more threads on a busy CPU slow them down)",
    )


def _add_lab_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="run the lab experiments and write an HTML report")
    _add_lab_options(lab, top=True)
    lab.add_argument("--only", default=None, help="comma-separated experiment names, e.g. binding,report")
    lab.set_defaults(func=cmd_lab)
    lab_sub = lab.add_subparsers(dest="lab_command")
    lab_sub.add_parser("list", help="list experiments with their claims").set_defaults(func=cmd_lab_list)
    run = lab_sub.add_parser("run", help="run one experiment")
    run.add_argument("name", help="experiment name (see `crossfuse lab list`)")
    _add_lab_options(run, top=False)
    run.set_defaults(func=cmd_lab)


# ----------------------------------------------------------------------------- train / evaluate / predict / compare


def _fusion_config(args: argparse.Namespace):
    from crossfuse.fusion import FusionConfig

    p = getattr(args, "modality_dropout", 0.0)
    if not 0 <= p < 1:
        raise UsageError(f"--modality-dropout: expected a probability in [0, 1), got {p}")
    return FusionConfig(dim=args.dim, num_heads=args.heads, num_layers=args.layers, modality_dropout=p)


def _check_fusions(names: list[str], argument: str) -> None:
    from crossfuse.fusion import FUSIONS

    unknown = [n for n in names if n not in FUSIONS]
    if unknown or not names:
        raise UsageError(
            f"{argument}: unknown fusion strategy {', '.join(map(repr, unknown))}; known: {', '.join(sorted(FUSIONS))}"
        )


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads: expected an integer >= 1, got {threads}")
        torch.set_num_threads(threads)


def _load_training_data(path: str, task: str | None, split_seed: int):
    """(data with user targets, task, 0/1/2 split, split description) for train and compare."""
    from crossfuse.data.npz import load_npz, seeded_split
    from crossfuse.multilabel import infer_task

    data, split = load_npz(path)
    if task is None:
        task, message = infer_task(data.y)
        print(message)
    data = _coerce_targets(data, task)
    source = "file"
    if split is None:
        split, source = seeded_split(len(data), split_seed), f"seeded 70/15/15, split seed {split_seed}"
    for value, name in ((0, "train"), (1, "val")):
        if not (split == value).any():
            raise ValueError(f"--data: the split has no {name} rows (value {value}); expected at least one")
    return data, task, split, source


def _coerce_targets(data, task: str, argument: str = "--task"):
    """Integer-valued float labels become class ids for classification; labels become floats for regression."""
    import torch

    from crossfuse.data.dataset import MultimodalDataset

    y = data.y
    if task == "classification" and y.is_floating_point():
        if y.dim() != 1 or not torch.equal(y, y.round()):
            raise ValueError(
                f"{argument}: classification needs integer labels 'y' of shape (N,), got {y.dtype} {tuple(y.shape)} "
                "with fractional values"
            )
        y = y.long()
    elif task == "regression" and not y.is_floating_point():
        y = y.float()
    elif task == "multilabel":
        from crossfuse.multilabel import multilabel_targets

        y = multilabel_targets(y, argument)
    return MultimodalDataset(data.inputs, y, data.masks)


def _describe_data(path: str, data, split, source: str) -> str:
    import numpy as np

    shapes = ", ".join(f"{n} (T={x.shape[1]}, D={x.shape[2]})" for n, x in data.inputs.items())
    counts = " / ".join(f"{name} {int(np.sum(split == v))}" for v, name in enumerate(("train", "val", "test")))
    return f"data: {path}: {len(data)} samples; modalities {shapes}; split {counts} ({source})"


def _metric_text(metrics: dict[str, float], prefix: str = "") -> str:
    keys = [k for k in ("accuracy", "micro_f1", "macro_f1", "map", "r2", "mse") if f"{prefix}{k}" in metrics]
    return "  ".join(f"{k} {metrics[prefix + k]:.4f}" for k in keys)


def _encoded_parts(data, targets, split) -> dict:
    from crossfuse.data.dataset import MultimodalDataset
    from crossfuse.data.npz import split_dataset

    return split_dataset(MultimodalDataset(data.inputs, targets.encode(data.y), data.masks), split)


def _train_config(args: argparse.Namespace, task: str, seed: int, progress: bool):
    from crossfuse.train import TrainConfig

    return TrainConfig(
        task=task,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        progress=progress,
        balance=getattr(args, "balance", "none"),
        balance_alpha=getattr(args, "balance_alpha", 0.5),
        monitor_gradients=getattr(args, "monitor_gradients", False),
        checkpoint_every_steps=getattr(args, "checkpoint_every", None),
        optimizer=getattr(args, "optimizer", "adamw"),
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Train one fusion strategy on a user .npz; write the run directory."""
    import numpy as np
    import torch

    from crossfuse.fusion import ModalitySpec, build_fusion
    from crossfuse.runs import TargetEncoding, model_spec, prepare_run_dir, read_run_config
    from crossfuse.train import fit, seed_everything

    _check_fusions([args.fusion], "--fusion")
    _set_threads(args.threads)
    data, task, split, source = _load_training_data(args.data, args.task, args.split_seed)
    targets = TargetEncoding.fit(task, data.y, torch.from_numpy(np.flatnonzero(split == 0)))
    parts = _encoded_parts(data, targets, split)
    seed_everything(args.seed)
    modalities = {n: ModalitySpec(dim=x.shape[2], length=x.shape[1]) for n, x in data.inputs.items()}
    model = build_fusion(args.fusion, modalities, targets.num_outputs, _fusion_config(args))
    config = _train_config(args, task, args.seed, progress=not args.quiet)
    out = Path(args.out)
    resuming = prepare_run_dir(out, force=args.force, resume=args.resume)
    if resuming:
        stored = read_run_config(out)
        if stored.get("model") != model_spec(model):
            raise ValueError(
                f"--resume: {out} holds a different model ({stored.get('model', {}).get('fusion')}); "
                "pass the same --fusion/--dim/--heads/--layers and data as before"
            )
    print(_describe_data(args.data, data, split, source))
    classes = f", {targets.num_outputs} classes {list(targets.classes)}" if task == "classification" else ""
    classes = f", {targets.num_outputs} labels" if task == "multilabel" else classes
    dropout = f"; modality dropout {args.modality_dropout}" if args.modality_dropout else ""
    print(f"model: {args.fusion}, {model.num_parameters:,} parameters; task {task}{classes}{dropout}")
    if resuming:
        print(f"resuming {out}")
    metadata = {
        "targets": targets.to_json(),
        "data": {"path": str(Path(args.data).resolve()), "split": source, "split_seed": args.split_seed},
    }
    result = fit(model, parts["train"], parts["val"], config, out_dir=out, resume=resuming, metadata=metadata)
    final, best = result.final, result.best
    print(f"final (epoch {final['epoch']}): val {_metric_text(final, 'val_')}  train_loss {final['train_loss']:.4f}")
    print(f"best  (epoch {best['epoch']}): val {_metric_text(best, 'val_')}")
    for message in result.messages:
        print(f"warning: {message}")
    print(f"run written to {out}/ (config.json, metrics.jsonl, best/, last/) in {result.wall_time_s:.1f} s")
    return 0


def _split_rows(run, data, split, which: str, path: str):
    import numpy as np

    from crossfuse.data.npz import SPLITS, seeded_split

    if which == "all":
        return np.arange(len(data))
    if split is None:
        split = seeded_split(len(data), int(run.config.get("metadata", {}).get("data", {}).get("split_seed", 0)))
    rows = np.flatnonzero(split == SPLITS[which])
    if not len(rows):
        raise ValueError(f"--split: {path} has no {which} rows; pick another split or --split all")
    return rows


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Metrics of a trained run on (a split of) its data or another .npz."""
    import torch

    from crossfuse.ablation import drop
    from crossfuse.data.npz import load_npz
    from crossfuse.multilabel import multilabel_metrics
    from crossfuse.runs import load_run
    from crossfuse.train import classification_metrics, predict, regression_metrics

    run = load_run(Path(args.run), args.checkpoint)
    path = args.data or run.config.get("metadata", {}).get("data", {}).get("path")
    if not path:
        raise UsageError("--data: the run does not record its data file; pass --data")
    data, split = load_npz(path)
    run.check_data(data)
    data = _coerce_targets(data, run.task, f"--data (the run's task is {run.task})")
    rows = _split_rows(run, data, split, args.split, path)
    subset = data.subset(torch.from_numpy(rows))
    dropped = [n.strip() for n in (args.drop or "").split(",") if n.strip()]
    if dropped:
        unknown = [n for n in dropped if n not in data.inputs]
        if unknown:
            raise UsageError(f"--drop: unknown modalities {unknown}; the run's modalities are {list(data.inputs)}")
        subset = drop(subset, dropped)
    outputs = predict(run.model, subset)
    if run.task == "classification":
        metrics = classification_metrics(outputs, run.targets.encode(subset.y))
    elif run.task == "multilabel":
        metrics = multilabel_metrics(outputs, run.targets.encode(subset.y))
    else:
        values = run.targets.decode(outputs).float()
        metrics = regression_metrics(values.reshape(len(rows), -1), subset.y.reshape(len(rows), -1))
    without = f", without {', '.join(dropped)}" if dropped else ""
    where = f"{args.split} ({len(rows)} rows of {path}, {run.checkpoint.name} checkpoint{without})"
    print(f"{where}: {_metric_text(metrics)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predictions of a trained run for every row of a .npz, written as CSV."""
    import csv

    from crossfuse.data.npz import load_npz
    from crossfuse.runs import load_run
    from crossfuse.train import predict

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"--out: {out} already exists; pass --force to overwrite it")
    run = load_run(Path(args.run), args.checkpoint)
    data, _ = load_npz(args.data, require_y=False)
    run.check_data(data)
    outputs = predict(run.model, data)
    values = run.targets.decode(outputs)
    if run.task == "classification":
        header = ["row", "prediction"] + [f"prob_{c}" for c in run.targets.classes]
        extra = outputs.softmax(-1).tolist()
    elif run.task == "multilabel":
        header = ["row"] + [f"label_{k}" for k in run.targets.classes] + [f"prob_{k}" for k in run.targets.classes]
        extra = outputs.sigmoid().tolist()
    else:
        header = ["row"] + (
            ["prediction"] if values.dim() == 1 else [f"prediction_{k}" for k in range(values.shape[1])]
        )
        extra = [[] for _ in range(len(values))]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, (value, more) in enumerate(zip(values.tolist(), extra, strict=True)):
            writer.writerow([i, *(value if isinstance(value, list) else [value]), *(f"{p:.6g}" for p in more)])
    print(f"wrote {len(values)} predictions to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train several strategies over several seeds on one .npz; print and save one table."""
    import csv
    import dataclasses
    import json
    import time

    import numpy as np
    import torch

    from crossfuse.ablation import HEADLINE, ablation, format_ablation, mean_ablation
    from crossfuse.baseline import baseline_metrics, baseline_notice, fit_baseline
    from crossfuse.fusion import ModalitySpec, build_fusion
    from crossfuse.lab.common import mean_std
    from crossfuse.runs import TargetEncoding
    from crossfuse.train import evaluate, fit, seed_everything

    names = [n.strip() for n in args.fusions.split(",") if n.strip()]
    _check_fusions(names, "--fusions")
    _set_threads(args.threads)
    if args.seeds < 1:
        raise UsageError(f"--seeds: expected an integer >= 1, got {args.seeds}")
    out = Path(args.out)
    if (out / "compare.csv").exists() and not args.force:
        raise FileExistsError(f"--out: {out / 'compare.csv'} already exists; pass --force to overwrite it")
    data, task, split, source = _load_training_data(args.data, args.task, args.split_seed)
    targets = TargetEncoding.fit(task, data.y, torch.from_numpy(np.flatnonzero(split == 0)))
    parts = _encoded_parts(data, targets, split)
    print(_describe_data(args.data, data, split, source))
    modalities = {n: ModalitySpec(dim=x.shape[2], length=x.shape[1]) for n, x in data.inputs.items()}
    metric = HEADLINE[task]
    seeds = [args.seed + i for i in range(args.seeds)]
    held_out = "test" if "test" in parts else "val"  # where the gap and the ablation are measured
    started = time.perf_counter()
    baseline = fit_baseline(parts["train"], task, targets.num_outputs)
    base: dict = {"seed": None, "parameters": baseline.num_parameters, "train_time_s": time.perf_counter() - started}
    for split_name in ("val", "test"):
        if split_name in parts:
            scores = baseline_metrics(baseline, parts[split_name]).items()
            base.update({f"{split_name}_{k}": v for k, v in scores if k != "score"})
    print(f"baseline (linear model on pooled, concatenated inputs): val {metric} {base[f'val_{metric}']:.4f}")
    raw: dict[str, list[dict[str, float]]] = {"baseline": [base]}
    ablations: dict[str, list] = {}
    for name in names:
        for i, seed in enumerate(seeds):
            seed_everything(seed)
            model = build_fusion(name, modalities, targets.num_outputs, _fusion_config(args))
            started = time.perf_counter()
            result = fit(model, parts["train"], parts["val"], _train_config(args, task, seed, progress=False))
            record = {"seed": seed, "parameters": model.num_parameters, "train_time_s": time.perf_counter() - started}
            record.update({k: v for k, v in result.final.items() if k.startswith("val_") and k != "val_score"})
            if "test" in parts:
                test = evaluate(model, parts["test"], task)
                record.update({f"test_{k}": v for k, v in test.items() if k != "score"})
            ablations.setdefault(name, []).append(ablation(model, parts[held_out], task))
            raw.setdefault(name, []).append(record)
            print(
                f"{name} seed {i + 1}/{len(seeds)}: val {metric} {record[f'val_{metric}']:.4f} "
                f"({record['train_time_s']:.1f} s)",
                flush=True,
            )
    columns = [c for c in raw[names[0]][0] if c.startswith(("val_", "test_"))]
    headline = f"{held_out}_{metric}"
    summary = []
    for name in ["baseline", *names]:
        records = raw[name]
        entry: dict = {"fusion": name, "parameters": records[0]["parameters"]}
        for c in [*columns, "train_time_s"]:
            values = np.array([r[c] for r in records], dtype=float)
            entry[c] = {"mean": float(values.mean()), "std": float(values.std())}  # ddof=0, as mean_std
        entry["gap"] = entry[headline]["mean"] - summary[0][headline]["mean"] if summary else 0.0
        summary.append(entry)
    header = ["fusion", *columns, "parameters", "train_time_s", f"gap_{headline}"]
    shown = [
        [
            e["fusion"],
            *(mean_std([r[c] for r in raw[e["fusion"]]], digits=4) for c in columns),
            f"{e['parameters']:,}",
            f"{e['train_time_s']['mean']:.1f}",
            "-" if e["fusion"] == "baseline" else f"{e['gap']:+.4f}",
        ]
        for e in summary
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=True)]
    print(f"{task}, mean ± std over {len(seeds)} seed(s), final weights after {args.epochs} epochs:")
    for line in [header, *shown]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    notice = baseline_notice(
        summary[0][headline]["mean"], {e["fusion"]: e[headline]["mean"] for e in summary[1:]}, headline
    )
    if notice:
        print(notice)
    mean_ablations = {name: mean_ablation(results) for name, results in ablations.items()}
    print(f"ablation on {held_out}: {metric} with every modality, then with each one dropped (mean over seeds):")
    print(format_ablation(mean_ablations))
    out.mkdir(parents=True, exist_ok=True)
    stats = [*columns, "train_time_s"]
    with open(out / "compare.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fusion", "parameters", *(f"{c}_{m}" for c in stats for m in ("mean", "std")), "gap"])
        for e in summary:
            means = (f"{e[c][m]:.6g}" for c in stats for m in ("mean", "std"))
            writer.writerow([e["fusion"], e["parameters"], *means, f"{e['gap']:.6g}"])
    record = {"task": task, "data": str(args.data), "split": source, "seeds": seeds, "epochs": args.epochs}
    record["ablation"] = {name: dataclasses.asdict(a) for name, a in mean_ablations.items()}
    (out / "compare.json").write_text(json.dumps({**record, "table": summary, "raw": raw}, indent=1))
    print(f"table written to {out / 'compare.csv'} and {out / 'compare.json'}")
    return 0


def _add_data_and_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help=".npz with one array per modality, y and optionally split")
    parser.add_argument(
        "--task",
        choices=["classification", "multilabel", "regression"],
        default=None,
        help="default: classification for integer (N,) y, multilabel for (N, K) 0/1 y, regression otherwise",
    )
    parser.add_argument(
        "--modality-dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="drop each modality of a training sample with probability P (never all of them)",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64, help="model width")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--layers", type=int, default=2, help="fusion layers")
    parser.add_argument("--seed", type=int, default=0, help="training seed (model init and data order)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 70/15/15 split if the file has none")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest for small models on a busy machine)"
    )


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a fusion strategy on your own .npz data")
    _add_data_and_model_args(train)
    train.add_argument("--fusion", default="cross", help="strategy: early, late, flatten, cross, bicross, gated")
    train.add_argument("--out", required=True, help="run directory (new, or with --force / --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--force", action="store_true", help="delete an existing run in --out first")
    train.add_argument("--balance", choices=["none", "ogm-ge", "aux"], default="none")
    train.add_argument("--balance-alpha", type=float, default=0.5)
    train.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="sgd: momentum 0.9")
    train.add_argument("--monitor-gradients", action="store_true", help="record per-modality gradient norms")
    train.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics of a trained run")
    evaluate.add_argument("--run", required=True, help="run directory written by `crossfuse train`")
    evaluate.add_argument("--data", default=None, help=".npz (default: the training data)")
    evaluate.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    evaluate.add_argument("--drop", default=None, metavar="NAME[,NAME]", help="evaluate with these modalities absent")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="predictions of a trained run for new data, as CSV")
    predict.add_argument("--run", required=True)
    predict.add_argument("--data", required=True, help=".npz with the same modalities (y not needed)")
    predict.add_argument("--out", required=True, help="CSV file to write")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best")
    predict.add_argument("--force", action="store_true", help="overwrite --out")
    predict.set_defaults(func=cmd_predict)

    compare = sub.add_parser("compare", help="train several strategies over seeds; one table")
    _add_data_and_model_args(compare)
    compare.add_argument("--fusions", default="early,late,flatten,cross,bicross", help="comma-separated strategies")
    compare.add_argument("--seeds", type=int, default=3, help="seeds per strategy")
    compare.add_argument("--out", default="runs/compare", help="directory for compare.csv and compare.json")
    compare.add_argument("--force", action="store_true", help="overwrite an existing compare.csv")
    compare.set_defaults(func=cmd_compare)


def cmd_caption_train(args: argparse.Namespace) -> int:
    """Train the report captioner on generated chest films and save it as a run for `crossfuse caption`."""
    from crossfuse.data.radiographs import save_png
    from crossfuse.lab.report_generation import PLANS, train_report_model
    from crossfuse.models.captioner import save_captioner

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise FileExistsError(f"--out: {str(out)!r} exists and is not empty; pass --force to overwrite")
    if args.samples < 0:
        raise ValueError(f"--samples: expected >= 0, got {args.samples}")
    trained = train_report_model(PLANS[args.size], args.seed, progress=lambda text: print(text, flush=True))
    save_captioner(out, trained.model, trained.vocab)
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    for i, study in enumerate(trained.test[: args.samples]):
        save_png(study.image, samples / f"study_{i:02d}.png")
        (samples / f"study_{i:02d}.txt").write_text(study.report + "\n")
    final = trained.fit.final
    print(
        f"validation: loss {final.get('val_loss', float('nan')):.3f}, "
        f"next-token accuracy {final.get('val_token_accuracy', float('nan')):.3f}"
    )
    print(f"captioner saved to {out} (config.json, model.safetensors); {args.samples} held-out films in {samples}")
    if args.samples:
        print(f"try: crossfuse caption --run {out} --image {samples / 'study_00.png'} --heatmaps {out / 'heatmaps'}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    """Write the report of one chest-film PNG; optionally one cross-attention heatmap per word."""
    import math

    import torch

    from crossfuse.data.radiographs import detokenize, load_png
    from crossfuse.models.captioner import load_captioner
    from crossfuse.models.decoding import beam_search, greedy_decode
    from crossfuse.viz.heatmaps import write_word_heatmaps

    if args.beam < 1:
        raise ValueError(f"--beam: expected an integer >= 1, got {args.beam}")
    if not math.isfinite(args.length_penalty):
        raise ValueError(f"--length-penalty: expected a finite number, got {args.length_penalty}")
    model, vocab = load_captioner(Path(args.run))
    image = load_png(Path(args.image), model.config.image_size)
    images = torch.from_numpy(image)[None, None]
    if args.beam == 1:
        out = greedy_decode(model, images, return_attention=True)
    else:
        out = beam_search(model, images, args.beam, length_penalty=args.length_penalty, return_attention=True)
    words = vocab.words(out.tokens[0])
    print(detokenize(words))
    if args.heatmaps:
        paths = write_word_heatmaps(image, words, out.mean_attention(0), Path(args.heatmaps), grid=model.grid)
        print(f"{len(paths)} word heatmaps (cross-attention, mean over layers and heads) written to {args.heatmaps}")
    return 0


def _add_caption_parsers(sub: argparse._SubParsersAction) -> None:
    caption = sub.add_parser("caption", help="write the report of a chest-film PNG with a trained captioner")
    caption.add_argument("--run", required=True, help="run directory written by `crossfuse caption-train`")
    caption.add_argument("--image", required=True, help="grayscale PNG of the model's image size (64x64)")
    caption.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    caption.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length**alpha")
    caption.add_argument("--heatmaps", default=None, help="directory for one attention heatmap PNG per word")
    caption.set_defaults(func=cmd_caption)

    train = sub.add_parser("caption-train", help="train the report captioner on generated chest films")
    train.add_argument("--out", required=True, help="run directory to create")
    train.add_argument("--size", choices=["smoke", "quick", "full"], default="quick", help="data/training budget")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--samples", type=int, default=4, help="held-out films (PNG + reference) to save")
    train.add_argument("--force", action="store_true", help="write into a non-empty --out")
    train.set_defaults(func=cmd_caption_train)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="crossfuse",
        description="Multimodal fusion with cross-attention: train and compare fusion strategies on your data, "
        "caption images, and run the lab.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("attention-demo", help="attention of a word over a toy image, printed and saved")
    demo.add_argument("--word", default="red", choices=["red", "green", "blue"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=cmd_attention_demo)
    _add_train_parsers(sub)
    _add_lab_parser(sub)
    _add_caption_parsers(sub)
    cli_data.register(sub)
    for command in ("train", "compare"):
        add_config_argument(sub.choices[command])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ignored = apply_config_defaults(parser, argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"crossfuse: error: {error}", file=sys.stderr)
        return 2
    if ignored:
        print(f"config: not command-line options, ignored: {', '.join(ignored)}", file=sys.stderr)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, OSError) as error:
        if os.environ.get("CROSSFUSE_DEBUG"):
            raise
        print(f"crossfuse: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crossfuse: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; the traceback on request
        if os.environ.get("CROSSFUSE_DEBUG"):
            raise
        print(
            f"crossfuse: internal error: {type(error).__name__}: {error} (CROSSFUSE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
