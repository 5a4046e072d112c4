"""The OpenAPI document, with the bounds this deployment's Settings put on requests.

The request models carry the static bounds; the ones an operator sets (history length,
k, beam width, filter lists, items and events per request) are checked by the routes and
written in here, so the document describes the service that serves it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.settings import Settings


def _integer_branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The integer schema of a property that may be `integer` or `integer | null`."""
    if prop.get("type") == "integer":
        return prop
    return next(branch for branch in prop["anyOf"] if branch.get("type") == "integer")


def apply_settings_bounds(document: dict[str, Any], settings: Settings) -> None:
    schemas = document["components"]["schemas"]
    recommend = schemas["RecommendRequest"]["properties"]
    recommend["history"]["maxItems"] = settings.max_history
    _integer_branch(recommend["k"])["maximum"] = settings.max_k
    _integer_branch(recommend["beam_width"])["maximum"] = settings.max_beam_width
    for name in ("include_items", "exclude_items"):  # list | null
        prop = recommend[name]
        branch = next(b for b in prop.get("anyOf", [prop]) if b.get("type") == "array")
        branch["maxItems"] = settings.max_filter_items
    items = schemas["ItemsCreateRequest"]["properties"]["items"]
    items["maxItems"] = settings.max_items_per_request
    events = schemas["EventsRequest"]["properties"]["events"]
    events["maxItems"] = settings.max_events_per_request


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make app.openapi() return the document with `settings`' bounds (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            apply_settings_bounds(document, settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
