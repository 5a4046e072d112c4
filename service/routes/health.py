from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering (liveness)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once the bundle is loaded and warm ("degraded" when the shared Redis is down:
    recommendations still work, additions are refused); 503 before that."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    store = engine.store
    body = {
        "status": "ready" if store.up else "degraded",
        "model_version": engine.rec.bundle.version,
        "device": str(engine.rec.device),
        "backend": engine.rec.backend,
        "catalog_items": engine.rec.n_items,
        "added_items": len(engine.rec.added),
        "store": {"mode": store.mode, "up": store.up},
    }
    return JSONResponse(body)


@router.get("/metrics")
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
