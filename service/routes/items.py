from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Path

from service.deps import ApiKeyDep, EngineDep, SettingsDep
from service.engine import NewItemInput
from service.errors import BadRequest
from service.schemas import ItemAdded, ItemPublic, ItemsCreateRequest, ItemsCreateResponse

router = APIRouter(prefix="/items", tags=["items"])


@router.post("", response_model=ItemsCreateResponse, dependencies=[ApiKeyDep])
async def add_items(
    body: ItemsCreateRequest, engine: EngineDep, settings: SettingsDep
) -> ItemsCreateResponse:
    """Cold-start new items: text -> semantic codes -> router split -> imputed CF codes ->
    a dedup id assigned atomically by the catalog store. All or nothing. Idempotent: the
    same id with the same content returns the same assignment."""
    if len(body.items) > settings.max_items_per_request:
        raise BadRequest(
            f"{len(body.items)} items in one request; at most "
            f"{settings.max_items_per_request} are accepted (split the batch)"
        )
    ids = [it.item_id for it in body.items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BadRequest(f"item {dup!r} appears more than once in the request")
    inputs = [NewItemInput(it.item_id, it.content()) for it in body.items]
    added = await engine.add_items(inputs, body.replace)
    return ItemsCreateResponse(
        items=[ItemAdded(status=status, **asdict(view)) for status, view in added],
        model_version=engine.rec.bundle.version,
    )


@router.get("/{item_id}", response_model=ItemPublic)
async def get_item(
    engine: EngineDep, item_id: str = Path(min_length=1, max_length=256)
) -> ItemPublic:
    """An item's tokens and where it comes from (the bundle, or added at serving time)."""
    return ItemPublic(**asdict(await engine.get_item(item_id)))
