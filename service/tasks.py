"""Stopping the service's background tasks (stream tails, pollers, the batcher, merges)."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel `task` (None: nothing) and wait until it has stopped, so whatever it holds
    is released before the caller closes it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
