"""Modality dominance: does an easy modality starve the other one, and does OGM-GE (as published) fix it?

Data (`crossfuse.data.dominance`, defaults fixed before the declared run): C = 4 classes; both
modalities hide the class in the second moment of their tokens (random sign per token), so both
encoders must learn. ``easy``: 4 tokens x 256 features, amplitude 4, untrained probe near chance,
shows the true class for 80% of samples (*reliable*) and a random one otherwise (ceiling 85%).
``hard``: 16 tokens x 16 features, amplitude 1.25, right for every sample (oracle ~96%), learned
slowly. The hard modality is what a model needs on the misleading 20% and when the easy one is missing.

Model and training: ``cross`` fusion (dim 32, 2 heads, one encoder self-attention block per
modality, one cross-attention layer; ``easy`` queries ``hard``, so the hard stream's logit
contribution comes from its encoder alone, the unimodal score OGM-GE's ratio assumes), the same
initial weights per seed, `crossfuse.train.fit` (batch 64, gradient clipping at 1.0, warmup then
cosine decay). Declared setting, as OGM-GE was proposed (Peng et al., 2022): SGD with momentum 0.9,
lr 0.05. Rows:

- ``hard-only``: the same model trained with the easy modality masked out (every position invalid):
  the reference for what the hard encoder learns when nothing dominates it;
- ``none``: joint training, no rebalancing;
- ``ogm-ge``: OGM-GE, the paper's coefficient ``1 - tanh(alpha * rho)`` for rho > 1, alpha 0.5, GE
  noise added after clipping (`crossfuse.balance.OGMGE`, the same hook ``crossfuse train
  --balance ogm-ge`` installs);
- ``aux``: unimodal auxiliary losses (weight 0.5), a baseline that beats OGM-GE is reported as such;
- ``adamw none`` / ``adamw ogm-ge``: AdamW (lr 2e-3), reported rows, outside the criterion.

Measured per row and seed: linear-probe accuracy of each frozen encoder (`crossfuse.lab.probe`,
fitted on the training split, scored on the test split), test accuracy as is, with the easy
modality masked out, corrupted (permuted across samples) and on the misleading samples; per-step
hard share of the encoder gradient norm (before rebalancing, `GradientNormMonitor`): a monitored
figure, not part of the criterion (under SGD it did not track starvation, see issue 13).

History: the earlier criterion (AdamW, shifted coefficient, easy modality linearly readable
without encoder learning) asked for the hard gradient share to fall below 20% and OGM-GE to add 5
probe points; it measured "not supported" where OGM's premise (the dominance runs through the
encoders) did not hold. Replaced before this run by the PRECONDITION/CRITERION below (issue 13).

Declared run, quick size (seeds 0-2, 65.8 CPU s with one thread, 70.6 s wall): **inconclusive**.
The precondition missed by a hair: hard probe without rebalancing 0.824 vs hard-only 0.923, 9.9
points below (per seed +16.1 / +0.2 / +13.4; needs >= 10): seed 1 was not starved at all. For the
record (not a verdict): OGM-GE moved the hard probe by -0.8 points (-6.6 / +0.3 / +4.0) and
raised multimodal accuracy by 3.8 points (0.888 vs 0.851); the paper's coefficient (mean k of
the easy encoder 0.38) mostly stopped the easy encoder from learning (its probe 0.312 vs 0.729)
rather than making the hard one learn more. Auxiliary losses beat it on every figure: hard probe
0.914, accuracy 0.912, easy masked 0.851 (none 0.560, OGM-GE 0.594). AdamW shows no starvation
(hard probe 0.921 without rebalancing; with OGM-GE 0.900). The monitored hard gradient share
bottomed (20-step average, per seed) at 0.196 ± 0.060 without rebalancing, 0.223 with OGM-GE.
The criterion was not changed after this run.

Full size, run once afterwards (seeds 0-4, 4000 training samples, 15 epochs, 389.8 CPU s with one
thread): precondition met (hard probe 0.813 without rebalancing vs 0.938 hard-only, 12.5 points;
per seed +23.2 / +0.8 / +8.7 / +26.4 / +3.6), verdict **not supported**: OGM-GE moved the hard
probe by -0.9 points (+0.1 / +1.2 / -14.7 / +6.4 / +2.7) at +0.6 points of accuracy (0.909 vs
0.903), while holding the easy encoder at chance (probe 0.255, mean k 0.32). Auxiliary losses
remove the starvation (hard probe 0.938 = hard-only, accuracy 0.963, easy masked 0.938 vs 0.625
without rebalancing). AdamW: no starvation (hard probe 0.941), OGM-GE 0.930. Minimum hard gradient
share 0.199 ± 0.052 (none), 0.221 ± 0.051 (OGM-GE).

Time at quick size: serial, 102.1 s on a slow day of the 2-core AMD EPYC VM type (2026-11-29). Each (seed, row)
and each seed's probe at initialisation is an independent, seeded unit, so when the experiment runs alone they use
both cores (`crossfuse.lab.units`): 57.5 s that day, every figure identical to the serial run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from crossfuse.data.dataset import MultimodalDataset
from crossfuse.data.dominance import DominanceConfig, DominanceSplit, dominance_splits
from crossfuse.fusion import FusionConfig, FusionModel, ModalitySpec, build_fusion
from crossfuse.lab.common import figure_png, mean_std, verdict
from crossfuse.lab.probe import linear_probe_accuracy, probe
from crossfuse.lab.result import PlanBase, Progress, Result, Size, Table
from crossfuse.lab.units import run_units, unit_cache
from crossfuse.train import TrainConfig, fit, predict

__all__ = ["CLAIM", "CRITERION", "PLANS", "PRECONDITION", "Plan", "linear_probe_accuracy", "run"]

CLAIM = (
    "When one modality predicts the label quickly, cross-attention fusion trained jointly starves the other "
    "modality's encoder, and OGM-GE gradient modulation (Peng et al., 2022, as published: SGD, the paper's "
    "coefficient, GE noise) makes that encoder learn more without costing multimodal accuracy."
)
STARVATION = 0.10
PROBE_GAIN = 0.03
ACCURACY_TOLERANCE = 0.01
MIN_SEEDS = 3
PRECONDITION = (
    "The hard modality is starved: under SGD without rebalancing, the hard encoder's linear-probe test accuracy "
    f"is at least {STARVATION * 100:.0f} points below that of a hard-only trained encoder (seed-paired mean)."
)
CRITERION = (
    f"Supported if, seed-paired over >= {MIN_SEEDS} seeds (mean of per-seed differences), OGM-GE raises the hard "
    f"encoder's linear-probe test accuracy by >= {PROBE_GAIN * 100:.0f} points over no rebalancing, and lowers "
    f"multimodal test accuracy by at most {ACCURACY_TOLERANCE * 100:.0f} point (both under SGD)."
)

EASY, HARD = "easy", "hard"
ALPHA = 0.5
SGD_LR, ADAMW_LR = 0.05, 2e-3
ROWS = ("hard-only", "none", "ogm-ge", "aux", "adamw none", "adamw ogm-ge")
"""Training runs per seed: (optimizer prefix) + ``TrainConfig.balance``; "hard-only" masks the easy modality."""
CONDITIONS = ("multimodal", "easy masked", "easy corrupted", "easy misleading")


@dataclass(frozen=True)
class Plan(PlanBase):
    """Seeds, data and training budget of one size."""

    n_train: int
    n_test: int
    epochs: int


PLANS: dict[Size, Plan] = {
    "smoke": Plan(1, 3.0, False, n_train=192, n_test=128, epochs=1),
    "quick": Plan(
        3, 75.0, True, n_train=2000, n_test=1000, epochs=10
    ),  # 71.4 s wall in a clean clone's make demo (65.8 CPU s alone)
    "full": Plan(5, 400.0, True, n_train=4000, n_test=2000, epochs=15),
}
FUSION = FusionConfig(dim=32, num_heads=2, num_layers=1, encoder_layers=1, mlp_ratio=2.0, direction="a->b")


def build_model(data: MultimodalDataset, num_classes: int, seed: int) -> FusionModel:
    """The cross-attention fusion model of every row, initialised from ``seed``."""
    specs = {name: ModalitySpec(x.shape[-1], x.shape[1]) for name, x in data.inputs.items()}
    torch.manual_seed(seed)
    return build_fusion("cross", specs, num_classes, FUSION)


def without_easy(data: MultimodalDataset) -> MultimodalDataset:
    """The same samples with the easy modality masked out (every position invalid)."""
    return MultimodalDataset(data.inputs, data.y, {**data.masks, EASY: torch.zeros_like(data.masks[EASY])})


def accuracy_conditions(model: FusionModel, test: DominanceSplit, seed: int) -> dict[str, float]:
    """Accuracy on the test split: as is, easy modality masked out, easy corrupted, easy misleading."""
    data = test.data
    y = data.y

    def accuracy(d: MultimodalDataset, rows: torch.Tensor | None = None) -> float:
        correct = predict(model, d).argmax(-1) == y
        return (correct if rows is None else correct[rows]).float().mean().item()

    permutation = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    corrupted = MultimodalDataset({**data.inputs, EASY: data.inputs[EASY][permutation]}, y)
    return {
        "multimodal": accuracy(data),
        "easy masked": accuracy(without_easy(data)),
        "easy corrupted": accuracy(corrupted),
        "easy misleading": accuracy(data, ~test.reliable),
    }


def train_config(row: str, epochs: int, seed: int) -> TrainConfig:
    """The `TrainConfig` of one row (SGD momentum 0.9 unless the row names AdamW)."""
    adamw = row.startswith("adamw ")
    balance = row.removeprefix("adamw ")
    return TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=ADAMW_LR if adamw else SGD_LR,
        optimizer="adamw" if adamw else "sgd",
        seed=seed,
        balance="none" if balance == "hard-only" else balance,
        balance_alpha=ALPHA,
        monitor_gradients=True,
    )


def _curve(records: list[dict[str, float]], key: str) -> list[float]:
    return [float(r.get(key, np.nan)) for r in records]


@unit_cache
def _splits(n_train: int, n_test: int, seed: int) -> tuple[DominanceSplit, DominanceSplit]:
    """The seed's train and test splits, kept for the next unit of the same seed in this process."""
    _, splits = dominance_splits({"train": n_train, "test": n_test}, seed, DominanceConfig())
    return splits["train"], splits["test"]


def _unit(plan: Plan, seed: int, index: int, count: int, row: str, say: Progress) -> dict[str, Any]:
    """One unit of `run_units`: a row of `ROWS` trained and probed on the seed's data, or (``row == "init"``)
    the probe of the untrained model."""
    data_config = DominanceConfig()
    train, test = _splits(plan.n_train, plan.n_test, seed)
    if row == "init":
        return probe(build_model(train.data, data_config.num_classes, seed), train.data, test.data)
    say(f"training cross ({row}), seed {index}/{count}")
    model = build_model(train.data, data_config.num_classes, seed)
    hard_only = row == "hard-only"
    data = without_easy(train.data) if hard_only else train.data
    fitted = fit(model, data, None, train_config(row, plan.epochs, seed))
    records = fitted.step_records
    accuracy = accuracy_conditions(model, test, seed)
    return {
        "seed": seed,
        "accuracy": {"easy masked": accuracy["easy masked"]} if hard_only else accuracy,
        "probe": probe(model, train.data, test.data, [HARD] if hard_only else None),
        "hard_share": _curve(records, f"grad_share/{HARD}"),
        "ogm_coeff_easy": _curve(records, f"ogm_coeff/{EASY}"),
        "messages": fitted.messages,
    }


def run(plan: Plan, seeds: list[int], progress: Progress) -> Result:
    """Train every row of `ROWS` per seed on the dominance task; probe the encoders; judge OGM-GE.

    Each (seed, row) is a seeded unit: on idle cores they run in parallel (`crossfuse.lab.units`), with the
    results of a serial run."""
    units = [(plan, s, i, len(seeds), row) for i, s in enumerate(seeds, start=1) for row in ("init", *ROWS)]
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    init_probes: list[dict[str, float]] = []
    for (*_, row), out in zip(units, run_units(_unit, units, progress), strict=True):
        (init_probes if row == "init" else runs[row]).append(out)
    return _result(seeds, plan, runs, init_probes)


def _paired(runs: dict[str, list[dict[str, Any]]], a: str, b: str, group: str, key: str) -> list[float]:
    """Per-seed differences ``a - b`` of one figure (the runs are in seed order for every row)."""
    return [ra[group][key] - rb[group][key] for ra, rb in zip(runs[a], runs[b], strict=True)]


def _moving_min(values: list[float], window: int = 20) -> float:
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).all():
        return float("nan")
    window = max(1, min(window, len(arr)))
    return float(np.nanmin(np.convolve(arr, np.ones(window) / window, mode="valid")))


def _result(
    seeds: list[int], plan: Plan, runs: dict[str, list[dict[str, Any]]], init_probes: list[dict[str, float]]
) -> Result:
    starvation = _paired(runs, "hard-only", "none", "probe", HARD)
    probe_gain = _paired(runs, "ogm-ge", "none", "probe", HARD)
    accuracy_change = _paired(runs, "ogm-ge", "none", "accuracy", "multimodal")
    starved, gain, change = (float(np.mean(v)) for v in (starvation, probe_gain, accuracy_change))
    precondition_met = starved >= STARVATION
    passed = gain >= PROBE_GAIN and change >= -ACCURACY_TOLERANCE

    def mean(row: str, group: str, key: str) -> float:
        return float(np.mean([r[group][key] for r in runs[row]]))

    def per_seed(values: list[float]) -> str:
        return "/".join(f"{v * 100:+.1f}" for v in values)

    precondition_measured = (
        f"hard probe without rebalancing {mean('none', 'probe', HARD):.3f} vs hard-only "
        f"{mean('hard-only', 'probe', HARD):.3f}: "
        f"{starved * 100:.1f} points below (per seed {per_seed(starvation)}; needs >= {STARVATION * 100:.0f})"
    )
    measured = (
        f"OGM-GE hard probe {mean('ogm-ge', 'probe', HARD):.3f} vs {mean('none', 'probe', HARD):.3f}: "
        f"{gain * 100:+.1f} points (per seed {per_seed(probe_gain)}; need >= +{PROBE_GAIN * 100:.0f}); multimodal "
        f"accuracy {mean('ogm-ge', 'accuracy', 'multimodal'):.3f} vs {mean('none', 'accuracy', 'multimodal'):.3f}: "
        f"{change * 100:+.1f} points (tolerance -{ACCURACY_TOLERANCE * 100:.0f}); aux: hard probe "
        f"{mean('aux', 'probe', HARD):.3f}, accuracy {mean('aux', 'accuracy', 'multimodal'):.3f}"
    )
    min_share = {row: [_moving_min(r["hard_share"]) for r in runs[row]] for row in ROWS}

    def cell(row: str, group: str, key: str) -> str:
        values = [r[group][key] for r in runs[row] if key in r[group]]
        return mean_std(values) if values else "-"

    def mean_k(row: str) -> str:
        values = [float(np.nanmean(r["ogm_coeff_easy"])) for r in runs[row] if not np.isnan(r["ogm_coeff_easy"]).all()]
        return mean_std(values) if values else "-"

    tables = [
        Table(
            "Linear-probe test accuracy of each frozen encoder (mean ± std over seeds)",
            ["encoders", EASY, HARD],
            [["untrained", *(mean_std([p[k] for p in init_probes]) for k in (EASY, HARD))]]
            + [[f"trained ({row})", cell(row, "probe", EASY), cell(row, "probe", HARD)] for row in ROWS],
        ),
        Table(
            "Test accuracy of cross fusion (mean ± std over seeds; hard-only: easy masked only)",
            ["row", *CONDITIONS],
            [[row, *(cell(row, "accuracy", c) for c in CONDITIONS)] for row in ROWS],
        ),
        Table(
            "Monitored: hard share of the encoder gradient norm (min of the 20-step average) and OGM k of easy",
            ["row", "min hard share", "mean OGM k (easy)"],
            [[row, mean_std(min_share[row]), mean_k(row)] for row in ROWS if row != "hard-only"],
        ),
    ]
    raw = {
        "plan": asdict(plan),
        "fusion": asdict(FUSION),
        "data": asdict(DominanceConfig()),
        "alpha": ALPHA,
        "lr": {"sgd": SGD_LR, "adamw": ADAMW_LR},
        "starvation_per_seed": starvation,
        "ogm_probe_gain_per_seed": probe_gain,
        "ogm_accuracy_change_per_seed": accuracy_change,
        "min_hard_share": min_share,
        "init_probes": init_probes,
        "runs": {
            row: [{k: v for k, v in r.items() if k not in ("hard_share", "ogm_coeff_easy")} for r in runs[row]]
            for row in ROWS
        },
        "curves": {row: [r["hard_share"] for r in runs[row]] for row in ROWS},
    }
    return Result(
        name="dominance",
        claim=CLAIM,
        criterion=CRITERION,
        precondition=PRECONDITION,
        precondition_measured=precondition_measured,
        precondition_met=precondition_met,
        verdict=verdict(passed, precondition_met, enough_data=plan.judged and len(seeds) >= MIN_SEEDS),
        measured=measured,
        tables=tables,
        figures={"gradient_share.png": _share_figure(runs), "probe_accuracy.png": _probe_figure(runs, init_probes)},
        raw=raw,
    )


COLOURS = {
    "untrained": "#999999",
    "hard-only": "#17becf",
    "none": "#1f77b4",
    "ogm-ge": "#ff7f0e",
    "aux": "#2ca02c",
    "adamw none": "#9467bd",
    "adamw ogm-ge": "#8c564b",
}


def _share_figure(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for row in ROWS:
        if row == "hard-only":
            continue
        curve = np.nanmean(np.array([r["hard_share"] for r in runs[row]], dtype=float), axis=0)
        window = max(1, min(20, len(curve)))
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        style = "--" if row.startswith("adamw") else "-"
        ax.plot(np.arange(len(smooth)) + window - 1, smooth, style, color=COLOURS[row], lw=1.2, label=row)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("hard share of encoder gradient norm")
    ax.set_title(f"Hard modality's gradient share (20-step average, mean over {len(runs['none'])} seed(s))")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return figure_png(fig)


def _probe_figure(runs: dict[str, list[dict[str, Any]]], init_probes: list[dict[str, float]]) -> bytes:
    import matplotlib.pyplot as plt

    series = {"untrained": [[p[k] for p in init_probes] for k in (EASY, HARD)]}
    series.update({row: [[r["probe"].get(k, np.nan) for r in runs[row]] for k in (EASY, HARD)] for row in ROWS})
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(series)
    x = np.arange(2)
    for i, (label, per_group) in enumerate(series.items()):
        means = [float(np.mean(v)) for v in per_group]
        # one seed: no error bar (a spread of zero would read as a measured "± 0")
        stds = [float(np.std(v)) for v in per_group] if len(per_group[0]) > 1 else None
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=label, color=COLOURS[label])
    ax.axhline(1 / DominanceConfig().num_classes, color="black", ls=":", lw=0.8)
    ax.set_xticks(x, [f"{EASY} encoder", f"{HARD} encoder"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("linear-probe test accuracy")
    ax.set_title("Frozen-encoder linear probes (hard-only: hard encoder only)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    fig.tight_layout()
    return figure_png(fig)
