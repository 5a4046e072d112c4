"""Domain errors and their HTTP mapping (one exception handler for all of them)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ServiceError(Exception):
    """A refusal the client can act on; `status` is its HTTP status code."""

    status: int = 400

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(ServiceError):
    status = 422


class NotFound(ServiceError):
    status = 404


class ItemConflict(ServiceError):
    """The same item id with other content (and no replace), or an id of the bundle."""

    status = 409


class DedupExhausted(ServiceError):
    """Every dedup id of a code prefix is taken: the layout cannot hold another item there."""

    status = 507


class StoreUnavailable(ServiceError):
    """The shared store (Redis) is unreachable: writes are refused, not lost."""

    status = 503


class NotReady(ServiceError):
    status = 503


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(
            status_code=exc.status, content={"detail": exc.message, **exc.extra}, headers=headers
        )

    app.add_exception_handler(ServiceError, handle)
