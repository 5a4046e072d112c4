"""Domain errors and their HTTP mapping. Every error response, whoever raises it (a
route, FastAPI's request validation, Starlette's routing, the body size limit), has the
one body `service.schemas.ErrorBody`; `error_responses` declares them in OpenAPI."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.schemas import ErrorBody, FieldError


class ServiceError(Exception):
    """A refusal the client can act on; `status` is its HTTP status code. `extra` keys
    must be fields of ErrorBody (a new one is declared there first)."""

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


class BundleConflict(ServiceError):
    """The bundle version LATEST names cannot serve; the serving version goes on."""

    status = 409


class DedupExhausted(ServiceError):
    """Every dedup id of a code prefix is taken: the layout cannot hold another item there."""

    status = 507


class StoreUnavailable(ServiceError):
    """The shared store (Redis) is unreachable: writes are refused, not lost."""

    status = 503


class NotReady(ServiceError):
    status = 503


RETRY_AFTER_S = 1  # what a 503 tells the client to wait before trying again


def error_json(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def validation_body(exc: RequestValidationError) -> ErrorBody:
    """One line per problem in `detail`, and the same problems as `errors`."""
    errors, lines = [], []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", ""))
        # Our validators' messages say what is wrong already; pydantic prefixes the ones
        # raised as ValueError with its own label.
        if err.get("type") == "value_error":
            msg = msg.removeprefix("Value error, ")
        errors.append(FieldError(loc=loc, msg=msg))
        where = ".".join(p for p in loc if p != "body")
        lines.append(f"{where or 'body'}: {msg}")
    return ErrorBody(detail="; ".join(lines), errors=errors)


def allowed_methods(request: Request) -> str:
    """The methods of the path template this path belongs to, as the OpenAPI document
    lists them. Starlette's own 405 names only the first route whose path matched (GET of
    /items/{id}, not its DELETE). When several templates match (an id may hold "/", so
    /items/x/restore fits /items/{item_id} too), the most specific one, with the most
    literal text, is the path's. The routes are those create_app lists in
    app.state.api_routes."""
    by_template: dict[str, set[str]] = {}
    for route in request.app.state.api_routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            by_template.setdefault(route.path_format, set()).update(route.methods or ())
    if not by_template:
        return ""
    template = max(by_template, key=lambda t: len(re.sub(r"\{[^}]*\}", "", t)))
    return ", ".join(sorted(by_template[template]))


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
        return error_json(exc.status, ErrorBody(detail=exc.message, **exc.extra), headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_json(422, validation_body(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's 404 and 405 and the 401 of the API key check.
        assert isinstance(exc, StarletteHTTPException)
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_json(exc.status_code, ErrorBody(detail=str(exc.detail)), headers)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


# --- OpenAPI ------------------------------------------------------------------------------

_DESCRIPTIONS = {
    400: "The body could not be read (not UTF-8 JSON)",
    401: "Missing or invalid API key",
    404: "No such item",
    409: "Conflict: the id belongs to the bundle, or exists with other content",
    413: "The request body is larger than FLEXCODE_MAX_BODY_BYTES",
    422: "A malformed request or an out-of-bounds field; `detail` says which",
    503: "Not ready yet (the model is loading), or the catalog store is unreachable",
    507: "No dedup id left for the new item's code prefix",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Bearer",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}


def error_responses(
    *statuses: int, descriptions: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the ErrorBody model and what it means
    (`descriptions`: the route's own meaning of a status, where it differs)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = (descriptions or {}).get(status, _DESCRIPTIONS[status])
        entry: dict[str, Any] = {"model": ErrorBody, "description": description}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out
