"""Lab I: needle in a haystack. One relevant source item among n; does fusion find it as n grows?

Each example holds n source items, each a (key, value) feature vector, and a query holding one
item's key (`crossfuse.data.needle`); the target is the class of that item's value. ``cross``
lets the query token attend to the items: its parameters do not depend on n (the item encoder's
learned positions are sized once for up to 1024 items) and its cost grows linearly in n.
``flatten`` feeds all n items to an MLP, whose first layer, and so its parameter count, grows with
n. Both have the same width and depth and see the same data at every n.

Training protocol (declared with the criterion). Learning to attend from scratch has a plateau
whose length grows with n (at initialisation the needle gets 1/n of the attention, so its
gradient signal shrinks with n); at n = 256 a from-scratch cross model stays at chance for well
over 1000 steps, beyond the quick budget. Because cross's parameters do not depend on n, it is
trained with a size curriculum (Bengio et al., 2009): the model for n starts from the one trained
at the previous n, then trains for ``epochs`` at n. Its accuracy before that training (zero-shot
from the smaller haystack) is reported too. Flatten cannot be warm-started (its input layer
depends on n), so at the k-th size it trains from scratch for ``k * epochs``: the same number of
optimisation steps cross has accumulated. ``full`` also trains cross from scratch with that same
step count ("cross (scratch)"), so the cost of learning without the curriculum is measured too.
FLOPs per example come from the analytic counts of `crossfuse.flops` (matrix products only).

Full size, first run (`crossfuse lab run needle --size full`, 3 seeds, n = 16, 64, 256, 1024; 1,548 s wall with one
thread on the 2-core AMD EPYC): supported. Cross (size curriculum) 0.997 at n = 16 -> 0.995 at n = 1024 with the
same 120,196 parameters; zero-shot from the previous n 0.992 / 0.987 / 0.989; flatten 0.306 -> 0.255 (chance 0.25,
1.8 M parameters at n = 1024). Cross trained from scratch, without the curriculum, learns at n = 16 and 64 (0.997,
0.996) but not at n = 256 or 1024 (0.245, chance): at large n the curriculum, not the architecture alone, finds
the solution.

Time at quick size: serial, 68.5 s on a slow day of the 2-core AMD EPYC VM type (2026-11-29). Each seed (its size
curriculum runs in order within it) is an independent, seeded unit, so when the experiment runs alone the seeds use
both cores (`crossfuse.lab.units`): 37.2 s that day, every figure identical to the serial run except train times.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import DataLoader

from crossfuse.data.needle import NeedleConfig, NeedleSet, generate_needle
from crossfuse.flops import fusion_flops
from crossfuse.fusion import FusionConfig, FusionModel, ModalitySpec, build_fusion
from crossfuse.lab.common import figure_png, mean_std, verdict
from crossfuse.lab.result import PlanBase, Progress, Result, Size, Table
from crossfuse.lab.units import run_units
from crossfuse.train import TrainConfig, fit, predict_batches

CLAIM = (
    "Cross-attention finds the one relevant source item among n with a parameter count that does not grow "
    "with n, keeping its accuracy as n grows from 16 to the largest haystack, while an MLP over the "
    "flattened items grows with n."
)
CRITERION = (
    "cross's test accuracy at the largest n is within 2 points (0.02) of its accuracy at n = 16 "
    "(means over seeds), cross trained with the size curriculum of this module's protocol; flatten, cross "
    "zero-shot from the previous n and (full size) cross from scratch are reported as measured."
)
PRECONDITION = (
    "The task is solvable from the inputs at every n: the nearest-key rule (the item whose key is closest to the "
    "query's, read off without learning) reaches test accuracy >= 0.9 at every haystack size."
)
ORACLE_MINIMUM = 0.9
TOLERANCE = 0.02
STRATEGIES = ("flatten", "cross")
VARIANTS = ("flatten", "cross", "cross (zero-shot)", "cross (scratch)")
"""What is measured: the two strategies, cross before training at n, cross trained from scratch (full only)."""
MAX_ITEMS = 1024


@dataclass(frozen=True)
class Plan(PlanBase):
    """Seeds, haystack sizes, data and training budget of one size (epochs: per haystack size, see the protocol)."""

    sizes: tuple[int, ...]
    n_train: int
    n_test: int
    epochs: int
    dim: int
    num_heads: int
    batch_size: int
    lr: float
    scratch: bool = False


PLANS: dict[Size, Plan] = {
    "smoke": Plan(
        1,
        10.0,
        False,
        sizes=(8, 16),
        n_train=96,
        n_test=64,
        epochs=1,
        dim=16,
        num_heads=2,
        batch_size=32,
        lr=3e-3,
        scratch=True,
    ),
    "quick": Plan(
        2,
        59.6,
        True,
        sizes=(16, 64, 256),
        n_train=4000,
        n_test=1000,
        epochs=5,
        dim=64,
        num_heads=4,
        batch_size=64,
        lr=3e-3,
    ),
    "full": Plan(
        3,
        None,
        True,
        sizes=(16, 64, 256, 1024),
        n_train=4000,
        n_test=2000,
        epochs=6,
        dim=64,
        num_heads=4,
        batch_size=64,
        lr=3e-3,
        scratch=True,
    ),
}
DATA = NeedleConfig()


def fusion_config(budget: Plan) -> FusionConfig:
    """One fusion layer, no extra self-attention in the encoders (the items need no context of each other)."""
    return FusionConfig(dim=budget.dim, num_heads=budget.num_heads, num_layers=1, encoder_layers=0, mlp_ratio=2.0)


def modalities(strategy: str, n_items: int) -> dict[str, ModalitySpec]:
    """Query first, so ``cross`` lets the query attend to the items; flatten needs the fixed length."""
    length = n_items if strategy == "flatten" else None
    return {"query": ModalitySpec(DATA.key_dim, 1), "source": ModalitySpec(DATA.item_dim, length)}


def build_model(strategy: str, n_items: int, budget: Plan) -> FusionModel:
    """The ``strategy`` model for haystacks of ``n_items``; cross's size does not depend on ``n_items``."""
    if strategy != "flatten" and n_items > MAX_ITEMS:
        raise ValueError(f"n_items: expected <= {MAX_ITEMS} for {strategy}, got {n_items}")
    return build_fusion(strategy, modalities(strategy, n_items), DATA.num_classes, fusion_config(budget))


def flops_per_example(strategy: str, n_items: int, budget: Plan) -> int:
    """Analytic matmul FLOPs of one forward pass (`crossfuse.flops.fusion_flops`)."""
    return fusion_flops(
        strategy,
        modalities(strategy, n_items),
        DATA.num_classes,
        fusion_config(budget),
        lengths={"query": 1, "source": n_items},
    )


def accuracy(model: FusionModel, data: NeedleSet) -> float:
    """Test accuracy of ``model`` on ``data``."""
    logits, y = predict_batches(model, DataLoader(data.dataset(), batch_size=512))
    return (logits.argmax(-1) == y).float().mean().item()


def scaling_figure(sizes: tuple[int, ...], acc: dict, params: dict, oracle: dict) -> bytes:
    """Accuracy vs n (mean ± std over seeds, every measured variant; points shifted slightly along x so that
    overlapping lines stay apart) and parameters vs n, log-x.

    ``acc``: {variant: {str(n): [per seed]}}  ``params``: {strategy: {str(n): int}}  ``oracle``: {str(n): [...]}
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    # lines that overlap (cross and its zero-shot score near 1, flatten near chance) stay distinguishable: each
    # variant has its own marker, fill and line style, and is shifted a few percent along the log-x axis
    styles = {
        "flatten": {"marker": "s", "linestyle": "-", "markerfacecolor": "none"},
        "cross": {"marker": "o", "linestyle": "-"},
        "cross (zero-shot)": {"marker": "D", "linestyle": "--", "markerfacecolor": "none", "markersize": 8},
        "cross (scratch)": {"marker": "^", "linestyle": ":"},
    }
    shift = {"flatten": -1.5, "cross": -0.5, "cross (zero-shot)": 0.5, "cross (scratch)": 1.5}
    # the variants near 1 overlap at full scale: an inset zooms on them
    zoom = left.inset_axes((0.1, 0.4, 0.5, 0.42))
    near_one = []
    for variant, values in acc.items():
        points = [(n, np.asarray(values[str(n)], dtype=float)) for n in sizes]
        points = [(n, v) for n, v in points if v.size and not np.isnan(v).all()]
        if not points:
            continue
        xs = [n * 2 ** (0.1 * shift.get(variant, 0.0)) for n, _ in points]
        means = [np.nanmean(v) for _, v in points]
        spread = [np.nanstd(v) if v.size > 1 else 0.0 for _, v in points]
        style = styles.get(variant, {"marker": "x"})
        left.errorbar(xs, means, yerr=spread, capsize=3, label=variant, **style)
        if min(means) > 0.9:
            near_one += means
            zoom.errorbar(xs, means, yerr=spread, capsize=2, color=left.lines[-1].get_color(), **style)
    for strategy, values in params.items():
        right.plot(sizes, [values[str(n)] for n in sizes], label=strategy, **styles.get(strategy, {"marker": "x"}))
    rule = [np.mean(oracle[str(n)]) for n in sizes]
    left.plot(sizes, rule, "k:", marker="x", label="nearest-key rule")
    zoom.plot(sizes, rule, "k:", marker="x")
    zoom.set_xscale("log", base=2)
    zoom.set_xticks(list(sizes), [str(n) for n in sizes], fontsize=6)
    zoom.tick_params(axis="y", labelsize=6)
    low = min([*near_one, *rule])
    zoom.set_ylim(low - 0.01, 1.002)
    zoom.set_title("zoom near 1", fontsize=7)
    left.axhline(1 / DATA.num_classes, color="grey", linestyle="--", linewidth=1, label="chance")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n source items")
        ax.legend(fontsize=7, loc="center right" if ax is left else "best")
    left.set_ylim(0, 1.05)
    left.set_ylabel("test accuracy")
    right.set_yscale("log")
    right.set_ylabel("parameters")
    fig.suptitle("needle in a haystack: accuracy and parameters vs n")
    fig.tight_layout()
    return figure_png(fig)


def _seed_unit(budget: Plan, run_seed: int, j: int, count: int, say: Progress) -> dict[str, Any]:
    """One seed's runs at every n (a unit of `run_units`; cross's size curriculum runs within a seed):
    accuracy and train seconds per variant and n, parameters per strategy and n, oracle accuracy per n."""
    keys = [str(n) for n in budget.sizes]
    out: dict[str, Any] = {"acc": {}, "time": {}, "params": {s: {} for s in STRATEGIES}, "oracle": {}}

    def train(variant: str, key: str, model: FusionModel, data: NeedleSet, epochs: int) -> None:
        config = TrainConfig(epochs=epochs, batch_size=budget.batch_size, lr=budget.lr, seed=run_seed)
        tic = time.perf_counter()
        fit(model, data.dataset(), None, config)
        out["time"].setdefault(variant, {})[key] = time.perf_counter() - tic

    def score(variant: str, key: str, value: float) -> None:
        out["acc"].setdefault(variant, {})[key] = value

    torch.manual_seed(run_seed)
    cross = build_model("cross", budget.sizes[0], budget)
    for k, (n, key) in enumerate(zip(budget.sizes, keys, strict=True), start=1):
        say(f"generating haystacks of n={n}, seed {j}/{count}")
        data_seeds = np.random.SeedSequence([run_seed, n]).generate_state(2)
        train_set = generate_needle(budget.n_train, n, int(data_seeds[0]), DATA)
        test = generate_needle(budget.n_test, n, int(data_seeds[1]), DATA)
        out["oracle"][key] = test.oracle_accuracy()
        score("cross (zero-shot)", key, accuracy(cross, test) if k > 1 else float("nan"))
        say(f"training cross at n={n} (curriculum), seed {j}/{count}")
        train("cross", key, cross, train_set, budget.epochs)
        score("cross", key, accuracy(cross, test))
        out["params"]["cross"][key] = cross.num_parameters
        say(f"training flatten at n={n}, seed {j}/{count}")
        torch.manual_seed(run_seed)
        flat = build_model("flatten", n, budget)
        train("flatten", key, flat, train_set, k * budget.epochs)
        score("flatten", key, accuracy(flat, test))
        out["params"]["flatten"][key] = flat.num_parameters
        if budget.scratch:
            say(f"training cross from scratch at n={n}, seed {j}/{count}")
            torch.manual_seed(run_seed)
            scratch = build_model("cross", n, budget)
            train("cross (scratch)", key, scratch, train_set, k * budget.epochs)
            score("cross (scratch)", key, accuracy(scratch, test))
    return out


def run(plan: Plan, seeds: list[int], progress: Progress) -> Result:
    """Train flatten and cross at every haystack size; report accuracy, parameters and FLOPs vs n.

    Each seed is a seeded unit: on idle cores seeds run in parallel (`crossfuse.lab.units`), with the
    results of a serial run (train times, wall seconds, are measured beside the other unit)."""
    budget = plan
    keys = [str(n) for n in budget.sizes]
    variants = [v for v in VARIANTS if budget.scratch or v != "cross (scratch)"]
    acc: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in variants}
    train_time: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in variants}
    params: dict[str, dict[str, int]] = {s: {} for s in STRATEGIES}
    flops = {s: {k: flops_per_example(s, int(k), budget) for k in keys} for s in STRATEGIES}
    oracle: dict[str, list[float]] = {k: [] for k in keys}
    units = [(budget, run_seed, j, len(seeds)) for j, run_seed in enumerate(seeds, start=1)]
    for out in run_units(_seed_unit, units, progress):
        for key in keys:
            oracle[key].append(out["oracle"][key])
            for v in variants:
                acc[v][key].append(out["acc"][v][key])
                if v in out["time"]:
                    train_time[v][key].append(out["time"][v][key])
        for s in STRATEGIES:
            params[s].update(out["params"][s])
    rows = [
        [
            n,
            *(mean_std(acc[v][key]) if k or v != "cross (zero-shot)" else "-" for v in variants),
            mean_std(oracle[key]),
            *(params[s][key] for s in STRATEGIES),
            *(flops[s][key] for s in STRATEGIES),
            *(mean_std(train_time[v][key], digits=1) for v in variants if v != "cross (zero-shot)"),
        ]
        for k, (n, key) in enumerate(zip(budget.sizes, keys, strict=True))
    ]
    table = Table(
        title=f"Needle in a haystack: test accuracy, mean ± std over {len(seeds)} seed(s)",
        columns=[
            "n items",
            *(f"{v} accuracy" for v in variants),
            "nearest-key rule accuracy",
            *(f"{s} parameters" for s in STRATEGIES),
            *(f"{s} FLOPs/example" for s in STRATEGIES),
            *(f"{v} train time (s)" for v in variants if v != "cross (zero-shot)"),
        ],
        rows=rows,
    )
    first, last = keys[0], keys[-1]
    cross_first, cross_last = float(np.mean(acc["cross"][first])), float(np.mean(acc["cross"][last]))
    drop = cross_first - cross_last
    flat_first, flat_last = np.mean(acc["flatten"][first]), np.mean(acc["flatten"][last])
    measured = (
        f"cross accuracy {cross_first:.3f} at n={first} -> {cross_last:.3f} at n={last} "
        f"(drop {drop:+.3f}, criterion <= {TOLERANCE}); flatten {flat_first:.3f} -> {flat_last:.3f}"
    )
    solvable = min(float(np.mean(oracle[key])) for key in keys)
    precondition_met = solvable >= ORACLE_MINIMUM
    return Result(
        name="needle",
        claim=CLAIM,
        criterion=CRITERION,
        precondition=PRECONDITION,
        precondition_measured=f"nearest-key rule accuracy >= {solvable:.3f} at every n (needs >= {ORACLE_MINIMUM})",
        precondition_met=precondition_met,
        verdict=verdict(drop <= TOLERANCE, precondition_met, enough_data=plan.judged and budget.sizes[0] == 16),
        measured=measured,
        tables=[table],
        figures={"needle_scaling.png": scaling_figure(budget.sizes, acc, params, oracle)},
        raw={
            "budget": asdict(budget),
            "data": asdict(DATA),
            "protocol": "cross: size curriculum, `epochs` per n; flatten and cross (scratch): k * epochs at the k-th n",
            "accuracy": acc,
            "oracle_accuracy": oracle,
            "parameters": params,
            "flops_per_example": flops,
            "train_time_s": train_time,
        },
    )
