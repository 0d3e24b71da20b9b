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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="crossfuse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("attention-demo", help="attention of a word over a toy image, printed and saved")
    demo.add_argument("--word", default="red", choices=["red", "green", "blue"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=cmd_attention_demo)
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
