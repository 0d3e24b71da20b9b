"""check_environment: torchrun's variables are checked before anything touches disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossfuse.distributed import check_environment
from crossfuse.train import TrainConfig, fit
from tiny_fusion import task, tiny

FULL = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_single_process_and_complete_environments_pass() -> None:
    assert check_environment({}) == 1
    assert check_environment({"WORLD_SIZE": "1"}) == 1
    assert check_environment(FULL) == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, r"WORLD_SIZE: expected an int >= 1 .*got 'two'"),
        ({"WORLD_SIZE": "0"}, r"WORLD_SIZE: expected an int >= 1 .*got '0'"),
        ({"WORLD_SIZE": "2"}, r"RANK: expected an int in \[0, 2\) with WORLD_SIZE=2, got None; .*torchrun"),
        ({**FULL, "RANK": "2"}, r"RANK: expected an int in \[0, 2\) .*got '2'"),
        ({**FULL, "RANK": "-1"}, r"RANK: .*got '-1'"),
        ({k: v for k, v in FULL.items() if k != "MASTER_ADDR"}, r"MASTER_ADDR: not set although WORLD_SIZE=2"),
        ({k: v for k, v in FULL.items() if k != "MASTER_PORT"}, r"MASTER_PORT: not set"),
    ],
)
def test_incomplete_environments_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_environment(env)


def test_fit_refuses_before_touching_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="RANK: expected"):
        fit(tiny(), task(32, 0), None, TrainConfig(epochs=1, batch_size=8), out_dir=out)
    assert not out.exists()
