"""The ``crossfuse`` command: assembles the subcommands, runs one, maps errors to one line.

The subcommands live beside this file, each with ``register(sub, formatter)``: `crossfuse.cli_train`
(train, evaluate, predict, compare), `crossfuse.cli_caption` (caption-train, caption), `crossfuse.cli_lab`
(lab, attention-demo) and `crossfuse.cli_data` (plot, convert). Library errors name the library argument
(``out: ...``, ``config.batch_size: ...``); `flag_message` rewrites that name to the command's flag
(``--out: ...``, ``--batch-size: ...``). Bad input prints one line ``crossfuse: error: ...`` and exits
with status 2 (an OSError too); no traceback (set ``CROSSFUSE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from crossfuse import cli_caption, cli_data, cli_lab, cli_train
from crossfuse.config_file import add_config_argument, apply_config_defaults
from crossfuse.run_dir import release_all

# Library argument names that differ from the flag's dest (TrainConfig / FusionConfig field -> dest).
ARGUMENT_ALIASES = {
    "checkpoint_every_steps": "checkpoint_every",
    "num_heads": "heads",
    "num_layers": "layers",
    "num_seeds": "seeds",
    "directory": "run",
}
# Library names that are not the flag of the same name (crossfuse.checkpoint's "checkpoint: <file>: ..." names a file).
NOT_FLAGS = frozenset({"checkpoint"})
_PREFIX = re.compile(r"^(?:config\.)?([A-Za-z_][A-Za-z0-9_]*)(?=[: ])")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="crossfuse",
        description="Multimodal fusion with cross-attention: train and compare fusion strategies on your data, "
        "caption images, and run the lab.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cli_lab.register(sub, HelpFormatter)
    cli_train.register(sub, HelpFormatter)
    cli_caption.register(sub, HelpFormatter)
    cli_data.register(sub, HelpFormatter)
    for command in ("train", "compare"):
        add_config_argument(sub.choices[command])
    return parser


def flag_message(message: str, command: argparse.ArgumentParser | None) -> str:
    """``"out: x exists"`` -> ``"--out: x exists"`` when ``command`` has ``--out``; other messages unchanged."""
    match = _PREFIX.match(message)
    if command is None or match is None or match.group(1) in NOT_FLAGS:
        return message
    dest = ARGUMENT_ALIASES.get(match.group(1), match.group(1))
    flags = {a.dest: a.option_strings for a in command._actions if a.option_strings}
    if dest not in flags:
        return message
    long = [s for s in flags[dest] if s.startswith("--")] or flags[dest]
    return long[0] + message[match.end() :]


def _command_parser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _fail(message: str, code: int = 2) -> int:
    print(f"crossfuse: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ignored = apply_config_defaults(parser, argv)
    except (ValueError, OSError) as error:
        return _fail(str(error))
    if ignored:
        print(f"config: not command-line options, ignored: {', '.join(ignored)}", file=sys.stderr)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as error:
        if os.environ.get("CROSSFUSE_DEBUG"):
            raise
        text = str(error) if not isinstance(error, OSError) or not error.filename else _os_text(error)
        text = text.replace(_start_over(), "start over with --force or a new --out")  # resume's words, as flags
        return _fail(flag_message(text, _command_parser(parser, args.command)))
    except KeyboardInterrupt:
        print("crossfuse: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; the traceback on request
        if os.environ.get("CROSSFUSE_DEBUG"):
            raise
        return _fail(f"internal error: {type(error).__name__}: {error} (CROSSFUSE_DEBUG=1 shows the traceback)", 1)
    finally:
        release_all()  # the run directory is free again when the command ends (also when it failed)


def _start_over() -> str:
    from crossfuse.resume import START_OVER  # lazily: the library's advice in a refused resume

    return START_OVER


def _os_text(error: OSError) -> str:
    """An OSError from the system (no message of ours) as ``<file>: <reason>``."""
    if error.args and isinstance(error.args[0], str):  # raised by crossfuse with its own message
        return str(error)
    return f"{error.filename}: {error.strerror or type(error).__name__}"


if __name__ == "__main__":
    sys.exit(main())
