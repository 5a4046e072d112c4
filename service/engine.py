"""The engine: what routes, the health check, the swapper and the lifespan call to serve
one bundle version. It resolves ids, micro-batches recommendations onto the inference
thread, has new items tokenized (service/new_items.py) and placed by the catalog store,
and applies what the store holds (from this replica or any other) to the model state.

The model state itself is `Recommender` (service/recommender.py), synchronous and touched
only on the ONE inference thread this engine owns. Nothing outside this module reaches
it: the engine's public surface is its lifecycle (start, warm_up, serving, drained,
close, `ready`), what describes it (version, bundle_path, status()), and the
operations the routes need (recommend, unknown_items, get_item, add_items, retire,
added_records, carry).

One Engine serves one bundle version. A swap (service/swap.py) builds a second Engine
beside it and replaces the app's reference; each request holds the Engine it started
with (`Engine.serving`), so it is answered by one version throughout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.batching import MicroBatcher
from service.catalog import STATUS_UNCHANGED, CatalogStore, ItemRecord, Retirement
from service.errors import ItemConflict, NotFound
from service.filters import RequestFilters, resolve_filters
from service.index_merge import OverlayMerger
from service.metrics import Metrics
from service.new_items import ItemText, ItemTokenizer, NewItemInput
from service.recommender import ItemView, Recommender, RecQuery, RecResult
from service.single_flight import SingleFlight

logger = logging.getLogger(__name__)

FALLBACK_POPULARITY = "popularity"
# Longest a recommendation waits for the retirement check before going on without it.
RETIREMENT_CHECK_TIMEOUT_S = 1.0
# Items re-tokenized per step when carried to a new bundle version.
CARRY_CHUNK = 256


@dataclass(frozen=True)
class EngineStatus:
    """What /readyz, the logs and the model_info metric say about a serving engine."""

    version: str
    device: str
    backend: str
    catalog_items: int  # bundle + added
    added_items: int
    retired_items: int
    store_mode: str
    store_up: bool


@dataclass(frozen=True)
class ItemDetails(ItemView):
    """An item as the item routes show it: the model state's view plus its categories
    (what `filter.categories` matches it on)."""

    categories: list[str] = field(default_factory=list)


class Engine:
    """What the routes call. Owns the inference thread, the micro-batcher and the store."""

    def __init__(
        self,
        recommender: Recommender,
        store: CatalogStore,
        tokenizer: ItemTokenizer,
        metrics: Metrics,
        batch_max_size: int,
        batch_max_wait_s: float,
        default_beam_width: int,
        max_beam_width: int,
        batch_fn: Callable[[list[RecQuery]], Sequence[RecResult]] | None = None,
    ) -> None:
        self._rec = recommender
        self._store = store
        self._tokenizer = tokenizer
        self._metrics = metrics
        self.default_beam_width = default_beam_width
        self.max_beam_width = max_beam_width
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexcode-infer")
        self._batcher: MicroBatcher[RecQuery, RecResult] = MicroBatcher(
            batch_fn or recommender.recommend_batch,
            self._executor,
            batch_max_size,
            batch_max_wait_s,
            on_batch=self._on_batch,
        )
        # Set by whoever starts the engine (the lifespan, a swap) once it is warm; read
        # by the request dependency and /readyz.
        self.ready = False
        # Before each recommendation, the retirements stored anywhere before it arrived are
        # applied here (one check shared by the requests waiting at the same time).
        self._catch_up = SingleFlight(store.catch_up_retirements)
        self._in_flight = 0  # requests holding this engine (`serving`)
        self._idle = asyncio.Event()
        self._idle.set()
        self._merger = OverlayMerger(recommender.table, self._on_thread)

    # --- what it serves ---
    @property
    def version(self) -> str:
        return self._rec.bundle.version

    @property
    def bundle_path(self) -> Path:
        return Path(self._rec.bundle.path)

    def status(self) -> EngineStatus:
        rec = self._rec
        return EngineStatus(
            version=rec.bundle.version,
            device=str(rec.device),
            backend=rec.backend,
            catalog_items=rec.n_items,
            added_items=len(rec.added),
            retired_items=len(rec.retired_rows),
            store_mode=self._store.mode,
            store_up=self._store.up,
        )

    def added_records(self) -> list[ItemRecord]:
        """The records of the items added to this version (what a new version carries)."""
        return self._rec.added_records()

    def _on_batch(self, size: int, seconds: float) -> None:
        self._metrics.batch_size.observe(size)
        self._metrics.beam_search_duration.observe(seconds)

    async def _on_thread(self, fn: Callable, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- lifecycle ---
    async def start(self) -> None:
        await self._store.start(
            self._rec.bundle_cache_entries,
            self._apply_records,
            self._on_up,
            self._on_resync,
            on_retirements=self._apply_retirements,
        )
        self._batcher.start()
        self._metrics.catalog_items.set(self._rec.n_items)

    def _on_up(self, up: bool) -> None:
        self._metrics.redis_up.set(1 if up else 0)

    def _on_resync(self) -> None:
        self._metrics.catalog_resyncs.inc()

    async def warm_up(self) -> None:
        started = time.perf_counter()
        history = self._rec.popular[:3].astype(np.int64)
        query = RecQuery(history, history, k=1, beam_width=self.default_beam_width)
        await self._batcher.submit(query)
        await self._tokenizer.warm_up()
        logger.info("warm-up done in %.2f s", time.perf_counter() - started)

    @contextmanager
    def serving(self) -> Iterator[Engine]:
        """Held by a request for as long as it uses this engine: a swap closes the old
        engine only once no request holds it any more."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request holds this engine; False when timeout_s passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self._merger.close()
        await self._batcher.stop()
        await self._store.close()
        self._executor.shutdown(wait=True)
        self._tokenizer.close()

    async def _apply_records(self, records: list[ItemRecord]) -> int:
        """Make stored records servable here; returns how many changed local state (the
        rest were held already, at the same or a newer revision)."""
        try:
            changed = await self._on_thread(self._rec.apply, records)
        except ValueError:
            # One bad record (e.g. a token row another item holds) must not block the
            # rest, nor make the store's catch-up fail forever: apply one by one.
            changed = 0
            for record in records:
                try:
                    changed += await self._on_thread(self._rec.apply, [record])
                except ValueError as e:
                    logger.error("cannot serve stored item %r: %s", record.id, e)
        if changed:
            self._metrics.catalog_items.set(self._rec.n_items)
            logger.debug("applied %d item records", changed)
            self._merger.schedule()
        return changed

    async def merged(self) -> None:
        """Wait for the background merge of added items, if one is under way."""
        await self._merger.merged()

    async def _apply_retirements(self, changes: list[Retirement]) -> None:
        """Retire or restore items here (stored retirements, from any replica)."""
        changed = await self._on_thread(self._rec.apply_retirements, changes)
        if changed:
            logger.debug("applied %d retirement changes", changed)

    async def _catch_up_retirements(self) -> None:
        """Retirements stored before this call, by any replica, applied before it returns:
        a DELETE holds from the very next request everywhere, not once the stream brings
        it. On a store error or a slow store, go on with what is held (recommendations
        work while Redis is down)."""
        try:
            await asyncio.wait_for(self._catch_up(), RETIREMENT_CHECK_TIMEOUT_S)
        except Exception as e:  # a timeout or a store error: serve anyway
            logger.debug("retirement check skipped: %r", e)

    # --- lookups ---
    def _count_lookups(self, rows: np.ndarray) -> None:
        hits = int((rows > 0).sum())
        self._metrics.cache_hits.inc(hits)
        self._metrics.cache_misses.inc(len(rows) - hits)

    def auto_beam_width(self, k: int, n_excluded: int) -> int:
        """The beam width of a request that gives none: the default (the width the bundle
        was validated with) while k fits in it; for a larger k, k plus one beam per
        excluded item, up to max_beam_width (never below k). The beam drops excluded
        items only at its last step (models.beam_search), so a beam of exactly k proposes
        fewer than k eligible items whenever history items are among the k it keeps."""
        if k <= self.default_beam_width:
            return self.default_beam_width
        return max(k, min(k + n_excluded, self.max_beam_width))

    async def recommend(
        self,
        history: list[str],
        k: int,
        exclude_history: bool,
        beam_width: int | None,
        filters: RequestFilters | None = None,
    ) -> tuple[RecResult, list[str], str | None, list[str]]:
        """(result, unknown history ids, fallback name or None, include_items ids the
        catalog does not have). beam_width: None = the width `auto_beam_width` picks. Any
        width returns k items when the catalog has k eligible ones: the dense head's
        candidates hold k of them whatever the beam finds. filters: business rules,
        applied inside decoding (and to the popularity fallback), so a filtered request
        still gets k items whenever k eligible ones pass them."""
        await self._catch_up_retirements()
        rows = self._rec.resolve(history)
        self._count_lookups(rows)
        unknown = [h for h, r in zip(history, rows, strict=True) if r < 1]
        known = rows[rows > 0]
        exclude = np.unique(known) if exclude_history else np.zeros(0, dtype=np.int64)
        rule, unknown_include = None, []
        if filters is not None and filters.active:
            rule, unknown_include = resolve_filters(filters, self._rec.resolve)
        if len(known) == 0:
            if rule is None:
                popular = self._rec.popular_items(k, exclude)
            else:  # on the inference thread: it reads the item attributes adds change
                popular = await self._on_thread(self._rec.popular_items, k, exclude, rule)
            return popular, unknown, FALLBACK_POPULARITY, unknown_include  # type: ignore[return-value]
        width = beam_width if beam_width is not None else self.auto_beam_width(k, len(exclude))
        query = RecQuery(known[-self._rec.max_len :], exclude, k, width, rule)
        return await self._batcher.submit(query), unknown, None, unknown_include

    def unknown_items(self, item_ids: Sequence[str]) -> list[str]:
        """The ids the catalog (bundle or added) does not have, in order."""
        rows = self._rec.resolve(list(item_ids))
        return [i for i, row in zip(item_ids, rows, strict=True) if row < 1]

    def _view(self, item_id: str) -> ItemDetails | None:
        view = self._rec.view(item_id)
        if view is None:
            return None
        row = int(self._rec.resolve([item_id])[0])
        categories = self._rec.attributes.categories_of(row)
        return ItemDetails(**asdict(view), categories=categories)

    async def get_item(self, item_id: str) -> ItemDetails:
        view = self._view(item_id)
        if view is None:
            self._metrics.cache_misses.inc()
            record = await self._store.get(item_id)  # another replica's, not yet streamed
            if record is not None:
                await self._apply_records([record])
                view = self._view(item_id)
        else:
            self._metrics.cache_hits.inc()
        if view is None:
            raise NotFound(f"item {item_id!r} is neither in the bundle nor added")
        return view

    # --- cold start ---
    async def add_items(
        self, items: list[NewItemInput], replace: bool
    ) -> list[tuple[str, ItemDetails]]:
        """(status, view) per item, in order: added | replaced | unchanged."""
        rows = self._rec.resolve([it.item_id for it in items])
        in_bundle = (rows >= 1) & (rows <= self._rec.n_bundle)
        bundle_hits = [it.item_id for it, hit in zip(items, in_bundle, strict=True) if hit]
        if bundle_hits:
            raise ItemConflict(
                f"item {bundle_hits[0]!r} belongs to the model bundle; bundle items cannot be "
                "added or replaced (add it under another id)",
                item_ids=bundle_hits,
            )
        # Known here with the same content: no need to encode again.
        todo = []
        for it in items:
            held = self._rec.added_record(it.item_id)
            if held is None or held.hash != it.content_hash:
                todo.append(it)
        now = round(time.time(), 3)
        records = await self._tokenizer.records(
            [ItemText(it.item_id, it.content_hash, it.text, now, it.categories) for it in todo]
        )
        outcomes = {}
        if records:
            stored = await self._store.add(records, replace, self._rec.layout.dedup_size)
            # Unchanged ones too: another replica may have stored them a moment ago.
            await self._apply_records([o.record for o in stored])
            for o in stored:
                outcomes[o.record.id] = o.status
            self._metrics.items_added.inc(sum(o.status != STATUS_UNCHANGED for o in stored))
        # Re-adding a retired item restores it (after a look at what other replicas retired).
        await self._catch_up_retirements()
        retired = [it.item_id for it in items if self._rec.is_retired(it.item_id)]
        if retired:
            await self._store.retire(retired, False)
            self._metrics.items_restored.inc(len(retired))
        out = []
        for it in items:
            view = self._view(it.item_id)
            if view is None:  # cannot happen unless a record was refused locally
                raise RuntimeError(f"item {it.item_id!r} was stored but is not in the catalog")
            out.append((outcomes.get(it.item_id, STATUS_UNCHANGED), view))
        return out

    # --- retiring ---
    async def retire(self, item_id: str, retired: bool) -> ItemDetails:
        """Retire (retired=True) or restore a bundle or added item, for every replica and
        every bundle version. NotFound for an id the catalog does not have."""
        await self.get_item(item_id)
        held = self._rec.retirements.get(item_id)
        (change,) = await self._store.retire([item_id], retired)
        if change.seq > (held.seq if held else 0):  # a change, not a repeat
            (self._metrics.items_retired if retired else self._metrics.items_restored).inc()
        view = self._view(item_id)
        assert view is not None
        return view

    # --- a new bundle version ---
    async def carry(self, records: Sequence[ItemRecord]) -> tuple[int, list[str]]:
        """Items added while another bundle version served, made servable by this one: the
        same ids, contents and times, tokenized by THIS bundle's cold-start path (its
        codebooks differ) and stored in this version's catalog. Idempotent, so replicas
        swapping at the same time may all carry the same items. Left alone: ids this
        bundle has itself (it was trained on them), and ids it holds already with the same
        content or content at least as new. Returns (how many were carried, the ids that
        could not be: stored before records kept their text)."""
        todo, no_text = [], []
        for rec in records:
            held = self._rec.added_record(rec.id)
            if rec.id in self._rec.bundle_ids or (
                held is not None and (held.hash == rec.hash or held.at >= rec.at)
            ):
                continue
            (todo if rec.text else no_text).append(rec)
        carried = 0
        for start in range(0, len(todo), CARRY_CHUNK):
            chunk = todo[start : start + CARRY_CHUNK]
            fresh = await self._tokenizer.records(
                [ItemText(r.id, r.hash, r.text, r.at, r.categories) for r in chunk]
            )
            stored = await self._store.add(fresh, True, self._rec.layout.dedup_size)
            await self._apply_records([o.record for o in stored])
            carried += len(stored)
        return carried, [r.id for r in no_text]
