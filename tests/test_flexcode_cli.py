"""`flexcode` = training's commands + the service's `serve`, composed without either
package importing the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flexcode_cli import command
from service.cli import app as service_app

REPO = Path(__file__).resolve().parents[1]


def _flexcode(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`flexcode ARGS`'s output (typer's CliRunner takes a Typer app, not a command)."""
    assert command().main(args, prog_name="flexcode", standalone_mode=False) == 0
    return capsys.readouterr().out


def test_flexcode_has_the_training_commands_and_serve(capsys):
    out = _flexcode(["--help"], capsys)
    for name in ("data", "train", "tune", "evaluate", "benchmark", "compare", "export", "serve"):
        assert name in out


def test_flexcode_serve_and_python_m_service_are_one_command(capsys):
    flexcode = _flexcode(["serve", "--help"], capsys)
    module = CliRunner().invoke(service_app, ["--help"])
    assert module.exit_code == 0
    for option in ("--host", "--port", "--train-if-missing", "--run-dir"):
        assert option in flexcode and option in module.output


@pytest.mark.parametrize(
    ("modules", "other"),
    [("training, training.cli", "service"), ("service, service.cli", "training")],
)
def test_neither_package_imports_the_other(modules, other):
    code = f"import sys, {modules}; print([m for m in sys.modules if m.split('.')[0] == {other!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
