"""`python -m service [--host H] [--port P] ...`: the `serve` command of `flexcode serve`
(service/cli.py); configuration from FLEXCODE_* variables."""

from __future__ import annotations

from service.cli import app


def main() -> None:
    app(prog_name="python -m service")


if __name__ == "__main__":
    main()
