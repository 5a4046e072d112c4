"""The service's command line: `serve`, which `flexcode serve` and `python -m service`
both run, with the same options.

Only typer is imported here: the server, the model code and (for --train-if-missing) the
trainer are imported when the command runs, so `flexcode --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    train_if_missing: Annotated[
        bool,
        typer.Option(
            help="when FLEXCODE_BUNDLE_PATH holds no bundle, first train one on MovieLens-100K "
            "(`train pipeline`, about 5 min on 2 CPU cores) and export it there"
        ),
    ] = False,
    run_dir: Annotated[Path, typer.Option(help="run directory for --train-if-missing")] = Path(
        "runs/ml-100k"
    ),
) -> None:
    """Serve the bundle at FLEXCODE_BUNDLE_PATH over HTTP (settings: FLEXCODE_* env vars)."""
    from service.server import serve as serve_http
    from service.settings import Settings

    settings = Settings()
    bundle_path = Path(settings.bundle_path)
    has_bundle = (bundle_path / "manifest.json").exists() or (bundle_path / "LATEST").exists()
    if not has_bundle and train_if_missing:
        # The one path from the service into the trainer, taken only on request.
        from models.device import resolve_device
        from training.data import PreprocessConfig, load_dataset
        from training.pipeline import run_pipeline

        typer.echo(f"no bundle at {bundle_path}: training one on ml-100k into {run_dir}")
        device = resolve_device(settings.device, name="FLEXCODE_DEVICE")
        run_pipeline(load_dataset("ml-100k", PreprocessConfig()), run_dir, bundle_path, device)
    serve_http(settings, host=host, port=port)
