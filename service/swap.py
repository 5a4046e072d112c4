"""New bundle versions without downtime.

When the bundle root's LATEST names another version (checked every FLEXCODE_BUNDLE_POLL_S
seconds, or at once by POST /admin/reload), the swapper builds a second Engine beside the
serving one: it loads and verifies the bundle (every file's sha256), starts its catalog
store, carries the items added at serving time (tokenized again by the new bundle's
cold-start path, under the same ids), warms it, and only then replaces the app's engine
reference: one assignment, so each request, which holds the engine it started with for
its whole life (`Engine.serving`), is answered by one version. The old engine then
finishes its requests, hands over what was added to it meanwhile, and closes.

Anything that fails before the switch (an unreadable or corrupted bundle, a text encoder
it was not trained with, items that cannot be carried) refuses the version: the old one
keeps serving, and the refusal is logged, counted (flexcode_bundle_refusals_total) and
shown by /readyz. A refused version is not tried again by the poll until LATEST changes;
POST /admin/reload tries again.

Retired items need no carrying: retirements are stored by item id, for every version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.bundle import BundleError, resolve_bundle_path
from service.engine import Engine
from service.metrics import Metrics
from service.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# How long the old version may take to finish the requests it holds before it is closed.
DRAIN_TIMEOUT_S = 60.0

Build = Callable[[Path], Awaitable[Engine]]


class BundleRefused(Exception):
    """A new bundle version that cannot serve; the message says why."""


@dataclass(frozen=True)
class SwapAttempt:
    """The outcome of the last attempt to serve another version (for /readyz)."""

    status: Literal["swapped", "refused"]
    version: str  # the version tried (a directory name when it could not be read)
    detail: str
    at: float


@dataclass(frozen=True)
class ReloadResult:
    status: Literal["swapped", "unchanged"]
    model_version: str  # the version serving now
    previous_version: str | None
    carried_items: int
    seconds: float


class BundleSwapper:
    """Owns the check-and-swap (one at a time) and the LATEST poll.

    current() returns the serving engine and switch(engine) makes another one serve:
    the app's lifespan passes both, so this module never reaches into the app."""

    def __init__(
        self,
        bundle_path: Path,
        build: Build,
        current: Callable[[], Engine],
        switch: Callable[[Engine], None],
        metrics: Metrics,
        poll_s: float,
    ) -> None:
        self.bundle_path = Path(bundle_path)
        self._build = build
        self._current = current
        self._switch = switch
        self.metrics = metrics
        self.poll_s = poll_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        # What the poll does not try again until LATEST changes: the bundle directory it
        # refused, or the error LATEST itself gave.
        self._refused: Path | str | None = None
        self.last: SwapAttempt | None = None

    # --- the poll ---
    def start(self) -> None:
        """Poll LATEST when the bundle path is a root (a bundle directory never changes)."""
        if self.poll_s > 0 and not (self.bundle_path / "manifest.json").is_file():
            self._task = asyncio.create_task(self._poll(), name="flexcode-bundle-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.reload(retry_refused=False)
            except BundleRefused:
                pass  # logged, counted and shown by /readyz already
            except Exception:  # keep polling: the next round may succeed
                logger.exception("checking for a new bundle version failed")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        async with self._lock:  # a swap in progress finishes (or fails) first
            pass

    # --- check and swap ---
    async def reload(self, retry_refused: bool = True) -> ReloadResult:
        """Serve the version LATEST names, if it is another one. BundleRefused when it
        cannot serve (the old version goes on serving)."""
        async with self._lock:
            started = time.perf_counter()
            serving = self._current()
            try:
                target = resolve_bundle_path(self.bundle_path).resolve()
            except BundleError as e:
                if str(e) == self._refused and not retry_refused:
                    return ReloadResult("unchanged", serving.version, None, 0, 0.0)
                self._refused = str(e)
                raise self._refuse(self.bundle_path.name, f"cannot find the bundle: {e}") from e
            if target == serving.bundle_path.resolve() or (
                target == self._refused and not retry_refused
            ):
                return ReloadResult("unchanged", serving.version, None, 0, 0.0)
            logger.info(
                "new bundle version %s found; loading it beside %s",
                target.name,
                serving.version,
            )
            new, carried = await self._prepare(target, serving)
            self._switch(new)
            seconds = time.perf_counter() - started
            self._refused = None
            self._note_switch(serving, new, seconds)
            carried += await self._retire_old(serving, new)
            return ReloadResult("swapped", new.version, serving.version, carried, seconds)

    async def _prepare(self, target: Path, serving: Engine) -> tuple[Engine, int]:
        """The new engine, started, holding the serving engine's added items and warm;
        BundleRefused (and nothing left running) when any step fails."""
        try:
            new = await self._build(target)
        except Exception as e:
            self._refused = target
            raise self._refuse(target.name, f"cannot load it: {e}") from e
        try:
            await new.start()
            carried = await self._carry(serving, new)
            await new.warm_up()
        except asyncio.CancelledError:  # shutting down mid-swap
            await new.close()
            raise
        except Exception as e:
            await new.close()
            self._refused = target
            raise self._refuse(new.version, f"cannot serve it: {e}") from e
        new.ready = True
        return new, carried

    async def _carry(self, old: Engine, new: Engine) -> int:
        carried, no_text = await new.carry(old.added_records())
        self.metrics.items_carried.inc(carried)
        if no_text:
            logger.warning(
                "%d added items cannot be carried to %s: they were stored before records "
                "kept their text (add them again): %s",
                len(no_text),
                new.version,
                ", ".join(no_text[:20]),
            )
        return carried

    async def _retire_old(self, old: Engine, new: Engine) -> int:
        """Let the old version finish its requests, carry what was added to it meanwhile
        (by those requests, or by replicas not switched yet), then close it."""
        if not await old.drained(DRAIN_TIMEOUT_S):
            logger.warning(
                "bundle %s still had requests after %.0f s; closing it anyway",
                old.version,
                DRAIN_TIMEOUT_S,
            )
        carried = 0
        try:
            carried = await self._carry(old, new)
        except Exception:
            logger.exception("carrying the last added items from %s failed", old.version)
        old.ready = False
        await old.close()
        return carried

    def _note_switch(self, old: Engine, new: Engine, seconds: float) -> None:
        state = new.status()
        self.metrics.bundle_swaps.inc()
        self.metrics.bundle_swap_duration.observe(seconds)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(
            version=state.version, device=state.device, backend=state.backend
        ).set(1)
        self.last = SwapAttempt("swapped", state.version, f"replaced {old.version}", time.time())
        logger.info(
            "now serving bundle %s (%d items) instead of %s; swap took %.1f s",
            state.version,
            state.catalog_items,
            old.version,
            seconds,
        )

    def _refuse(self, version: str, reason: str) -> BundleRefused:
        serving = self._current().version
        detail = f"bundle {version} refused, still serving {serving}: {reason}"
        logger.error("%s", detail)
        self.metrics.bundle_refusals.inc()
        self.last = SwapAttempt("refused", version, detail, time.time())
        return BundleRefused(detail)
