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


class UsageError(Exception):
    """A user mistake the CLI reports in one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_attention_demo(args: argparse.Namespace) -> int:
    """Print a word's attention over a toy image and save the heatmap."""
    from crossfuse.demo import COLOURS, toy_image, word_attention
    from crossfuse.report.figures import save_attention_demo

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
    from crossfuse.report.html import write_report

    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds: expected an integer >= 1, got {args.seeds}")
    names = resolve_names([args.name] if getattr(args, "name", None) else args.only)
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="crossfuse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("attention-demo", help="attention of a word over a toy image, printed and saved")
    demo.add_argument("--word", default="red", choices=["red", "green", "blue"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=cmd_attention_demo)
    _add_lab_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError) as error:
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
