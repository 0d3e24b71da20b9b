"""`crossfuse.cli`: parser assembly, --help defaults, choices from the library, error-to-flag mapping."""

from __future__ import annotations

import argparse

import pytest

from crossfuse.balance import BALANCE_METHODS
from crossfuse.cli import HelpFormatter, build_parser, flag_message, main
from crossfuse.fusion import FUSIONS, FusionConfig
from crossfuse.lab.result import SIZES
from crossfuse.precision import PRECISIONS
from crossfuse.train import OPTIMIZERS, TASKS, TrainConfig


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command parser by its prog, nested ones (`lab run`) included."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found[sub.prog] = sub
                found.update(commands(sub))
    return found


def test_every_option_help_shows_its_default() -> None:
    parsers = commands(build_parser())
    assert {"crossfuse train", "crossfuse compare", "crossfuse lab run", "crossfuse caption-train"} <= set(parsers)
    missing = []
    for prog, parser in parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.dest == "help" or action.default is argparse.SUPPRESS:
                continue
            # argparse omits the default of required options; every other option states it.
            if not action.required and f"(default: {action.default})" not in " ".join(text.split()):
                missing.append(f"{prog} {action.option_strings[0]}")
        assert parser.formatter_class is HelpFormatter, prog
    assert missing == []
    lab_run = " ".join(parsers["crossfuse lab run"].format_help().split())
    assert "(default: quick)" in lab_run and "(default: 1)" in lab_run  # SUPPRESS defaults named in the help


def test_choices_and_defaults_come_from_the_library() -> None:
    parsers = commands(build_parser())
    train = {a.dest: a for a in parsers["crossfuse train"]._actions}
    assert tuple(train["task"].choices) == TASKS
    assert tuple(train["optimizer"].choices) == OPTIMIZERS
    assert tuple(train["balance"].choices) == BALANCE_METHODS
    assert set(train["fusion"].choices) == set(FUSIONS)
    defaults, fusion = TrainConfig(), FusionConfig()
    assert (train["epochs"].default, train["batch_size"].default, train["lr"].default) == (
        defaults.epochs,
        defaults.batch_size,
        defaults.lr,
    )
    assert (train["dim"].default, train["heads"].default, train["layers"].default) == (
        fusion.dim,
        fusion.num_heads,
        fusion.num_layers,
    )
    assert tuple({a.dest: a for a in parsers["crossfuse lab"]._actions}["size"].choices) == SIZES
    for prog in (
        "crossfuse train",
        "crossfuse compare",
        "crossfuse evaluate",
        "crossfuse predict",
        "crossfuse caption",
    ):
        actions = {a.dest: a for a in parsers[prog]._actions}
        assert tuple(actions["precision"].choices) == PRECISIONS and actions["device"].default == "cpu", prog
    assert train["tensorboard"].default is defaults.tensorboard is False


def test_library_argument_names_become_the_commands_flags() -> None:
    train = commands(build_parser())["crossfuse train"]
    assert flag_message("out: x exists", train) == "--out: x exists"
    assert flag_message("config.batch_size: expected an int >= 1, got 0", train).startswith("--batch-size: expected")
    assert flag_message("config.checkpoint_every_steps: bad", train) == "--checkpoint-every: bad"
    assert flag_message("num_heads: bad", train) == "--heads: bad"
    assert flag_message("y: labels wrap", train) == "y: labels wrap"  # no such flag: unchanged
    assert flag_message("out: x", None) == "out: x"
    evaluate = commands(build_parser())["crossfuse evaluate"]
    assert flag_message("checkpoint: best/model.safetensors: damaged", evaluate).startswith("checkpoint: ")  # a file


def test_library_errors_reach_the_user_as_one_line_with_the_flag(tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lab", "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossfuse: error: --seeds: expected an integer >= 1") and len(err.splitlines()) == 1
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossfuse: error: --run: no config.json in") and len(err.splitlines()) == 1
