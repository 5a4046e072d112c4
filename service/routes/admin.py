from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from service.deps import ApiKeyDep, SwapperDep
from service.errors import BundleConflict, error_responses
from service.schemas import ReloadResponse
from service.swap import BundleRefused

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[ApiKeyDep],
    responses=error_responses(
        401,
        409,
        503,
        descriptions={
            409: "The version LATEST names is refused (unreadable, corrupted, or its added "
            "items cannot be carried over); the serving version goes on",
        },
    ),
)
async def reload_bundle(swapper: SwapperDep) -> ReloadResponse:
    """Serve the bundle version LATEST names now, without waiting for the next poll
    (FLEXCODE_BUNDLE_POLL_S): loaded and verified beside the serving one, added items
    carried over, warmed, then swapped in; requests keep being answered throughout, each
    by one version. 409 when the new version is refused (the old one keeps serving); a
    refused version is tried again by this call, not by the poll."""
    try:
        result = await swapper.reload()
    except BundleRefused as e:
        raise BundleConflict(str(e)) from e
    return ReloadResponse(**asdict(result))
