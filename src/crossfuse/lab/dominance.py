"""Modality dominance: does an easy modality starve the other one, and does OGM-GE fix it?

Data (`crossfuse.data.dominance`, defaults fixed before any run): C = 4 classes. The ``easy``
modality (4 tokens x 8 features) shows a class prototype plus small noise; for 80% of samples
(*reliable*) it is the true class's prototype, for the rest a uniformly random class's (a
misleading shortcut), so alone it caps accuracy at 85%. The ``hard`` modality (16 tokens x 16
features) holds ``±a·u_y`` with a random sign per token plus unit noise: its mean is zero, the class
lies in which orthonormal direction ``u_c`` carries extra energy, so an encoder must learn to read
it; the known-direction oracle gets ~96%. The hard modality is what a model needs for the
misleading 20% and for robustness when the easy modality is missing or corrupted.

Model and training, identical for every method: ``cross`` fusion (dim 32, 2 heads, one encoder
self-attention block per modality, one cross-attention layer; ``easy`` queries ``hard``, so
the hard stream's logit contribution comes from its encoder alone, the unimodal score OGM-GE's
ratio assumes), `crossfuse.train.fit` with AdamW (lr 2e-3, batch 64) and the same initial
weights per seed. Methods (``TrainConfig.balance``): ``none``; ``ogm-ge`` (Peng et al., 2022,
alpha 0.5); ``aux`` (unimodal auxiliary losses, weight 0.5); and the ablation ``ogm-no-ge``
(OGM's modulation without the GE noise) to separate the two parts of OGM-GE. `fit` optimises
with AdamW, whose per-parameter normalisation partly undoes a slowly varying gradient scale;
OGM-GE was proposed with SGD.

Measured per method and seed: per-step gradient norm of each modality's encoder (before any
rebalancing, `GradientNormMonitor`), linear-probe accuracy of each frozen encoder (masked-mean
pooled encoder output, standardised, multinomial logistic regression fitted with L-BFGS on the
training split, scored on the test split), multimodal test accuracy, accuracy with the easy
modality masked out (all positions invalid), corrupted (its inputs permuted across test samples)
and on the test samples whose easy modality misleads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossfuse.balance import OGMGE, GradientNormMonitor
from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.dominance import DominanceConfig, DominanceSplit, dominance_splits
from crossfuse.fusion import FusionConfig, FusionModel, ModalitySpec, build_fusion
from crossfuse.fusion.head import masked_mean
from crossfuse.lab.common import figure_png, mean_std, verdict
from crossfuse.lab.result import Progress, Result, Size, Table
from crossfuse.train import FitResult, TrainConfig, fit, predict

CLAIM = (
    "When one modality predicts the label quickly, cross-attention fusion trained jointly starves the other "
    "modality's encoder of gradient, and OGM-GE gradient modulation makes that encoder learn more without "
    "costing multimodal accuracy."
)
SHARE_THRESHOLD = 0.20
SHARE_WINDOW = 20
PROBE_GAIN = 0.05
ACCURACY_TOLERANCE = 0.01
PRECONDITION = (
    "The hard modality is starved: without rebalancing, the hard encoder's linear-probe accuracy is at least 10 "
    "points below that of a hard-only trained encoder."
)
CRITERION = (
    "Supported if, averaged over seeds, all three hold: (1) with no rebalancing the hard modality's gradient "
    f"share (its encoder gradient norm over the sum of both encoders', {SHARE_WINDOW}-step moving average of the "
    f"seed-mean curve) falls below {SHARE_THRESHOLD:.0%} at some point of training; (2) with OGM-GE (alpha 0.5) "
    f"the hard encoder's linear-probe test accuracy is at least {PROBE_GAIN * 100:.0f} points above no "
    f"rebalancing; (3) OGM-GE's multimodal test accuracy is at most {ACCURACY_TOLERANCE * 100:.0f} point below "
    "no rebalancing."
)

METHODS = ("none", "ogm-ge", "aux", "ogm-no-ge")
"""``TrainConfig.balance`` values, plus the ablation "ogm-no-ge": OGM's modulation without the GE noise."""
EASY, HARD = "easy", "hard"
ALPHA = 0.5


@dataclass(frozen=True)
class Plan:
    """Seeds, data and training budget of one size."""

    seeds: int
    expected_s: float | None
    judged: bool
    n_train: int
    n_test: int
    epochs: int


PLANS: dict[Size, Plan] = {
    "smoke": Plan(1, 10.0, False, n_train=192, n_test=128, epochs=1),
    "quick": Plan(3, 140.0, True, n_train=2000, n_test=1000, epochs=10),
    "full": Plan(5, None, True, n_train=4000, n_test=2000, epochs=15),
}
FUSION = FusionConfig(dim=32, num_heads=2, num_layers=1, encoder_layers=1, mlp_ratio=2.0, direction="a->b")


def build_model(data: MultimodalDataset, num_classes: int, seed: int) -> FusionModel:
    """The cross-attention fusion model of every method, initialised from ``seed``."""
    specs = {name: ModalitySpec(x.shape[-1], x.shape[1]) for name, x in data.inputs.items()}
    torch.manual_seed(seed)
    return build_fusion("cross", specs, num_classes, FUSION)


@torch.no_grad()
def encoder_features(model: FusionModel, name: str, data: MultimodalDataset, batch_size: int = 512) -> torch.Tensor:
    """Masked-mean pooled output of one modality's encoder.

    Shapes: data.inputs[name]: (N, T, D_m)  ->  (N, dim)
    """
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(data), batch_size):
        x = data.inputs[name][start : start + batch_size]
        mask = data.masks[name][start : start + batch_size]
        parts.append(masked_mean(model.encoders[name](x, mask).x, mask))
    model.train(was_training)
    return torch.cat(parts)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_y: torch.Tensor,
    test_features: torch.Tensor,
    test_y: torch.Tensor,
    l2: float = 1e-3,
    iterations: int = 100,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised frozen features.

    Zero-initialised and fitted full-batch with L-BFGS (a convex problem), so it is deterministic.
    Shapes: train_features: (N, F)  train_y: (N,)  test_features: (M, F)  test_y: (M,)  ->  float
    """
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    classes = int(max(train_y.max(), test_y.max()).item()) + 1
    weight = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return ((xte @ weight + bias).argmax(-1) == test_y).float().mean().item()


def probe(model: FusionModel, train: MultimodalDataset, test: MultimodalDataset) -> dict[str, float]:
    """Linear-probe test accuracy of each modality's frozen encoder. Shapes: -> {name: float}"""
    return {
        name: linear_probe_accuracy(
            encoder_features(model, name, train), train.y, encoder_features(model, name, test), test.y
        )
        for name in model.modalities
    }


def accuracy_conditions(model: FusionModel, test: DominanceSplit, seed: int) -> dict[str, float]:
    """Accuracy on the test split: as is, easy modality masked out, easy corrupted, easy misleading."""
    data = test.data
    y = data.y

    def accuracy(d: MultimodalDataset, rows: torch.Tensor | None = None) -> float:
        correct = predict(model, d).argmax(-1) == y
        return (correct if rows is None else correct[rows]).float().mean().item()

    masked = MultimodalDataset(data.inputs, y, {**data.masks, EASY: torch.zeros_like(data.masks[EASY])})
    permutation = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    corrupted = MultimodalDataset({**data.inputs, EASY: data.inputs[EASY][permutation]}, y)
    return {
        "multimodal": accuracy(data),
        "easy masked": accuracy(masked),
        "easy corrupted": accuracy(corrupted),
        "easy misleading": accuracy(data, ~test.reliable),
    }


def _curve(records: list[dict[str, float]], key: str) -> np.ndarray:
    return np.array([r.get(key, np.nan) for r in records], dtype=float)


def _ogm_k(runs: list[dict[str, Any]]) -> str:
    """Mean OGM coefficient of the easy encoder over steps, mean ± std over seeds ("-" without OGM)."""
    values = [r["mean_ogm_coeff"][EASY] for r in runs]
    return "-" if any(v is None for v in values) else mean_std(values)


def _mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the recorded values; None when nothing was recorded (e.g. no OGM coefficient)."""
    return None if np.isnan(values).all() else float(np.nanmean(values))


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def run(plan: Plan, seeds: list[int], progress: Progress) -> Result:
    """Train cross fusion with no rebalancing, OGM-GE and auxiliary losses on the dominance task."""
    say = progress
    data_config = DominanceConfig()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    init_probes: list[dict[str, float]] = []
    for index, s in enumerate(seeds, start=1):
        say(f"generating data, seed {index}/{len(seeds)}")
        _, splits = dominance_splits({"train": plan.n_train, "test": plan.n_test}, s, data_config)
        train, test = splits["train"], splits["test"]
        say(f"probing the untrained encoders, seed {index}/{len(seeds)}")
        init_probes.append(probe(build_model(train.data, data_config.num_classes, s), train.data, test.data))
        for method in METHODS:
            say(f"training cross ({method}), seed {index}/{len(seeds)}")
            model = build_model(train.data, data_config.num_classes, s)
            fitted = _train(model, train.data, method, plan.epochs, s)
            say(f"evaluating cross ({method}), seed {index}/{len(seeds)}")
            records = fitted.step_records
            runs[method].append(
                {
                    "seed": s,
                    "accuracy": accuracy_conditions(model, test, s),
                    "probe": probe(model, train.data, test.data),
                    "grad_norm": {m: _curve(records, f"grad_norm/{m}").tolist() for m in (EASY, HARD)},
                    "hard_share": _curve(records, f"grad_share/{HARD}").tolist(),
                    "mean_ogm_coeff": {m: _mean_or_none(_curve(records, f"ogm_coeff/{m}")) for m in (EASY, HARD)},
                    "messages": fitted.messages,
                }
            )
    return _result(seeds, plan, runs, init_probes)


def _train(model: FusionModel, data: MultimodalDataset, method: str, epochs: int, seed: int) -> FitResult:
    """`fit` with the method's hooks; the monitor always runs first, on the task loss's gradient."""
    ablation = method == "ogm-no-ge"
    config = TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=2e-3,
        seed=seed,
        balance="none" if ablation else method,
        balance_alpha=ALPHA,
        monitor_gradients=not ablation,
    )
    hooks = [GradientNormMonitor(model), OGMGE(model, alpha=ALPHA, seed=seed, noise=False)] if ablation else []
    return fit(model, data, None, config, hooks=hooks)


def _mean_curve(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], list[float]]) -> np.ndarray:
    return np.nanmean(np.array([pick(r) for r in runs], dtype=float), axis=0)


def _result(
    seeds: list[int],
    plan: Plan,
    runs: dict[str, list[dict[str, Any]]],
    init_probes: list[dict[str, float]],
) -> Result:
    steps_per_epoch = -(-plan.n_train // 64)
    share = {m: _mean_curve(runs[m], lambda r: r["hard_share"]) for m in METHODS}
    smoothed = {m: _moving_average(share[m], SHARE_WINDOW) for m in METHODS}
    min_share = {m: float(np.nanmin(smoothed[m])) for m in METHODS}

    def values(method: str, group: str, key: str) -> list[float]:
        return [r[group][key] for r in runs[method]]

    def mean(method: str, group: str, key: str) -> float:
        return float(np.mean(values(method, group, key)))

    probe_gain = mean("ogm-ge", "probe", HARD) - mean("none", "probe", HARD)
    accuracy_change = mean("ogm-ge", "accuracy", "multimodal") - mean("none", "accuracy", "multimodal")
    starved = min_share["none"] < SHARE_THRESHOLD
    passed = starved and probe_gain >= PROBE_GAIN and accuracy_change >= -ACCURACY_TOLERANCE
    measured = (
        f"no rebalancing: hard gradient share fell to {min_share['none']:.1%} (threshold {SHARE_THRESHOLD:.0%}); "
        f"OGM-GE hard probe {mean('ogm-ge', 'probe', HARD):.1%} vs {mean('none', 'probe', HARD):.1%} "
        f"({probe_gain * 100:+.1f} points, need >= +{PROBE_GAIN * 100:.0f}); multimodal accuracy "
        f"{mean('ogm-ge', 'accuracy', 'multimodal'):.1%} vs {mean('none', 'accuracy', 'multimodal'):.1%} "
        f"({accuracy_change * 100:+.1f} points, tolerance -{ACCURACY_TOLERANCE * 100:.0f})"
    )
    conditions = ["multimodal", "easy masked", "easy corrupted", "easy misleading"]
    tables = [
        Table(
            "Test accuracy of cross fusion (mean ± std over seeds)",
            ["method", *conditions],
            [[m] + [mean_std(values(m, "accuracy", c)) for c in conditions] for m in METHODS],
        ),
        Table(
            "Linear-probe test accuracy of each frozen encoder (mean ± std over seeds)",
            ["encoders", EASY, HARD],
            [["untrained", *(mean_std([p[k] for p in init_probes]) for k in (EASY, HARD))]]
            + [[f"trained ({m})"] + [mean_std(values(m, "probe", k)) for k in (EASY, HARD)] for m in METHODS],
        ),
        Table(
            "Hard modality's share of the encoder gradient norm (seed-mean curve)",
            ["method", f"min of {SHARE_WINDOW}-step average", "first epoch", "last epoch", "mean OGM k of easy"],
            [
                [
                    m,
                    f"{min_share[m]:.3f}",
                    f"{np.nanmean(share[m][:steps_per_epoch]):.3f}",
                    f"{np.nanmean(share[m][-steps_per_epoch:]):.3f}",
                    _ogm_k(runs[m]),
                ]
                for m in METHODS
            ],
        ),
    ]
    figures = {
        "gradient_norms.png": _gradient_figure(runs, smoothed),
        "probe_accuracy.png": _probe_figure(runs, init_probes),
        "test_accuracy.png": _accuracy_figure(runs, conditions),
    }
    raw = {
        "plan": asdict(plan),
        "fusion": asdict(FUSION),
        "data": asdict(DominanceConfig()),
        "alpha": ALPHA,
        "min_hard_share": min_share,
        "ogm_probe_gain": probe_gain,
        "ogm_accuracy_change": accuracy_change,
        "init_probes": init_probes,
        "runs": {
            m: [{k: v for k, v in r.items() if k not in ("grad_norm", "hard_share")} for r in runs[m]] for m in METHODS
        },
        "curves": {
            m: {
                "hard_share": share[m].tolist(),
                **{
                    f"grad_norm/{k}": _mean_curve(runs[m], lambda r, k=k: r["grad_norm"][k]).tolist()
                    for k in (EASY, HARD)
                },
            }
            for m in METHODS
        },
    }
    return Result(
        name="dominance",
        claim=CLAIM,
        criterion=CRITERION,
        verdict=verdict(passed, enough_data=plan.judged),
        measured=measured,
        tables=tables,
        figures=figures,
        raw=raw,
    )


def _gradient_figure(runs: dict[str, list[dict[str, Any]]], smoothed: dict[str, np.ndarray]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(METHODS), figsize=(3.6 * len(METHODS), 6), sharex=True, squeeze=False)
    colours = {EASY: "#d62728", HARD: "#1f77b4"}
    for col, method in enumerate(METHODS):
        top, bottom = axes[0, col], axes[1, col]
        for name in (EASY, HARD):
            curve = _mean_curve(runs[method], lambda r, name=name: r["grad_norm"][name])
            top.plot(np.arange(len(curve)), curve, color=colours[name], lw=0.9, label=f"{name} encoder")
        top.set_yscale("log")
        top.set_title(f"balance = {method}")
        bottom.plot(np.arange(len(smoothed[method])) + SHARE_WINDOW - 1, smoothed[method], color=colours[HARD])
        bottom.axhline(SHARE_THRESHOLD, color="grey", ls="--", lw=0.8, label=f"{SHARE_THRESHOLD:.0%}")
        bottom.set_ylim(0, 1)
        bottom.set_xlabel("step")
    axes[0, 0].set_ylabel("gradient L2 norm (before rebalancing)")
    axes[1, 0].set_ylabel(f"hard share ({SHARE_WINDOW}-step average)")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle("Per-modality encoder gradients, cross fusion (mean over seeds)")
    fig.tight_layout()
    return figure_png(fig)


COLOURS = {"untrained": "#999999", "none": "#1f77b4", "ogm-ge": "#ff7f0e", "aux": "#2ca02c", "ogm-no-ge": "#9467bd"}


def _grouped_bars(ax: Any, groups: list[str], series: dict[str, list[list[float]]]) -> None:
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (label, per_group) in enumerate(series.items()):
        means = [float(np.mean(v)) for v in per_group]
        stds = [float(np.std(v)) for v in per_group]
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=label, color=COLOURS.get(label))
    ax.axhline(1 / DominanceConfig().num_classes, color="black", ls=":", lw=0.8)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(series), frameon=False)


def _probe_figure(runs: dict[str, list[dict[str, Any]]], init_probes: list[dict[str, float]]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    series = {"untrained": [[p[k] for p in init_probes] for k in (EASY, HARD)]}
    series.update({m: [[r["probe"][k] for r in runs[m]] for k in (EASY, HARD)] for m in METHODS})
    _grouped_bars(ax, [f"{EASY} encoder", f"{HARD} encoder"], series)
    ax.set_ylabel("linear-probe test accuracy")
    ax.set_title("Frozen-encoder linear probes")
    fig.tight_layout()
    return figure_png(fig)


def _accuracy_figure(runs: dict[str, list[dict[str, Any]]], conditions: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    _grouped_bars(ax, conditions, {m: [[r["accuracy"][c] for r in runs[m]] for c in conditions] for m in METHODS})
    ax.set_ylabel("test accuracy")
    ax.set_title("Cross fusion: full input, easy modality masked / corrupted, easy misleading")
    fig.tight_layout()
    return figure_png(fig)
