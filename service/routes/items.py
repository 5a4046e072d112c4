from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path

from service.deps import ApiKeyDep, EngineDep, SettingsDep
from service.errors import BadRequest, ItemConflict, error_responses
from service.new_items import NewItemInput
from service.routes import paths  # noqa: F401 (registers the `text` path convertor)
from service.schemas import ItemAdded, ItemId, ItemPublic, ItemsCreateRequest, ItemsCreateResponse

router = APIRouter(prefix="/items", tags=["items"])

PathItemId = Annotated[ItemId, Path(description="The id, percent-encoded as one path segment")]


@router.post(
    "",
    response_model=ItemsCreateResponse,
    dependencies=[ApiKeyDep],
    responses=error_responses(400, 401, 409, 413, 422, 503, 507),
)
async def add_items(
    body: ItemsCreateRequest, engine: EngineDep, settings: SettingsDep
) -> ItemsCreateResponse:
    """Cold-start new items: text -> semantic codes -> router split -> imputed CF codes ->
    a dedup id assigned atomically by the catalog store. All or nothing. Idempotent: the
    same id with the same content returns the same assignment, within one request too.
    Adding a retired item again restores it."""
    if len(body.items) > settings.max_items_per_request:
        raise BadRequest(
            f"{len(body.items)} items in one request; at most "
            f"{settings.max_items_per_request} are accepted (split the batch)"
        )
    # The same item twice is the same item (idempotent); one id with two contents is a
    # conflict, as it would be across two requests.
    inputs: dict[str, NewItemInput] = {}
    for it in body.items:
        item = NewItemInput(it.item_id, it.content())
        first = inputs.setdefault(it.item_id, item)
        if first.content_hash != item.content_hash:
            raise ItemConflict(
                f"item {it.item_id!r} appears twice in the request with different content",
                item_id=it.item_id,
            )
    added = await engine.add_items(list(inputs.values()), body.replace)
    by_id = {view.item_id: ItemAdded(status=status, **asdict(view)) for status, view in added}
    return ItemsCreateResponse(
        items=[by_id[it.item_id] for it in body.items],  # one entry per item sent, in order
        model_version=engine.version,
    )


# `:text` so an id holding "/" (sent percent-encoded, %2F, or as is) reaches these routes.
# The restore route is POST only, and no other POST route has an id, so an id ending in
# "/restore" is never read as a restore.
@router.get("/{item_id:text}", response_model=ItemPublic, responses=error_responses(404, 422, 503))
async def get_item(engine: EngineDep, item_id: PathItemId) -> ItemPublic:
    """An item's tokens, where it comes from (the bundle, or added at serving time) and
    whether it is retired."""
    return ItemPublic(**asdict(await engine.get_item(item_id)))


@router.delete(
    "/{item_id:text}",
    response_model=ItemPublic,
    dependencies=[ApiKeyDep],
    responses=error_responses(401, 404, 422, 503),
)
async def retire_item(engine: EngineDep, item_id: PathItemId) -> ItemPublic:
    """Retire an item of the bundle or an added one: from the next /recommend on, on every
    replica and for every bundle version, it is never recommended (popularity fallback
    included); it stays readable in histories and through GET. Idempotent. Undone by
    POST /items/{item_id}/restore, or, for an added item, by adding it again."""
    return ItemPublic(**asdict(await engine.retire(item_id, retired=True)))


@router.post(
    "/{item_id:text}/restore",
    response_model=ItemPublic,
    dependencies=[ApiKeyDep],
    responses=error_responses(401, 404, 422, 503),
)
async def restore_item(engine: EngineDep, item_id: PathItemId) -> ItemPublic:
    """Make a retired item recommendable again (a no-op for one that is not retired)."""
    return ItemPublic(**asdict(await engine.retire(item_id, retired=False)))
