"""``crossfuse plot`` and ``crossfuse convert``: look at a run, bring data into crossfuse's formats.

crossfuse plot --run runs/x [--out curves.png]
crossfuse convert data.npz DIR                                  (.npz -> memory-mapped directory)
crossfuse convert --ts TRAIN.ts [--ts-test TEST.ts] --modality acc=0,1,2 --modality gyro=3-5 OUT
                                                                (OUT: file.npz or a directory)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw a run's curves (loss, validation metrics, learning rate, gradient shares) into a PNG."""
    from crossfuse.curves import plot_run

    path = plot_run(args.run, args.out)
    print(f"curves written to {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an .npz to a data-set directory, or .ts archive files to .npz / a directory."""
    from crossfuse.data.convert import npz_to_directory, ts_to_dataset
    from crossfuse.data.ts_format import parse_groups

    if args.ts is None:
        if args.ts_test is not None or args.modality:
            raise ValueError("--ts-test and --modality: only with --ts TRAIN.ts")
        if args.source is None:
            raise ValueError("convert: expected SOURCE.npz and OUT, or --ts TRAIN.ts --modality NAME=CHANNELS OUT")
        source = Path(args.source)
        if source.suffix.lower() != ".npz":
            raise ValueError(f"SOURCE: expected an .npz file, got {str(source)!r} (for .ts files use --ts)")
        out = npz_to_directory(source, args.out)
    else:
        if args.source is not None:
            raise ValueError("convert: with --ts give only OUT, not a SOURCE as well")
        if not args.modality:
            raise ValueError("--modality: expected at least one NAME=CHANNELS, e.g. --modality acc=0,1,2")
        groups = parse_groups(args.modality)
        out = ts_to_dataset(args.ts, groups, args.out, test=args.ts_test, seed=args.split_seed)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter] | None = None) -> None:
    """Add ``plot`` and ``convert`` to the ``crossfuse`` command."""
    extra = {"formatter_class": formatter} if formatter is not None else {}
    plot = sub.add_parser("plot", help="a run's training curves as a PNG", **extra)
    plot.add_argument("--run", required=True, help="run directory written by `crossfuse train`")
    plot.add_argument("--out", default=None, help="PNG to write (default: RUN/curves.png)")
    plot.set_defaults(func=cmd_plot)

    convert = sub.add_parser(
        "convert",
        help="data.npz -> memory-mapped directory, or .ts archive files -> .npz / directory",
        **extra,
    )
    convert.add_argument("paths", nargs="+", metavar="[SOURCE.npz] OUT", help="source .npz (not with --ts) and output")
    convert.add_argument("--ts", default=None, metavar="TRAIN.ts", help="training file in the .ts archive format")
    convert.add_argument("--ts-test", default=None, metavar="TEST.ts", help="its test file (rows get split = test)")
    convert.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="NAME=CHANNELS",
        help="channels of one modality, e.g. acc=0,1,2 or gyro=3-5 (repeat per modality)",
    )
    convert.add_argument("--split-seed", type=int, default=0, help="seed of the validation rows drawn with --ts-test")
    convert.set_defaults(func=_convert_paths)


def _convert_paths(args: argparse.Namespace) -> int:
    if len(args.paths) > 2:
        raise ValueError(f"convert: expected at most SOURCE and OUT, got {len(args.paths)} paths")
    args.source, args.out = (args.paths[0], args.paths[1]) if len(args.paths) == 2 else (None, args.paths[0])
    return cmd_convert(args)
