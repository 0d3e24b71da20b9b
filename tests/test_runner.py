"""The lab runner and the `crossfuse lab` command, driven by fake experiments (tests/fake_experiments.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossfuse import cli
from crossfuse.lab.runner import ProgressDisplay, new_output_dir, run_lab
from fake_experiments import install, run_boom, run_evil, run_interrupt, run_not_a_result, run_ok


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_lab_records_success_and_failures_and_exits_nonzero(tmp_path, monkeypatch, capsys) -> None:
    install(monkeypatch, {"ok": run_ok, "boom": run_boom, "missing": "crossfuse.lab.no_such_experiment"})
    out = tmp_path / "run"
    code = cli.main(["lab", "--size", "smoke", "--seeds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1
    record = _results(out)
    by_name = {e["name"]: e for e in record["experiments"]}
    assert list(by_name) == ["ok", "boom", "missing"]  # the failure did not stop the later experiment
    assert by_name["ok"]["status"] == "ok"
    assert by_name["ok"]["result"]["raw"] == {"accuracy": [0.9, 0.924690]}
    assert by_name["ok"]["result"]["tables"][0]["rows"] == [["cross", 0.912345, 2]]
    assert by_name["boom"]["status"] == "failed"
    assert by_name["boom"]["error"] == "RuntimeError: boom: the fake experiment failed on purpose"
    assert "run_boom" in by_name["boom"]["traceback"]
    assert by_name["missing"]["status"] == "failed" and "ModuleNotFoundError" in by_name["missing"]["error"]
    assert record["size"] == "smoke" and record["num_seeds"] == 2 and record["environment"]["torch"]
    # figures as files, logs with the experiment's prints, stages and traceback
    assert (out / "ok" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    ok_log = (out / "ok" / "log.txt").read_text()
    assert "stdout line from ok" in ok_log and "stderr line from ok" in ok_log
    assert "stage: training cross, seed 2/2" in ok_log
    assert "RuntimeError: boom" in (out / "boom" / "log.txt").read_text()
    # the report shows the failure; the console shows the total time and where the report is
    report = (out / "report.html").read_text()
    assert "boom: the fake experiment failed on purpose" in report and 'class="badge fail"' in report
    assert "total time" in printed and str(out / "report.html") in printed
    assert "boom" in printed and "missing" in printed


def test_out_to_non_empty_dir_is_refused_and_nothing_is_touched(tmp_path, monkeypatch, capsys) -> None:
    install(monkeypatch, {"ok": run_ok})
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.json").write_text("earlier results")
    code = cli.main(["lab", "--size", "smoke", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--out" in err and "not empty" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert (out / "results.json").read_text() == "earlier results"
    # an existing *empty* directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["lab", "run", "ok", "--size", "smoke", "--out", str(empty)]) == 0
    assert (empty / "report.html").is_file()


def test_default_output_dirs_are_new_each_time(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = new_output_dir(None), new_output_dir(None)
    assert first != second and first.parent == second.parent == Path("runs")
    assert first.name.startswith("lab-") and second.name.startswith(first.name)


def test_lab_run_and_options_on_either_side(monkeypatch) -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["lab", "--size", "smoke", "--seed", "3", "run", "ok"])
    after = parser.parse_args(["lab", "run", "ok", "--size", "full", "--seeds", "4"])
    plain = parser.parse_args(["lab"])
    assert (before.size, before.seed, before.name) == ("smoke", 3, "ok")
    assert (after.size, after.seeds, after.seed) == ("full", 4, 0)
    assert (plain.size, plain.only, plain.seeds, plain.out) == ("quick", None, None, None)


def test_only_selects_and_validates(tmp_path, monkeypatch, capsys) -> None:
    install(monkeypatch, {"ok": run_ok, "boom": run_boom})
    out = tmp_path / "only"
    assert cli.main(["lab", "--size", "smoke", "--only", "ok", "--out", str(out)]) == 0
    assert [e["name"] for e in _results(out)["experiments"]] == ["ok"]
    capsys.readouterr()
    assert cli.main(["lab", "--only", "ok,nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "'nope'" in err and "'boom'" in err
    assert not (tmp_path / "x").exists()  # validated before anything is created
    assert cli.main(["lab", "--seeds", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_wrong_return_type_and_interrupt_are_recorded(tmp_path, monkeypatch, capsys) -> None:
    install(monkeypatch, {"odd": run_not_a_result, "stop": run_interrupt, "never": run_ok})
    out = tmp_path / "run"
    assert cli.main(["lab", "--size", "smoke", "--out", str(out)]) == 130
    record = _results(out)
    assert record["interrupted"] is True
    assert [e["name"] for e in record["experiments"]] == ["odd", "stop"]  # stopped after Ctrl-C
    assert record["experiments"][0]["error"] == "run() returned dict; expected crossfuse.lab.Result"
    assert record["experiments"][1]["interrupted"] is True
    assert "interrupted" in (out / "report.html").read_text()


def test_figure_names_cannot_leave_the_run_directory(tmp_path, monkeypatch) -> None:
    install(monkeypatch, {"evil": run_evil})
    out = tmp_path / "run"
    lab = run_lab(size="smoke", out=out, stream=io.StringIO())
    files = lab.records[0].figure_files
    assert set(files) == {"../evil.png", "notpng.svg"}
    for relative in files.values():
        assert (out / relative).resolve().is_relative_to(out.resolve()) and (out / relative).is_file()
    assert not (tmp_path / "evil.png").exists()
    # a smoke run must be inconclusive: the runner warns about the evil one's verdict
    assert any("smoke" in w for w in lab.records[0].warnings)


def test_progress_display_plain_and_tty() -> None:
    plain = io.StringIO()
    display = ProgressDisplay(total=2, stream=plain, tty=False, min_interval_s=0.0)
    display.start(1, "binding", 90.0)
    display.stage("training cross, seed 1/3")
    display.finish("supported (1.0s)")
    lines = plain.getvalue().splitlines()
    assert lines[0] == "[1/2] binding: started (expected ~90s)"
    assert lines[1].startswith("[1/2] binding") and "/ ~90s" in lines[1] and "training cross, seed 1/3" in lines[1]
    assert lines[2].endswith("supported (1.0s)")
    # throttled: a chatty experiment prints at most one line per interval
    chatty = io.StringIO()
    display = ProgressDisplay(total=1, stream=chatty, tty=False, min_interval_s=60.0)
    display.start(1, "needle", None)
    for step in range(100):
        display.stage(f"step {step}")
    display.finish("inconclusive")
    assert len(chatty.getvalue().splitlines()) == 3 and "expected unknown" in chatty.getvalue()
    # on a terminal the line is redrawn in place and ends with a newline when the experiment is done
    tty = io.StringIO()
    display = ProgressDisplay(total=1, stream=tty, tty=True)
    display.start(1, "report", None)
    display.stage("decoding")
    display.finish("FAILED: boom")
    text = tty.getvalue()
    assert text.count("\n") == 1 and text.endswith("FAILED: boom\n") and "\r\x1b[2K" in text and "decoding" in text


def test_lab_list_shows_claims_and_missing_modules(monkeypatch, capsys) -> None:
    install(monkeypatch, {"ok": run_ok, "missing": "crossfuse.lab.no_such_experiment"})
    assert cli.main(["lab", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(None, 1) == ["ok", "claim of ok"]
    assert lines[1].startswith("missing") and "ModuleNotFoundError" in lines[1]


def test_cli_subprocess_unknown_experiment_is_one_line(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "crossfuse.cli", "lab", "run", "no_such_thing", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "no_such_thing" in run.stderr and "binding" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["tiny"])
def test_bad_size_is_refused(size: str) -> None:
    with pytest.raises(ValueError, match=r"^size: expected one of"):
        run_lab(size=size, out=None)  # type: ignore[arg-type]
