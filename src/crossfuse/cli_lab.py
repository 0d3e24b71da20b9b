"""``crossfuse lab``, ``lab list``, ``lab run NAME`` and ``attention-demo``: the experiments and the toy demo.

crossfuse lab [--size quick] [--only binding,report] [--out DIR]
crossfuse lab list
crossfuse lab run binding --size smoke
crossfuse attention-demo --word red
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossfuse.demo import COLOURS
from crossfuse.lab.result import SIZES


def cmd_attention_demo(args: argparse.Namespace) -> int:
    """Print a word's attention over a toy image and save the heatmap."""
    from crossfuse.demo import toy_image, word_attention
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

    from crossfuse.cli_train import set_threads
    from crossfuse.lab.runner import resolve_names, run_lab
    from crossfuse.viz.html import write_report

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {args.seeds}")
    one = getattr(args, "name", None)  # only `lab run` has NAME
    names = resolve_names([one], "NAME") if one else resolve_names(args.only)
    set_threads(args.threads)
    started = time.monotonic()
    jobs = int(args.jobs) if str(args.jobs).lstrip("-").isdigit() else args.jobs  # run_lab checks the value
    lab = run_lab(names, size=args.size, seed=args.seed, num_seeds=args.seeds, out=args.out, jobs=jobs)
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
    """--size/--seeds/--seed/--out/--threads on `lab` and on `lab run`. The subcommand's own default is
    SUPPRESS so that an option given before `run` is not reset by it; its help names the default itself."""

    def add(flag: str, value: object, help: str, **kwargs: object) -> None:
        if top:
            parser.add_argument(flag, default=value, help=help, **kwargs)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=f"{help} (default: {value})", **kwargs)

    add("--size", "quick", "data/training budget", choices=SIZES)
    add("--seeds", None, "seeds per experiment (None: by size)", type=int)
    add("--seed", 0, "first seed", type=int)
    add("--out", None, "new or empty directory (None: runs/lab-<time>)")
    add(
        "--threads",
        1,
        "torch CPU threads (the lab's models are small, and more threads on a busy CPU slow them down)",
        type=int,
    )
    add(
        "--jobs",
        "auto",
        "processes at once: experiments, or one experiment's independent rows and seeds; N, or auto (idle "
        "cores up to 2, divided by --threads)",
    )


def register(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``lab`` (with ``list`` and ``run``) and ``attention-demo`` to the ``crossfuse`` command."""
    demo = sub.add_parser(
        "attention-demo", help="attention of a word over a toy image, printed and saved", formatter_class=formatter
    )
    demo.add_argument("--word", default="red", choices=COLOURS[1:], help="colour word")
    demo.add_argument("--seed", type=int, default=0, help="seed of the toy image")
    demo.add_argument("--out", default="runs/demo", help="directory for attention_demo.png")
    demo.set_defaults(func=cmd_attention_demo)

    lab = sub.add_parser("lab", help="run the lab experiments and write an HTML report", formatter_class=formatter)
    _add_lab_options(lab, top=True)
    lab.add_argument("--only", default=None, help="comma-separated experiment names, e.g. binding,report")
    lab.set_defaults(func=cmd_lab)
    lab_sub = lab.add_subparsers(dest="lab_command")
    listing = lab_sub.add_parser("list", help="list experiments with their claims", formatter_class=formatter)
    listing.set_defaults(func=cmd_lab_list)
    run = lab_sub.add_parser("run", help="run one experiment", formatter_class=formatter)
    run.add_argument("name", help="experiment name (see `crossfuse lab list`)")
    _add_lab_options(run, top=False)
    run.set_defaults(func=cmd_lab)
