from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path

from service.catalog.histories import UserEvent
from service.deps import ApiKeyDep, EngineDep, HistoriesDep, MetricsDep, SettingsDep
from service.errors import BadRequest, error_responses
from service.routes import paths  # noqa: F401 (registers the `text` path convertor)
from service.schemas import EventsRequest, EventsResponse, UserForgotten, UserId

router = APIRouter(tags=["users"])


@router.post(
    "/events",
    response_model=EventsResponse,
    dependencies=[ApiKeyDep],
    responses=error_responses(400, 401, 413, 422, 503),
)
async def record_events(
    body: EventsRequest,
    engine: EngineDep,
    histories: HistoriesDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> EventsResponse:
    """Append interactions to each user's stored history (the newest
    FLEXCODE_USER_HISTORY_MAX per user are kept), which /recommend reads for a
    `user_id`. Item ids the catalog does not have are stored too (they may be added later:
    from then on they count) and listed in `unknown_items`."""
    if len(body.events) > settings.max_events_per_request:
        raise BadRequest(
            f"{len(body.events)} events in one request; at most "
            f"{settings.max_events_per_request} are accepted (split the batch)"
        )
    now = time.time()
    events = [
        UserEvent(e.user_id, e.item_id, now if e.timestamp is None else float(e.timestamp))
        for e in body.events
    ]
    await histories.append(events)
    ids = list(dict.fromkeys(e.item_id for e in events))
    unknown = engine.unknown_items(ids)
    metrics.events_recorded.inc(len(events))
    metrics.events_unknown_items.inc(sum(e.item_id in set(unknown) for e in events))
    return EventsResponse(recorded=len(events), unknown_items=unknown)


@router.delete(
    "/users/{user_id:text}",
    response_model=UserForgotten,
    dependencies=[ApiKeyDep],
    responses=error_responses(401, 422, 503),
)
async def forget_user(
    histories: HistoriesDep,
    metrics: MetricsDep,
    user_id: Annotated[UserId, Path(description="The id, percent-encoded as one path segment")],
) -> UserForgotten:
    """Delete everything the service stores about a user: their event history (the
    service keeps nothing else per user; logs and metrics hold no user ids). Idempotent:
    an unknown user gets events_deleted 0."""
    deleted = await histories.forget(user_id)
    metrics.user_histories_deleted.inc()
    return UserForgotten(user_id=user_id, events_deleted=deleted)
