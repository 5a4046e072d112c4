"""POST /events and DELETE /users/{id}: per-user history."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
)

from service.schemas.common import ItemId, RequestBody, UserId

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
