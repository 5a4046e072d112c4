from __future__ import annotations

from fastapi import APIRouter

from service.deps import EngineDep, HistoriesDep, SettingsDep
from service.errors import BadRequest, error_responses
from service.schemas import RecommendRequest, RecommendResponse, ScoredItem

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
    are never returned."""
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
    history = body.history
    if body.user_id is not None:
        history = await histories.read(body.user_id) + history
    result, unknown, fallback = await engine.recommend(
        history, body.k, body.exclude_history, body.beam_width
    )
    return RecommendResponse(
        items=[
            ScoredItem(item_id=i, score=s)
            for i, s in zip(result.item_ids, result.scores, strict=True)
        ],
        model_version=engine.version,
        unknown_items=unknown,
        fallback=fallback,
    )
