"""Options from a file: ``--config FILE`` (TOML, YAML or JSON) for any ``crossfuse`` command.

A config file is a flat table of option names (``batch-size`` or ``batch_size``) to values, optionally
with one table per command (``[train]``, ``[compare]``) whose entries apply to that command only::

    # run.toml
    data = "sensors.npz"
    epochs = 30
    [train]
    fusion = "cross"
    out = "runs/sensors"

Options given on the command line override the file. An option the command does not have is an error
naming the file and the key. A run's own ``config.json`` (written by ``crossfuse train``) is accepted
too, so ``crossfuse train --config runs/x/config.json --out runs/y`` replays run x: its training options,
model options, data path and split seed become the defaults; fields that are not command-line options
(for instance the targets' encoding) are left out and listed by `load_options`.

YAML needs PyYAML (``pip install 'crossfuse[yaml]'``); TOML (``tomllib``) and JSON need nothing.

Shapes: load_options(path, command, known) -> (options {dest: value}, ignored [key]).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

RUN_FORMAT_PREFIX = "crossfuse-run/"
_RUN_TRAIN_KEYS = {"checkpoint_every_steps": "checkpoint_every"}
_RUN_MODEL_KEYS = {"num_heads": "heads", "num_layers": "layers"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table in ``path`` (by suffix: .toml, .yaml/.yml, .json); one-line ValueError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            table = tomllib.loads(text)
        elif suffix == ".json":
            table = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ValueError(
                    f"config: {path} is YAML, which needs PyYAML: pip install 'crossfuse[yaml]' (or use TOML/JSON)"
                ) from None
            table = yaml.safe_load(text)
        else:
            raise ValueError(f"config: {path} must end in .toml, .yaml, .yml or .json, got {suffix or 'no suffix'!r}")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"config: {path} is not valid {suffix[1:].upper()}: {error}") from None
    except Exception as error:  # yaml.YAMLError without importing yaml at module level
        if type(error).__module__.startswith("yaml"):
            raise ValueError(f"config: {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        raise
    if not isinstance(table, dict):
        raise ValueError(f"config: {path} must hold a table of option = value, got {type(table).__name__}")
    return table


def _from_run_config(table: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A run's config.json -> option values, plus the fields that have no option."""
    options: dict[str, Any] = {}
    for key, value in (table.get("train") or {}).items():
        options[_RUN_TRAIN_KEYS.get(key, key)] = value
    model = table.get("model") or {}
    if "fusion" in model:
        options["fusion"] = model["fusion"]
    for key, value in (model.get("fusion_config") or {}).items():
        options[_RUN_MODEL_KEYS.get(key, key)] = value
    data = (table.get("metadata") or {}).get("data") or {}
    if "path" in data:
        options["data"] = data["path"]
    if "split_seed" in data:
        options["split_seed"] = data["split_seed"]
    return options, []


def load_options(
    path: str | Path, command: str, known: Collection[str], commands: Collection[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Option values for ``command`` from the file at ``path``, keyed by argparse ``dest``.

    ``known`` are the command's option dests; ``commands`` the names of all commands (their tables are
    skipped unless it is ``command``'s own). A key not in ``known`` is an error for a config file the user
    wrote; for a run's config.json it is returned in the second list (ignored).
    """
    table = read_config_file(path)
    is_run = str(table.get("format", "")).startswith(RUN_FORMAT_PREFIX)
    if is_run:
        raw, ignored = _from_run_config(table)
    else:
        raw, ignored = {}, []
        for key, value in table.items():
            if isinstance(value, dict) and (key in commands or key == command):
                if key == command:
                    raw.update(value)
                continue
            raw[key] = value
    options: dict[str, Any] = {}
    for key, value in raw.items():
        dest = str(key).strip().lstrip("-").replace("-", "_")
        if dest in ("config", "func", "command"):
            continue
        if dest not in known:
            if is_run:
                ignored.append(str(key))
                continue
            choices = ", ".join(sorted(known))
            raise ValueError(f"config: {path} sets {key!r}; `crossfuse {command}` has no such option ({choices})")
        options[dest] = value
    return options, sorted(ignored)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Give a command parser ``--config FILE``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="read options from a TOML, YAML or JSON file (or a run's config.json); flags given here override it",
    )


def _config_path(argv: Sequence[str]) -> str | None:
    for i, token in enumerate(argv):
        if token == "--config":
            return argv[i + 1] if i + 1 < len(argv) else None
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def apply_config_defaults(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """When ``argv`` holds ``--config FILE``, make the file's values the chosen command's defaults.

    Call before ``parser.parse_args(argv)``: options on the command line then override the file, and an
    option the file provides is no longer required on the command line. Values are converted with the
    option's own ``type`` and checked against its ``choices``. Returns the ignored keys of a run config.
    """
    path = _config_path(argv)
    if path is None:
        return []
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return []
    commands = subparsers[0].choices
    command = next((token for token in argv if token in commands), None)
    if command is None:
        return []
    sub = commands[command]
    actions = {a.dest: a for a in sub._actions if a.dest not in (argparse.SUPPRESS, "help")}
    if "config" not in actions:
        raise ValueError(f"config: `crossfuse {command}` does not take --config")
    options, ignored = load_options(path, command, set(actions), set(commands))
    for dest, value in options.items():
        action = actions[dest]
        try:
            convert = isinstance(value, str) or (action.type in (int, float) and not isinstance(value, bool))
            if action.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if action.type is not None and value is not None and convert:
                value = action.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"config: {path}: {dest} = {value!r} is not a valid {action.type.__name__}") from None
        if action.choices is not None and value not in action.choices:
            listed = ", ".join(map(str, action.choices))
            raise ValueError(f"config: {path}: {dest} = {value!r}; expected one of {listed}")
        options[dest] = value
        action.required = False
    sub.set_defaults(**options)
    return ignored
