"""POST /recommend: the request (history or user, k, filters) and the answer."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    WithJsonSchema,
    model_validator,
)

from service.schemas.common import ItemId, PositiveInt, RequestBody, UserId

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
