"""The micro-batcher: FIFO batches of at most max_size, no wait when max_wait_s is 0."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batching import MicroBatcher

pytestmark = pytest.mark.anyio


async def test_batches_are_fifo_capped_and_do_not_wait() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        if not batches:
            gate.wait(5)  # hold the first batch so the others queue up behind it
        batches.append(xs)
        return [x * 10 for x in xs]

    executor = ThreadPoolExecutor(max_workers=1)
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, executor, max_size=4, max_wait_s=0.0)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)  # the lone request runs at once, alone
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await first == 0
        assert [await r for r in rest] == [i * 10 for i in range(1, 10)]
    finally:
        await batcher.stop()
        executor.shutdown()
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
