"""The OpenAPI document against the app that serves it, by schemathesis.

For every operation schemathesis sends the document's examples, boundary cases of every
declared bound (coverage: lengths, limits, missing fields, wrong types, undeclared
methods) and random requests (fuzzing), valid and invalid, and runs all its checks on
each answer: no 5xx; status code, content type, headers and body as declared; valid data
accepted and invalid data refused; the API key enforced where the document asks for it
(the key is set, so the auth checks probe with it, without it and with a wrong one).

The real app factory on the tiny test bundle, embedded store. Deterministic: fixed seed,
derandomized generation, a bounded number of random examples per operation (the whole
test takes 10 to 20 s on one busy core).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from schemathesis.python import asgi

from service.app import create_app
from service.schemas import parse_time
from tests.service.fakes import FakeTextEncoder

API_KEY = "contract-test-key-0123456789abcdef"
SEED = 20_261_129
FUZZ_EXAMPLES = 100  # random requests per operation, on top of examples and coverage
# schemathesis' defaults for what refuses invalid data and what may answer valid data,
# plus 413 in both: a body over FLEXCODE_MAX_BODY_BYTES is refused before anything parses
# it, whatever its fields hold, and no schema keyword can bound a whole body's size.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
ACCEPTANCES = ["2xx", "3xx", "401", "403", "404", "409", "413", "429"]


@pytest.fixture
def api_schema(make_settings) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(make_settings(api_keys=[API_KEY]), text_encoder=FakeTextEncoder())
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {API_KEY}"},
            "generation": {"max-examples": FUZZ_EXAMPLES, "deterministic": True},
            # Every check on (the default); 5xx fail not_a_server_error whatever these say.
            "checks": {
                "enabled": True,
                "negative_data_rejection": {"expected-statuses": [*REFUSALS, "5xx"]},
                "positive_data_acceptance": {"expected-statuses": [*ACCEPTANCES, "5xx"]},
            },
        }
    )
    # Fetching the document starts the app's lifespan (bundle load, warm-up) on
    # schemathesis' event loop thread, where every request of the test then runs.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    schema.hook("map_case")(_ordered_time_window)
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()  # the engine's threads and the journal, closed


def _ordered_time_window(context, case):
    """The one rule of POST /recommend that JSON Schema cannot state, since it compares
    two fields: filter.added_after must not be later than filter.added_before (a 422
    otherwise, tests/service/test_filters.py). A generated body with both times in the
    wrong order gets them swapped, so valid data stays valid."""
    body = case.body
    window = body.get("filter") if isinstance(body, dict) else None
    if isinstance(window, dict):
        after, before = window.get("added_after"), window.get("added_before")
        try:
            inverted = parse_time(after) > parse_time(before)
        except (TypeError, ValueError, AttributeError, OverflowError):
            inverted = False  # not two valid times: whatever the case tests, leave it
        if inverted:
            window["added_after"], window["added_before"] = before, after
    return case


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request) -> None:
    """schemathesis 4.32 names each operation's subtest by rewriting the test node's
    `_nodeid`, an attribute pytest 9.2 no longer has: give it one (display only)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


contract = schemathesis.pytest.from_fixture("api_schema")


@contract.parametrize()
def test_api_conforms_to_its_openapi_document(case) -> None:
    case.call_and_validate()
