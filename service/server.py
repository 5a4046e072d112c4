"""Run the service under uvicorn: `serve(settings, host, port)` (what `flexcode serve`
calls) or `python -m service --host 0.0.0.0 --port 8000`."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.settings import Settings


def serve(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocks until the server stops. A start-up failure (bad bundle, missing keys in
    production) is logged with its reason and exits non-zero."""
    settings = settings or Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level,
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit("flexcode service failed to start (see the log above)")
