from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.convertors import Convertor, register_url_convertor

from service.deps import ApiKeyDep, EngineDep, SettingsDep
from service.engine import NewItemInput
from service.errors import BadRequest, ItemConflict, error_responses
from service.schemas import ItemAdded, ItemId, ItemPublic, ItemsCreateRequest, ItemsCreateResponse

router = APIRouter(prefix="/items", tags=["items"])


class AnyTextConvertor(Convertor[str]):
    """The rest of the path, whatever it holds. Starlette's `path` convertor is `.*`,
    whose dot stops at a newline (and `$` matches before a final one): "/items/x%0A"
    would be looked up as "x", "/items/a%0Ab" would match no route. With every character
    captured, the id check refuses those ids with its 422 instead."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Starlette's extension point for path convertors (one registry per process); registered
# before the route below compiles its path.
register_url_convertor("text", AnyTextConvertor())


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
    same id with the same content returns the same assignment, within one request too."""
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
        model_version=engine.rec.bundle.version,
    )


# `:text` so an id holding "/" (sent percent-encoded, %2F, or as is) reaches this route.
@router.get("/{item_id:text}", response_model=ItemPublic, responses=error_responses(404, 422, 503))
async def get_item(
    engine: EngineDep,
    item_id: Annotated[ItemId, Path(description="The id, percent-encoded as one path segment")],
) -> ItemPublic:
    """An item's tokens and where it comes from (the bundle, or added at serving time)."""
    return ItemPublic(**asdict(await engine.get_item(item_id)))
