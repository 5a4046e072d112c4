from __future__ import annotations

from fastapi import APIRouter

from service.deps import EngineDep, HistoriesDep, SettingsDep
from service.errors import BadRequest, error_responses
from service.filters import RequestFilters
from service.schemas import RecommendRequest, RecommendResponse, ScoredItem, parse_time

router = APIRouter(tags=["recommend"])


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    responses=error_responses(400, 413, 422, 503),
)
async def recommend(
    body: RecommendRequest, engine: EngineDep, histories: HistoriesDep, settings: SettingsDep
) -> RecommendResponse:
    """Top-k next items for a history (most recent last): the one sent, after the one
    stored for `user_id` (POST /events) when given. Unknown ids are skipped and listed; a
    history with no known item (or none at all) gets the popularity ranking. Retired items
    are never returned. Filters (include_items, exclude_items, filter) act inside the
    decoding: the answer holds k items whenever k eligible items pass them."""
    # The same bounds are in the OpenAPI document (service.openapi); checked here with a
    # message that names the setting's value.
    if len(body.history) > settings.max_history:
        raise BadRequest(
            f"history has {len(body.history)} items; at most {settings.max_history} are "
            "accepted (send the most recent ones)"
        )
    if body.k > settings.max_k:
        raise BadRequest(f"k must be <= {settings.max_k}, got {body.k}")
    if body.beam_width is not None and body.beam_width > settings.max_beam_width:
        raise BadRequest(f"beam_width must be <= {settings.max_beam_width}, got {body.beam_width}")
    for name in ("include_items", "exclude_items"):
        ids = getattr(body, name)
        if ids is not None and len(ids) > settings.max_filter_items:
            raise BadRequest(
                f"{name} has {len(ids)} ids; at most {settings.max_filter_items} are accepted "
                "(FLEXCODE_MAX_FILTER_ITEMS); for larger sets filter by category instead"
            )
    rules = body.filter
    filters = RequestFilters(
        include_items=body.include_items,
        exclude_items=body.exclude_items,
        categories=rules.categories if rules else None,
        added_after=parse_time(rules.added_after) if rules and rules.added_after else None,
        added_before=parse_time(rules.added_before) if rules and rules.added_before else None,
    )
    history = body.history
    if body.user_id is not None:
        history = await histories.read(body.user_id) + history
    result, unknown, fallback, unknown_include = await engine.recommend(
        history, body.k, body.exclude_history, body.beam_width, filters
    )
    return RecommendResponse(
        items=[
            ScoredItem(item_id=i, score=s)
            for i, s in zip(result.item_ids, result.scores, strict=True)
        ],
        model_version=engine.version,
        unknown_items=unknown,
        fallback=fallback,
        unknown_include_items=unknown_include,
    )
