"""One check at a time, shared by everyone waiting: a caller is answered by a check that
STARTED after it arrived (one that was already running may have read too early), so N
concurrent callers cost about two checks, not N."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class SingleFlight:
    def __init__(self, check: Callable[[], Awaitable[None]]) -> None:
        self._check = check
        self._lock = asyncio.Lock()
        self._asked = 0  # tickets handed out
        self._covered = 0  # every ticket up to this one was answered by a finished check

    async def __call__(self) -> None:
        self._asked += 1
        ticket = self._asked
        async with self._lock:
            if self._covered >= ticket:
                return
            covers = self._asked  # everyone who arrived before this check starts
            await self._check()
            self._covered = covers
