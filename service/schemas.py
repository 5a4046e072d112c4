"""Request and response bodies. Static bounds live here; the bounds that come from
Settings (history length, k, beam width, items per request) are checked by the routes
and written into the OpenAPI document by the app factory (`service.openapi`)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

# --- item ids -------------------------------------------------------------------------------
# The rule every id the service stores or looks up follows. Ids reach GET /items/{item_id}
# as one percent-encoded path segment, so: no control characters (they have no place in a
# URL, a log line or a Redis key), no whitespace at either end (invisible, and stripped
# by many clients), and not "." or ".." (dot segments: HTTP clients remove them from a
# URL before sending it). The training data's ids all pass: MovieLens ids are digits,
# Amazon ASINs letters and digits, synthetic ids digits.
ITEM_ID_MAX_CHARS = 256
# Written with \u escapes only, so Python's re and ECMA-262 (OpenAPI's regex dialect,
# which schema validators and generators follow) read the same character sets.
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
_SPACE = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
ITEM_ID_PATTERN = f"^[^{_CONTROL}{_SPACE}](?:[^{_CONTROL}]*[^{_CONTROL}{_SPACE}])?$"
DOT_SEGMENTS = (".", "..")
ITEM_ID_RULE = (
    f"item ids have 1 to {ITEM_ID_MAX_CHARS} characters, none of them a control character "
    "(U+0000-U+001F, U+007F-U+009F), neither start nor end with whitespace, and are not "
    "'.' or '..'"
)
_ITEM_ID_RE = re.compile(ITEM_ID_PATTERN)


def check_item_id(value: str) -> str:
    if (
        not 1 <= len(value) <= ITEM_ID_MAX_CHARS
        or value in DOT_SEGMENTS
        or _ITEM_ID_RE.fullmatch(value) is None
    ):
        raise ValueError(ITEM_ID_RULE)
    return value


ITEM_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": ITEM_ID_MAX_CHARS,
    "pattern": ITEM_ID_PATTERN,
    "not": {"enum": list(DOT_SEGMENTS)},
    "description": f"External item id; {ITEM_ID_RULE}.",
}
# One check with one message (pydantic's own length/pattern errors would not say what is
# allowed); the JSON schema states the same rule for clients and generators.
ItemId = Annotated[str, AfterValidator(check_item_id), WithJsonSchema(ITEM_ID_SCHEMA)]

# User ids follow the same rule, for the same reasons (one path segment in
# DELETE /users/{user_id}, part of a Redis key).
USER_ID_RULE = ITEM_ID_RULE.replace("item ids", "user ids")
USER_ID_SCHEMA: dict[str, Any] = {
    **ITEM_ID_SCHEMA,
    "description": f"User id (yours: any stable pseudonymous id); {USER_ID_RULE}.",
}


def check_user_id(value: str) -> str:
    try:
        return check_item_id(value)
    except ValueError:
        raise ValueError(USER_ID_RULE) from None


UserId = Annotated[str, AfterValidator(check_user_id), WithJsonSchema(USER_ID_SCHEMA)]


# --- text -----------------------------------------------------------------------------------
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _refuse_lone_surrogates(value: object) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"); such a string is not Unicode text
    and cannot be encoded, stored or embedded. Refused wherever it appears."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise ValueError("text must be valid Unicode: lone surrogates (\\ud800-\\udfff)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key)
            _refuse_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_lone_surrogates(item)


class RequestBody(BaseModel):
    """A request body: unknown fields refused, lone surrogates refused anywhere in it, and
    strict types (JSON's own: "10" is not a number, 0 is not false), as the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        _refuse_lone_surrogates(data)
        return data


def _integral(value: object) -> object:
    """3.0 -> 3: JSON Schema counts a number with a zero fraction as an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema reads one (3 and 3.0; not "3", not true), in strict models.
# (Bounds go before the validator: after it, pydantic writes them as "ge", not "minimum".)
JsonInt = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]


# --- errors ---------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: list[str] = Field(description="Where: 'body', 'path' or 'query', then field names")
    msg: str


class ErrorBody(BaseModel):
    """The body of every error response (4xx, 503, 507)."""

    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="What is wrong, and what to do about it")
    errors: list[FieldError] | None = Field(
        None, description="422 for a malformed request: one entry per problem"
    )
    item_id: str | None = Field(None, description="409: the id in conflict")
    item_ids: list[str] | None = Field(None, description="409: the bundle ids in the request")
    prefix: list[int] | None = Field(None, description="507: the code prefix that is full")


# --- /recommend -----------------------------------------------------------------------------

FILTER_ATTRIBUTES = ("categories", "added_after", "added_before")
MAX_FILTER_CATEGORIES = 100
TIME_EXAMPLE = "2026-01-31T12:00:00Z"


def parse_time(value: str) -> float:
    """An ISO-8601 time -> unix seconds; a time without an offset is UTC. ValueError
    saying what is accepted otherwise."""
    text = value.strip()
    if len(text) > 10 and text[10] in "t ":
        text = text[:10] + "T" + text[11:]
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO-8601 time; send e.g. {TIME_EXAMPLE!r} or "
            "'2026-01-31T13:00:00+01:00' (no offset = UTC)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _check_time(value: str) -> str:
    parse_time(value)
    return value


IsoTime = Annotated[
    str,
    AfterValidator(_check_time),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": f"ISO-8601 time, e.g. {TIME_EXAMPLE} (no offset = UTC)",
        }
    ),
]
CategoryName = Annotated[str, Field(min_length=1, max_length=256)]


class ItemFilter(RequestBody):
    """Attribute rules on the items that may be returned; all given ones must hold."""

    categories: Annotated[list[CategoryName], Field(max_length=MAX_FILTER_CATEGORIES)] | None = (
        Field(
            None,
            description=(
                "The item has any of these categories (case-insensitive). Bundle items "
                "have their dataset's categories, added items those POST /items gave "
                "them. A name no item has matches nothing"
            ),
        )
    )
    added_after: IsoTime | None = Field(
        None,
        description=(
            "The item was added at or after this time. Added items: when POST /items "
            "added them; bundle items count as added when the bundle was created"
        ),
    )
    added_before: IsoTime | None = Field(None, description="The item was added before this time")

    @model_validator(mode="before")
    @classmethod
    def _known_attributes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in FILTER_ATTRIBUTES]
            if unknown:
                raise ValueError(
                    f"unknown filter attribute {unknown[0]!r}; filters know "
                    f"{', '.join(FILTER_ATTRIBUTES)}"
                )
        return data

    @model_validator(mode="after")
    def _window(self) -> ItemFilter:
        after, before = self.added_after, self.added_before
        if after is not None and before is not None and parse_time(after) > parse_time(before):
            raise ValueError(
                f"added_after ({after}) is later than added_before ({before}): no item can "
                "be in that window; swap them"
            )
        return self


class RecommendRequest(RequestBody):
    history: list[ItemId] = Field(
        default_factory=list,
        description=(
            "Item ids the user interacted with, most recent last. Optional: an empty or "
            "absent history, or one with no known id, gets the popularity ranking "
            '("fallback": "popularity"). Unknown ids are skipped and listed in '
            "unknown_items."
        ),
    )
    user_id: UserId | None = Field(
        None,
        description=(
            "Use the history stored for this user by POST /events (oldest first); the "
            "items of `history`, if any, come after it, as the most recent. A user with "
            "no events and no `history` gets the popularity ranking."
        ),
    )
    k: PositiveInt = Field(10, description="Number of items to return")
    exclude_history: bool = Field(True, description="Never return an item of the history")
    beam_width: PositiveInt | None = Field(
        None,
        description=(
            "How many items the constrained beam search proposes; the dense head proposes "
            "at least k more, so any width returns k items. Default: the width the bundle "
            "was validated with, raised to k plus the excluded items when k is larger"
        ),
    )
    include_items: list[ItemId] | None = Field(
        None,
        description=(
            "Allowlist: only these items may be returned (fewer than k when fewer are "
            "eligible). Ids the catalog does not have are ignored and listed in "
            "unknown_include_items. At most FLEXCODE_MAX_FILTER_ITEMS ids"
        ),
    )
    exclude_items: list[ItemId] | None = Field(
        None,
        description=(
            "Denylist: these items are never returned (besides the history's, with "
            "exclude_history). At most FLEXCODE_MAX_FILTER_ITEMS ids"
        ),
    )
    filter: ItemFilter | None = Field(
        None, description="Rules on item attributes (categories, when the item was added)"
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str
    unknown_items: list[str] = Field(description="History ids neither in the bundle nor added")
    fallback: Literal["popularity"] | None = Field(
        None, description="Set when the history had no known item: a popularity ranking"
    )
    unknown_include_items: list[str] = Field(
        default_factory=list,
        description="include_items ids neither in the bundle nor added (ignored)",
    )


# --- /items ---------------------------------------------------------------------------------

# An extra field's value: text, a number, a boolean, null or a list of text. Nested
# objects are refused: they are not item text.
_EXTRA_VALUE_RULE = "a field not named here holds text, a number, a boolean, null or a list of text"


def _check_extra_value(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(_EXTRA_VALUE_RULE)


# One check with one message (a pydantic union would report each branch that failed).
ExtraValue = Annotated[
    object,
    PlainValidator(_check_extra_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
                {"type": "array", "items": {"type": "string"}},
            ],
            "description": _EXTRA_VALUE_RULE,
        }
    ),
]
# The six named fields plus 50 others: a bound on all fields, so the schema can state it.
MAX_ITEM_FIELDS = 56


class ItemCreate(RequestBody):
    """A new item: its id, a title and any text fields (categories, brand, year,
    description, ...). Every field is part of the item's content for idempotency. At most
    56 fields in all; a field not named here holds text, a number, a boolean, null or a
    list of text."""

    # Extras are typed: pydantic checks them and the schema's additionalProperties says
    # exactly what it accepts (nested objects are not item text).
    model_config = ConfigDict(
        extra="allow", strict=True, json_schema_extra={"maxProperties": MAX_ITEM_FIELDS}
    )
    __pydantic_extra__: dict[str, ExtraValue] = Field(init=False)

    item_id: ItemId
    title: str = Field(min_length=1, max_length=1000)
    categories: str | Annotated[list[str], Field(max_length=100)] | None = None
    brand: str | None = Field(None, max_length=1000)
    year: JsonInt | str | None = None
    description: str | None = Field(None, max_length=20_000)

    @model_validator(mode="before")
    @classmethod
    def _field_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > MAX_ITEM_FIELDS:
            raise ValueError(f"an item has at most {MAX_ITEM_FIELDS} fields, named ones included")
        return data

    def content(self) -> dict[str, object]:
        """Every field but the id, extras included; None values dropped."""
        data = self.model_dump(exclude={"item_id"})
        return {k: v for k, v in data.items() if v is not None}


class ItemsCreateRequest(RequestBody):
    items: list[ItemCreate] = Field(min_length=1, description="Distinct item ids")
    replace: bool = Field(False, description="Replace items whose id exists with other content")


class ItemPublic(BaseModel):
    item_id: str
    tokens: list[int] = Field(description="The item's L code tokens and its dedup token")
    origin: Literal["bundle", "added"]
    alpha: float = Field(description="The router's CF share")
    n_cf: int = Field(description="Lcol: how many of the L code tokens are collaborative")
    added_at: float | None = None
    categories: list[str] = Field(
        default_factory=list,
        description="The item's categories (bundle items: the dataset's; added items: those "
        "POST /items gave), each as the catalog first spelt it; what filter.categories "
        "matches, without regard to case",
    )
    retired: bool = Field(
        False,
        description="Retired (DELETE /items/{item_id}): never recommended, still read in histories",
    )


class ItemAdded(ItemPublic):
    status: Literal["added", "replaced", "unchanged"]


class ItemsCreateResponse(BaseModel):
    items: list[ItemAdded]
    model_version: str


# --- /events and /users -----------------------------------------------------------------

# Unix seconds; the bound refuses milliseconds sent by mistake (they would sort as the
# year 50000) and is far beyond any real event.
MAX_TIMESTAMP = 10_000_000_000


class EventIn(RequestBody):
    user_id: UserId
    item_id: ItemId = Field(
        description="Stored even when the catalog does not have it (it may be added later); "
        "such ids are listed in the answer's unknown_items"
    )
    timestamp: float | None = Field(
        None,
        ge=0,
        le=MAX_TIMESTAMP,
        allow_inf_nan=False,
        description="Unix time of the event in seconds (UTC); default: when the service "
        "receives it. A user's history is ordered by it; the same item at the same time "
        "is one event (a retried batch does not count twice)",
    )


class EventsRequest(RequestBody):
    events: list[EventIn] = Field(min_length=1)


class EventsResponse(BaseModel):
    recorded: int = Field(description="Events in the request (repeats of stored ones included)")
    unknown_items: list[str] = Field(
        description="Item ids of the request that the catalog does not have, each once"
    )


class UserForgotten(BaseModel):
    user_id: str
    events_deleted: int


# --- /admin ---------------------------------------------------------------------------------


class ReloadResponse(BaseModel):
    status: Literal["swapped", "unchanged"] = Field(
        description="'unchanged' when LATEST names the version already serving"
    )
    model_version: str = Field(description="The version serving now")
    previous_version: str | None = None
    carried_items: int = Field(
        description="Added items tokenized again for the new version by this replica"
    )
    seconds: float = Field(description="Load, verification, carrying and warm-up")


# --- health ---------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class StoreState(BaseModel):
    mode: str = Field(description="'embedded' (SQLite journal) or 'redis'")
    up: bool


class SwapState(BaseModel):
    status: Literal["swapped", "refused"]
    version: str = Field(description="The version the attempt was about")
    detail: str
    at: float = Field(description="Unix time of the attempt")


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(
        description="'degraded' while the shared Redis is unreachable: recommendations "
        "still work, additions are refused"
    )
    model_version: str
    device: str
    backend: str
    catalog_items: int
    added_items: int
    retired_items: int
    store: StoreState
    last_swap: SwapState | None = Field(
        None, description="The last attempt to serve another bundle version, if any"
    )


class Starting(BaseModel):
    status: Literal["starting"]
