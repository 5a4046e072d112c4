"""Dependencies: the app's long-lived objects reach handlers through these, never through
module globals."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.catalog.histories import UserHistories
from service.engine import Engine
from service.errors import NotReady
from service.metrics import Metrics
from service.settings import Settings
from service.swap import BundleSwapper

# Declared in OpenAPI on the routes that depend on require_api_key (the write routes).
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from FLEXCODE_API_KEYS, as 'Authorization: Bearer <key>'",
)


# Plain reads of app.state: `async def`, so FastAPI calls them on the event loop. A sync
# dependency is run in the thread pool, a thread hop per dependency per request that cost
# more than the dense head's whole inference at batch 32 (BENCHMARKS.md, the service).
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_engine(request: Request) -> AsyncIterator[Engine]:
    """The serving engine, read ONCE per request and held until the request is done: a
    swap in the meantime changes nothing for it (one bundle version answers it all) and
    closes the old engine only after it. (async: runs on the event loop, as the engine's
    request count must.)"""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise NotReady("the model is still loading; retry shortly")
    with engine.serving():
        yield engine


def _started(request: Request, name: str):
    value = getattr(request.app.state, name, None)
    if value is None:
        raise NotReady("the service is still starting; retry shortly")
    return value


async def get_histories(request: Request) -> UserHistories:
    return _started(request, "histories")


async def get_swapper(request: Request) -> BundleSwapper:
    return _started(request, "swapper")


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[Engine, Depends(get_engine)]
HistoriesDep = Annotated[UserHistories, Depends(get_histories)]
SwapperDep = Annotated[BundleSwapper, Depends(get_swapper)]


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer auth for write routes, when keys are configured (always in production)."""
    if not settings.api_keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, key.encode()) for key in settings.api_keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid API key",
            headers={"WWW-Authenticate": "Bearer"},
        )


ApiKeyDep = Depends(require_api_key)
