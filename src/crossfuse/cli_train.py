"""``crossfuse train``, ``evaluate``, ``predict`` and ``compare``: fusion strategies on the user's data.

crossfuse train --data data.npz --fusion cross --out runs/x      (writes a run directory)
crossfuse evaluate --run runs/x [--data other.npz] [--split test]
crossfuse predict --run runs/x --data new.npz --out predictions.csv
crossfuse compare --data data.npz --fusions early,late,cross --seeds 3 --out runs/compare
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from crossfuse.balance import BALANCE_METHODS
from crossfuse.data.npz import SPLITS
from crossfuse.fusion import FUSIONS, FusionConfig
from crossfuse.precision import DEVICE_KINDS, PRECISIONS
from crossfuse.train import OPTIMIZERS, TASKS, TrainConfig

CHECKPOINTS = ("best", "last")
_TRAIN_DEFAULTS = TrainConfig()
_FUSION_DEFAULTS = FusionConfig()
# TrainConfig field -> argparse dest where the two names differ
TRAIN_FIELDS = {"checkpoint_every_steps": "checkpoint_every"}


def fusion_config(args: argparse.Namespace) -> FusionConfig:
    p = getattr(args, "modality_dropout", 0.0)
    if not 0 <= p < 1:
        raise ValueError(f"modality_dropout: expected a probability in [0, 1), got {p}")
    return FusionConfig(dim=args.dim, num_heads=args.heads, num_layers=args.layers, modality_dropout=p)


def train_config(args: argparse.Namespace, task: str, progress: bool) -> TrainConfig:
    """A TrainConfig from the options this command has; the others keep the dataclass defaults."""
    given = vars(args)
    values = {}
    for f in dataclasses.fields(TrainConfig):
        dest = TRAIN_FIELDS.get(f.name, f.name)
        if dest in given:
            values[f.name] = given[dest]
    return TrainConfig(**{**values, "task": task, "progress": progress})


def checked_train_config(args: argparse.Namespace, progress: bool) -> TrainConfig:
    """`train_config` checked by the library, at least one epoch (0 epochs have no result), the DDP
    environment, the device's presence and TensorBoard's import: all before anything touches the disk."""
    from crossfuse.metrics_log import check_tensorboard
    from crossfuse.precision import resolve_device
    from crossfuse.train import check_config, check_environment

    config = train_config(args, args.task or "classification", progress)
    check_config(config)
    if config.epochs < 1:
        raise ValueError(f"epochs: expected an integer >= 1 for a run, got {config.epochs}")
    check_environment()
    resolve_device(config.device)  # a missing GPU is reported now, not after the run directory is prepared
    if config.tensorboard:
        check_tensorboard()
    return config


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected an integer >= 1, got {threads}")
        torch.set_num_threads(threads)


def _metric_text(metrics: dict[str, float], prefix: str = "") -> str:
    keys = [
        k for k in ("accuracy", "micro_f1", "macro_f1", "map", "r2", "mse_y_units", "mse") if f"{prefix}{k}" in metrics
    ]
    return "  ".join(f"{k} {metrics[prefix + k]:.4f}" for k in keys)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one fusion strategy on a user .npz; write the run directory."""
    import numpy as np
    import torch

    from crossfuse.compare import check_fusion_names
    from crossfuse.data.dataset import MultimodalDataset
    from crossfuse.data.npz import split_dataset
    from crossfuse.data.targets import load_training_data
    from crossfuse.fusion import ModalitySpec, build_fusion
    from crossfuse.runs import TargetEncoding, model_spec, prepare_run_dir, read_run_config
    from crossfuse.train import fit, seed_everything

    # Everything is checked before the run directory is touched (a failing --force keeps the old run).
    check_fusion_names([args.fusion], "fusion")
    set_threads(args.threads)
    config = checked_train_config(args, progress=not args.quiet)
    training = load_training_data(args.data, args.task, args.split_seed)
    config = dataclasses.replace(config, task=training.task)
    data, split = training.data, training.split
    targets = TargetEncoding.fit(training.task, data.y, torch.from_numpy(np.flatnonzero(split == 0)))
    parts = split_dataset(MultimodalDataset(data.inputs, targets.encode(data.y), data.masks), split)
    seed_everything(args.seed)
    modalities = {n: ModalitySpec(dim=x.shape[2], length=x.shape[1]) for n, x in data.inputs.items()}
    model = build_fusion(args.fusion, modalities, targets.num_outputs, fusion_config(args))
    out = Path(args.out)
    if args.resume and (out / "config.json").is_file():
        stored = read_run_config(out)
        if stored.get("model") != model_spec(model):
            raise ValueError(
                f"resume: {out} holds a different model ({stored.get('model', {}).get('fusion')}); "
                "pass the same --fusion/--dim/--heads/--layers and data as before"
            )
    resuming = prepare_run_dir(out, force=args.force, resume=args.resume, kind="fusion")
    if training.notice:
        print(training.notice)
    print(training.describe(args.data))
    classes = f", {targets.num_outputs} classes {list(targets.classes)}" if training.task == "classification" else ""
    classes = f", {targets.num_outputs} labels" if training.task == "multilabel" else classes
    dropout = f"; modality dropout {args.modality_dropout}" if args.modality_dropout else ""
    print(f"model: {args.fusion}, {model.num_parameters:,} parameters; task {training.task}{classes}{dropout}")
    if resuming:
        print(f"resuming {out} if it matches this data and these options (checked before anything is written)")
    metadata = {
        "targets": targets.to_json(),
        "data": {"path": str(Path(args.data).resolve()), "split": training.source, "split_seed": args.split_seed},
    }
    objective = None  # the trainer's default for the task; regression reports its val mse in units of y
    if training.task == "regression":
        from crossfuse.evaluation import FusionObjective

        objective = FusionObjective("regression", target_scale=tuple(float(s) for s in targets.std))
    result = fit(model, parts["train"], parts["val"], config, objective, out, resume=resuming, metadata=metadata)
    final, best = result.final, result.best
    print(f"final (epoch {final['epoch']}): val {_metric_text(final, 'val_')}  train_loss {final['train_loss']:.4f}")
    print(f"best  (epoch {best['epoch']}): val {_metric_text(best, 'val_')}")
    for message in result.messages:
        print(f"warning: {message}")
    from crossfuse.curves import plot_run

    plot_run(out)
    print(f"run written to {out}/ (config.json, metrics.jsonl, curves.png, best/, last/) in {result.wall_time_s:.1f} s")
    return 0


def _split_rows(run, data, split, which: str, path: str):
    import numpy as np

    from crossfuse.data.npz import seeded_split

    if which == "all":
        return np.arange(len(data))
    if split is None:
        split = seeded_split(len(data), int(run.config.get("metadata", {}).get("data", {}).get("split_seed", 0)))
    rows = np.flatnonzero(split == SPLITS[which])
    if not len(rows):
        raise ValueError(f"split: {path} has no {which} rows; pick another split or --split all")
    return rows


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Metrics of a trained run on (a split of) its data or another .npz."""
    import torch

    from crossfuse.ablation import drop
    from crossfuse.data.directory import load_data
    from crossfuse.data.targets import coerce_targets
    from crossfuse.multilabel import multilabel_metrics
    from crossfuse.runs import load_run
    from crossfuse.train import classification_metrics, predict, regression_metrics

    run = load_run(Path(args.run), args.checkpoint)
    _run_on_device(run, args)
    path = args.data or run.config.get("metadata", {}).get("data", {}).get("path")
    if not path:
        raise ValueError("data: the run does not record its data file; pass --data")
    data, split = load_data(path)
    run.check_data(data)
    data = coerce_targets(data, run.task, f"data (the run's task is {run.task})")
    rows = _split_rows(run, data, split, args.split, path)
    subset = data.subset(torch.from_numpy(rows))
    dropped = [n.strip() for n in (args.drop or "").split(",") if n.strip()]
    if dropped:
        subset = drop(subset, dropped)  # "drop: unknown modalities ..." names the flag
    outputs = predict(run.model, subset, precision=args.precision).float().cpu()
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

    from crossfuse.data.directory import load_data
    from crossfuse.runs import load_run
    from crossfuse.train import predict

    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"out: {out} is a directory; expected a CSV file name")
    if out.exists() and not args.force:
        raise FileExistsError(f"out: {out} already exists; pass --force to overwrite it")
    run = load_run(Path(args.run), args.checkpoint)
    _run_on_device(run, args)
    data, _ = load_data(args.data, require_y=False)
    run.check_data(data)
    if len(data) == 0:
        raise ValueError(f"data: {args.data} has 0 rows; nothing to predict")
    outputs = predict(run.model, data, precision=args.precision).float().cpu()
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
    """Train several strategies over several seeds on one .npz; print and save one table and a bar chart."""
    from crossfuse.compare import FILES, check_fusion_names, compare_fusions, main_metric
    from crossfuse.data.targets import load_training_data

    names = [n.strip() for n in args.fusions.split(",") if n.strip()]
    check_fusion_names(names, "fusions")
    set_threads(args.threads)
    if args.seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {args.seeds}")
    config = checked_train_config(args, progress=False)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {out} exists and is not a directory")
    taken = [str(out / f) for f in FILES if (out / f).exists()]
    if taken and not args.force:
        raise FileExistsError(f"out: {', '.join(taken)} already exist(s); pass --force to overwrite")
    training = load_training_data(args.data, args.task, args.split_seed)
    if training.notice:
        print(training.notice)
    print(training.describe(args.data))
    seeds = [args.seed + i for i in range(args.seeds)]
    result = compare_fusions(
        names, training, fusion_config(args), config, seeds, progress=lambda line: print(line, flush=True)
    )
    result.settings["data"] = str(args.data)
    print(f"{result.task}, mean ± std over {len(seeds)} seed(s), final weights after {config.epochs} epochs:")
    for line in result.table_lines():
        print(line)
    if result.notice():
        print(result.notice())
    metric = main_metric(result.task)
    print(f"ablation on {result.held_out}: {metric} with every modality, then each one dropped (mean over seeds):")
    for line in result.ablation_lines():
        print(line)
    paths = result.write(out)
    print(f"table written to {paths[0]} and {paths[1]}; bar chart (error bars over seeds) in {paths[2]}")
    print(f"curves per epoch (mean ± std over seeds) in {paths[3]}")
    return 0


def _add_data_and_model_args(parser: argparse.ArgumentParser) -> None:
    d, f = _TRAIN_DEFAULTS, _FUSION_DEFAULTS
    parser.add_argument("--data", required=True, help=".npz (or data-set directory) with one array per modality and y")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=None,
        help="None: classification for integer (N,) y, multilabel for (N, K) 0/1 y, regression otherwise",
    )
    parser.add_argument(
        "--modality-dropout",
        type=float,
        default=_FUSION_DEFAULTS.modality_dropout,
        metavar="P",
        help="drop each modality of a training sample with probability P (never all of them)",
    )
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (warm-up, then cosine decay)")
    parser.add_argument("--dim", type=int, default=f.dim, help="model width")
    parser.add_argument("--heads", type=int, default=f.num_heads, help="attention heads")
    parser.add_argument("--layers", type=int, default=f.num_layers, help="fusion layers")
    parser.add_argument("--seed", type=int, default=d.seed, help="training seed (model init and data order)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 70/15/15 split if the file has none")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest for small models on a busy machine)"
    )
    _add_device_args(parser, _TRAIN_DEFAULTS.device, _TRAIN_DEFAULTS.precision)


def _add_device_args(parser: argparse.ArgumentParser, device: str, precision: str) -> None:
    kinds = ", ".join(DEVICE_KINDS)
    parser.add_argument("--device", default=device, help=f"{kinds} or cuda:N (auto: CUDA when available)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=precision, help="autocast dtype (fp16 with a gradient scaler)"
    )


def _run_on_device(run, args: argparse.Namespace) -> None:
    """Move a loaded run's model to --device (weights stay float32; --precision only autocasts)."""
    from crossfuse.precision import check_precision, resolve_device

    check_precision(args.precision)
    run.model.to(resolve_device(args.device))


def register(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``train``, ``evaluate``, ``predict`` and ``compare`` to the ``crossfuse`` command."""
    d = _TRAIN_DEFAULTS
    train = sub.add_parser("train", help="train a fusion strategy on your own .npz data", formatter_class=formatter)
    _add_data_and_model_args(train)
    train.add_argument("--fusion", default="cross", choices=sorted(FUSIONS), help="fusion strategy")
    train.add_argument("--out", required=True, help="run directory (new, or with --force / --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--force", action="store_true", help="start over: empty --out if it is a crossfuse fusion run")
    train.add_argument("--balance", choices=BALANCE_METHODS, default=d.balance, help="modality balancing")
    train.add_argument("--balance-alpha", type=float, default=d.balance_alpha, help="strength of --balance")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="sgd: momentum 0.9")
    train.add_argument("--monitor-gradients", action="store_true", help="record per-modality gradient norms")
    train.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every_steps, help="also checkpoint every N steps"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--tensorboard", action="store_true", help="also write the metrics as TensorBoard events into --out"
    )
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics of a trained run", formatter_class=formatter)
    evaluate.add_argument("--run", required=True, help="run directory written by `crossfuse train`")
    evaluate.add_argument("--data", default=None, help=".npz or data-set directory (None: the training data)")
    evaluate.add_argument("--split", choices=[*SPLITS, "all"], default="test", help="rows to score")
    evaluate.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="which weights")
    evaluate.add_argument("--drop", default=None, metavar="NAME[,NAME]", help="evaluate with these modalities absent")
    _add_device_args(evaluate, "cpu", "fp32")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser(
        "predict", help="predictions of a trained run for new data, as CSV", formatter_class=formatter
    )
    predict.add_argument("--run", required=True, help="run directory written by `crossfuse train`")
    predict.add_argument(
        "--data", required=True, help=".npz or data-set directory with the same modalities (y not needed)"
    )
    predict.add_argument("--out", required=True, help="CSV file to write")
    predict.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="which weights")
    predict.add_argument("--force", action="store_true", help="overwrite --out")
    _add_device_args(predict, "cpu", "fp32")
    predict.set_defaults(func=cmd_predict)

    compare = sub.add_parser(
        "compare", help="train several strategies over seeds; one table", formatter_class=formatter
    )
    _add_data_and_model_args(compare)
    compare.add_argument("--fusions", default="early,late,flatten,cross,bicross", help="comma-separated strategies")
    compare.add_argument("--seeds", type=int, default=3, help="seeds per strategy")
    compare.add_argument(
        "--out", default="runs/compare", help="directory for compare.csv, .json, .png, compare_curves.png"
    )
    compare.add_argument("--force", action="store_true", help="overwrite existing compare files")
    compare.set_defaults(func=cmd_compare)
