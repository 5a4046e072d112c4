"""`flexcode`, the console script: training's commands (training/cli.py) plus the
service's `serve` (service/cli.py).

Composed here, above both packages, so that neither imports the other: training runs
without the service installed in mind, and the service's import never pulls in the
trainer. Each half also runs alone: `python -m training.cli` (what torchrun launches)
and `python -m service`.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from service.cli import app as service_app
from training.cli import app as training_app


def command() -> TyperGroup:
    """The `flexcode` command group: a fresh one per call, training's app left as it is."""
    group = typer.main.get_group(training_app)
    group.add_command(typer.main.get_command(service_app), "serve")
    return group


def main() -> None:
    command()(prog_name="flexcode")


if __name__ == "__main__":
    main()
