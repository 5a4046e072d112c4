"""What every body shares: the item and user id rule, text checks, the strict
request base, JSON-Schema integers and the one error body."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
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
