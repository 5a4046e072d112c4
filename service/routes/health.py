from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from service.deps import MetricsDep
from service.schemas import Health, Readiness, Starting, StoreState, SwapState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answering (liveness)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Starting, "description": "The bundle is still loading"}},
)
async def readyz(request: Request) -> Readiness | JSONResponse:
    """200 once the bundle is loaded and warm ("degraded" when the shared Redis is down:
    recommendations still work, additions are refused); 503 before that. `last_swap`:
    the last attempt to serve a new bundle version (swapped, or refused and why)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        return JSONResponse(Starting(status="starting").model_dump(), status_code=503)
    state = engine.status()
    swapper = getattr(request.app.state, "swapper", None)
    last = swapper.last if swapper is not None else None
    return Readiness(
        status="ready" if state.store_up else "degraded",
        model_version=state.version,
        device=state.device,
        backend=state.backend,
        catalog_items=state.catalog_items,
        added_items=state.added_items,
        retired_items=state.retired_items,
        store=StoreState(mode=state.store_mode, up=state.store_up),
        last_swap=None if last is None else SwapState(**asdict(last)),
    )


class PrometheusText(Response):
    """The Prometheus text format, 0.0.4: what generate_latest writes (names and labels
    escaped to the classic character set), and what every Prometheus version reads."""

    media_type = CONTENT_TYPE_PLAIN_0_0_4


@router.get(
    "/metrics",
    response_class=PrometheusText,
    responses={200: {"content": {PrometheusText.media_type: {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> PrometheusText:
    """Prometheus metrics of this process (the names are listed in the README)."""
    return PrometheusText(generate_latest(metrics.registry))
