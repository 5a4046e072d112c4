"""Request and response bodies. Static bounds live here; the bounds that come from
Settings (history length, k, beam width, items per request) are checked by the routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ItemId = Field(min_length=1, max_length=256, description="External item id")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[str] = Field(
        default_factory=list,
        max_length=100_000,
        description="Item ids the user interacted with, most recent last",
    )
    k: int = Field(10, ge=1, description="Number of items to return")
    exclude_history: bool = True
    beam_width: int | None = Field(None, ge=1, description="Beam width (>= k)")

    @field_validator("history")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for item_id in value:
            if not 1 <= len(item_id) <= 256:
                raise ValueError("every history item id must have 1 to 256 characters")
        return value


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str
    unknown_items: list[str]
    fallback: Literal["popularity"] | None = Field(
        None, description="Set when the history had no known item: a popularity ranking"
    )


class ItemCreate(BaseModel):
    """A new item: its id, a title and any text fields (categories, brand, year,
    description, ...). Every field is part of the item's content for idempotency."""

    model_config = ConfigDict(extra="allow")

    item_id: str = ItemId
    title: str = Field(min_length=1, max_length=1000)
    categories: str | list[str] | None = None
    brand: str | None = Field(None, max_length=1000)
    year: int | str | None = None
    description: str | None = Field(None, max_length=20_000)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 100:
            raise ValueError("at most 100 categories")
        return value

    @model_validator(mode="after")
    def _extras(self) -> ItemCreate:
        extra = self.model_extra or {}
        if len(extra) > 50:
            raise ValueError("at most 50 extra fields per item")
        for key, value in extra.items():
            scalar = value is None or isinstance(value, str | int | float | bool)
            if not scalar and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"field {key!r} must be text, a number or a list of text")
        return self

    def content(self) -> dict[str, object]:
        """Every field but the id, extras included; None values dropped."""
        data = self.model_dump(exclude={"item_id"})
        return {k: v for k, v in data.items() if v is not None}


class ItemsCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemCreate] = Field(min_length=1, max_length=100_000)
    replace: bool = Field(False, description="Replace items whose id exists with other content")


class ItemPublic(BaseModel):
    item_id: str
    tokens: list[int] = Field(description="The item's L code tokens and its dedup token")
    origin: Literal["bundle", "added"]
    alpha: float = Field(description="The router's CF share")
    n_cf: int = Field(description="Lcol: how many of the L code tokens are collaborative")
    added_at: float | None = None


class ItemAdded(ItemPublic):
    status: Literal["added", "replaced", "unchanged"]


class ItemsCreateResponse(BaseModel):
    items: list[ItemAdded]
    model_version: str
