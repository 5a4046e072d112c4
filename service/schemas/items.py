"""POST /items, GET and DELETE /items/{id}: new items and how an item is shown."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from service.schemas.common import ItemId, JsonInt, RequestBody

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
