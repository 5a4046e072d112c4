"""Folding the items added while serving into the base prefix index, in the background.

Added items are served from an overlay index the moment they arrive; the overlay makes
every decoding step look in two tries, so it is merged into the base now and then. The
build runs on its own thread (never the inference thread), so no request waits for a
merge; only the cheap snapshot and the swap run on the inference thread, between
batches. Adds that land during a build stay in the overlay for the next round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from models.item_table import ItemTable
from service.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# Seconds between an add and the background merge of the overlay into the base index: a
# burst of adds is merged once, and until then the added items are served from the overlay.
MERGE_DELAY_S = 0.5

OnThread = Callable[..., Awaitable[object]]


class OverlayMerger:
    """Merges `table`'s overlay after adds; `on_inference_thread(fn, *args)` runs fn on the
    thread that owns the table (the engine's inference thread)."""

    def __init__(self, table: ItemTable, on_inference_thread: OnThread) -> None:
        self._table = table
        self._on_thread = on_inference_thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexcode-merge")
        self._task: asyncio.Task | None = None

    def schedule(self) -> None:
        """A merge soon (one task at a time; a running one picks up later adds)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="flexcode-merge")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(MERGE_DELAY_S)
            job = await self._on_thread(self._table.merge_job)
            if job is None:
                return
            started = time.perf_counter()
            try:
                merged = await loop.run_in_executor(self._executor, job)
            except Exception:  # the overlay keeps serving; the next add retries
                logger.exception("merging the added items into the base index failed")
                return
            installed = await self._on_thread(self._table.install_merge, merged)
            logger.debug(
                "merge of %d added items %s in %.2f s",
                merged.n_merged,
                "installed" if installed else "stale, redone",
                time.perf_counter() - started,
            )

    async def merged(self) -> None:
        """Wait for the merge under way, if any (tests, benchmarks)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._executor.shutdown(wait=True)
