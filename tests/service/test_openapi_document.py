"""What the OpenAPI document declares (test_openapi_contract.py checks that the running
app keeps to it): each route's status codes, the one error body, the Prometheus content
type, the API key on the write routes, exactly which extra item fields are accepted, and
the bounds this deployment's settings set."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.schemas import ITEM_ID_SCHEMA, MAX_ITEM_FIELDS, USER_ID_SCHEMA
from service.settings import Settings

ERROR_REF = "#/components/schemas/ErrorBody"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = {
    ("post", "/recommend"): {"200", "400", "413", "422", "503"},
    ("post", "/items"): {"200", "400", "401", "409", "413", "422", "503", "507"},
    ("get", "/items/{item_id}"): {"200", "404", "422", "503"},
    ("delete", "/items/{item_id}"): {"200", "401", "404", "422", "503"},
    ("post", "/items/{item_id}/restore"): {"200", "401", "404", "422", "503"},
    ("post", "/events"): {"200", "400", "401", "413", "422", "503"},
    ("delete", "/users/{user_id}"): {"200", "401", "422", "503"},
    ("post", "/admin/reload"): {"200", "401", "409", "503"},
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
    ("get", "/metrics"): {"200"},
}


def document(**settings: object) -> dict:
    # No lifespan: the document needs no bundle.
    return create_app(Settings(bundle_path=Path("/nonexistent"), **settings)).openapi()


@pytest.fixture(scope="module")
def doc() -> dict:
    return document()


def test_each_route_declares_the_statuses_it_returns(doc) -> None:
    declared = {
        (method, path): set(op["responses"])
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert declared == STATUSES


def test_every_error_has_the_one_error_body(doc) -> None:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status.startswith("2") or (path, status) == ("/readyz", "503"):
                    continue
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": ERROR_REF}}
                }, (method, path, status)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["detail"]
    assert schemas["ErrorBody"]["additionalProperties"] is False


def test_metrics_is_prometheus_text(doc) -> None:
    content = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert content == {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}


WRITE_ROUTES = {
    ("post", "/items"),
    ("delete", "/items/{item_id}"),
    ("post", "/items/{item_id}/restore"),
    ("post", "/events"),
    ("delete", "/users/{user_id}"),
    ("post", "/admin/reload"),
}


def test_the_api_key_is_declared_on_the_write_routes_only(doc) -> None:
    scheme = doc["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    secured = {
        (method, path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    }
    assert secured == WRITE_ROUTES
    for method, path in WRITE_ROUTES:
        assert doc["paths"][path][method]["security"] == [{"ApiKey": []}]


def test_extra_item_fields_are_declared_as_accepted(doc) -> None:
    item = doc["components"]["schemas"]["ItemCreate"]
    types = {branch["type"] for branch in item["additionalProperties"]["anyOf"]}
    assert types == {"string", "number", "boolean", "null", "array"}  # no "object"
    arrays = [b for b in item["additionalProperties"]["anyOf"] if b["type"] == "array"]
    assert arrays[0]["items"] == {"type": "string"}
    assert item["maxProperties"] == MAX_ITEM_FIELDS


def test_item_ids_are_declared_with_their_rule(doc) -> None:
    item_id = doc["components"]["schemas"]["ItemCreate"]["properties"]["item_id"]
    history = doc["components"]["schemas"]["RecommendRequest"]["properties"]["history"]
    params = [
        doc["paths"][path][method]["parameters"][0]["schema"]
        for method, path in (
            ("get", "/items/{item_id}"),
            ("delete", "/items/{item_id}"),
            ("post", "/items/{item_id}/restore"),
        )
    ]
    for schema in (item_id, history["items"], *params):
        assert {k: schema[k] for k in ITEM_ID_SCHEMA} == ITEM_ID_SCHEMA
    # An event's item id has a description of its own (unknown ids are stored too).
    event = doc["components"]["schemas"]["EventIn"]["properties"]["item_id"]
    rule = {k: v for k, v in ITEM_ID_SCHEMA.items() if k != "description"}
    assert {k: event[k] for k in rule} == rule


def test_user_ids_follow_the_item_id_rule(doc) -> None:
    schemas = doc["components"]["schemas"]
    (param,) = doc["paths"]["/users/{user_id}"]["delete"]["parameters"]
    user_id = schemas["RecommendRequest"]["properties"]["user_id"]
    user_id = next(b for b in user_id["anyOf"] if b.get("type") == "string")
    for schema in (schemas["EventIn"]["properties"]["user_id"], user_id, param["schema"]):
        assert {k: schema[k] for k in USER_ID_SCHEMA} == USER_ID_SCHEMA


def test_history_is_optional_and_says_what_its_absence_does(doc) -> None:
    recommend = doc["components"]["schemas"]["RecommendRequest"]
    assert "history" not in recommend.get("required", [])
    assert "popularity" in recommend["properties"]["history"]["description"]


def test_settings_bounds_are_in_the_document() -> None:
    doc = document(
        max_history=7, max_k=5, max_beam_width=9, max_items_per_request=3, max_events_per_request=4
    )
    recommend = doc["components"]["schemas"]["RecommendRequest"]["properties"]
    assert recommend["history"]["maxItems"] == 7
    assert recommend["k"]["maximum"] == 5
    integer = next(b for b in recommend["beam_width"]["anyOf"] if b["type"] == "integer")
    assert integer["maximum"] == 9
    items = doc["components"]["schemas"]["ItemsCreateRequest"]["properties"]["items"]
    assert items["maxItems"] == 3
    events = doc["components"]["schemas"]["EventsRequest"]["properties"]["events"]
    assert events["maxItems"] == 4
