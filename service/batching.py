"""Micro-batching: concurrent requests become one call of a batch function.

A worker takes the oldest queued request and those queued behind it, up to `max_size`
(optionally waiting up to `max_wait_s` for more), and runs the batch function on the one
inference thread. While a batch runs, new requests queue up and form the next batch, so
under load batches grow by themselves; the queue is FIFO and a batch never holds more than
`max_size`, so no request waits behind more than one full batch per max_size requests
ahead of it. A wait (max_wait_s > 0) only adds latency on this CPU: measured, a 2 ms wait
doubled the p50 at concurrency 1 and gave no throughput (BENCHMARKS.md, the service).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from service.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """fn(list of inputs) -> list of outputs (same order), run on `executor`.

    on_batch(size, seconds) is called after each batch (metrics). An exception raised by
    fn is given to every request of that batch.
    """

    def __init__(
        self,
        fn: Callable[[list[In]], Sequence[Out]],
        executor: Executor,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.fn = fn
        self.executor = executor
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[In, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="flexcode-batcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, item: In) -> Out:
        if self._task is None:
            raise RuntimeError("MicroBatcher.submit before start()")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[In, asyncio.Future]]:
        """FIFO: the oldest request, then whatever queued behind it, up to max_size. Only
        with max_wait_s > 0 does it then wait for more; at 0 (the default) it never waits:
        a batch runs as soon as the inference thread is free, and the requests that arrive
        while it runs form the next one, so batches grow with the load by themselves and
        a lone request pays no wait."""
        batch = [await self._queue.get()]
        while len(batch) < self.max_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if self.max_wait_s <= 0:
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(x, f) for x, f in batch if not f.done()]  # drop cancelled requests
            if not live:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, self.fn, [x for x, _ in live])
            except Exception as e:  # every request of the batch gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                if self.on_batch is not None:
                    self.on_batch(len(live), time.perf_counter() - started)
            for (_, future), out in zip(live, outputs, strict=True):
                if not future.done():
                    future.set_result(out)
