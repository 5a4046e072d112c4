"""POST /admin/reload, /healthz and /readyz."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)

# --- /admin ---------------------------------------------------------------------------------


class ReloadResponse(BaseModel):
    status: Literal["swapped", "unchanged"] = Field(
        description="'unchanged' when LATEST names the version already serving"
    )
    model_version: str = Field(description="The version serving now")
    previous_version: str | None = None
    carried_items: int = Field(
        description="Added items tokenized again for the new version by this replica"
    )
    seconds: float = Field(description="Load, verification, carrying and warm-up")


# --- health ---------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class StoreState(BaseModel):
    mode: str = Field(description="'embedded' (SQLite journal) or 'redis'")
    up: bool


class SwapState(BaseModel):
    status: Literal["swapped", "refused"]
    version: str = Field(description="The version the attempt was about")
    detail: str
    at: float = Field(description="Unix time of the attempt")


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(
        description="'degraded' while the shared Redis is unreachable: recommendations "
        "still work, additions are refused"
    )
    model_version: str
    device: str
    backend: str
    catalog_items: int
    added_items: int
    retired_items: int
    store: StoreState
    last_swap: SwapState | None = Field(
        None, description="The last attempt to serve another bundle version, if any"
    )


class Starting(BaseModel):
    status: Literal["starting"]
