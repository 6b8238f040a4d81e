"""Fixtures of the study tests: run an `experiments/<name>.py` script in-process."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture
def run_experiment(monkeypatch, capsys):
    """`run_experiment("organisms.py", "--help")` runs the script as `__main__` and returns
    (exit code, stdout)."""
    def run(name: str, *argv: str) -> tuple[int | str | None, str]:
        script = EXPERIMENTS / name
        monkeypatch.setattr(sys, "argv", [str(script), *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(script), run_name="__main__")
        return e.value.code, capsys.readouterr().out
    return run
