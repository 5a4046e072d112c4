"""The recommender engine: item ids -> token histories -> batched beam search, and the
cold-start path that turns new items' text into token assignments.

Two layers:

* `Recommender` (synchronous) owns the model state: the bundle, the generator (torch or
  ONNX), the growing item table, the prefix index with its overlay of added items, and the
  id maps. Every method that reads or changes that state runs on ONE inference thread
  (`Engine.executor`), so a batch never sees half an update and an item added before a
  /recommend is there for it.
* `Engine` (asyncio) is what routes call: it resolves ids, micro-batches recommendations,
  asks the catalog store for atomic dedup ids, and applies stored records locally.

One Engine serves one bundle version. A swap (service/swap.py) builds a second Engine
beside it and replaces the app's reference; each request holds the Engine it started
with (`Engine.serving`), so it is answered by one version throughout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from models.bundle import Bundle
from models.cold_start import ColdStart, NewItemCodes
from models.decoding import ServingModel, recommend_top_k
from models.item_table import ItemTable
from models.prefix_index import PrefixIndex
from models.text_encoder import item_description
from service.batching import MicroBatcher
from service.catalog import STATUS_UNCHANGED, CatalogStore, ItemRecord, Retirement
from service.errors import ItemConflict, NotFound
from service.metrics import Metrics
from service.single_flight import SingleFlight

logger = logging.getLogger(__name__)

ORIGIN_BUNDLE, ORIGIN_ADDED = "bundle", "added"
FALLBACK_POPULARITY = "popularity"
# Longest a recommendation waits for the retirement check before going on without it.
RETIREMENT_CHECK_TIMEOUT_S = 1.0
# Items re-tokenized per step when carried to a new bundle version.
CARRY_CHUNK = 256


class TextEncoderLike(Protocol):
    """models.text_encoder.TextEncoder, or a stand-in with the same two members."""

    @property
    def model_id(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# --- requests and results ---------------------------------------------------------------


@dataclass(frozen=True)
class RecQuery:
    """One resolved /recommend request: internal ids, most recent last."""

    history: np.ndarray  # (T,) int64, cut to the model's max_len
    exclude: np.ndarray  # (E,) int64 ids never to return
    k: int
    beam_width: int


@dataclass(frozen=True)
class RecResult:
    item_ids: list[str]
    scores: list[float]


@dataclass(frozen=True)
class ItemView:
    item_id: str
    tokens: list[int]
    origin: str
    alpha: float
    n_cf: int
    added_at: float | None = None
    retired: bool = False


@dataclass
class AddedState:
    row: int  # internal id in the item table
    record: ItemRecord


@dataclass
class NewItemInput:
    item_id: str
    fields: dict[str, object] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.fields, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def text(self) -> str:
        fields = dict(self.fields)
        categories = fields.get("categories")
        if isinstance(categories, list | tuple):
            fields["categories"] = ", ".join(str(c) for c in categories)
        return item_description(fields)


# --- the synchronous model state ----------------------------------------------------------


def bundle_next_dedup(index: PrefixIndex, prefixes: np.ndarray, dedup_offset: int) -> np.ndarray:
    """(M, L) code prefixes -> (M,) first dedup id after the largest the bundle uses for
    each prefix (0 for a prefix no bundle item has). A walk down the CSR trie per row."""
    out = np.zeros(len(prefixes), dtype=np.int64)
    row_ptr, child_token, child_node = index.row_ptr, index.child_token, index.child_node
    for m, row in enumerate(np.asarray(prefixes, dtype=np.int64)):
        node = 0
        for tok in row:
            lo, hi = int(row_ptr[node]), int(row_ptr[node + 1])
            j = lo + int(np.searchsorted(child_token[lo:hi], tok))
            if j >= hi or child_token[j] != tok:
                node = -1
                break
            node = int(child_node[j])
        if node >= 0:
            lo, hi = int(row_ptr[node]), int(row_ptr[node + 1])
            if hi > lo:  # dedup tokens sorted ascending: the last is the largest
                out[m] = int(child_token[hi - 1]) - dedup_offset + 1
    return out


class Recommender:
    """Model state and the synchronous operations on it (all on the inference thread)."""

    def __init__(
        self,
        bundle: Bundle,
        generator: ServingModel,
        device: torch.device,
        backend: str,
        new_item_share: float | None = None,
    ) -> None:
        """new_item_share: overrides the bundle's `DecodingConfig.new_item_share` when set."""
        self.bundle = bundle
        self.generator = generator
        self.device = device
        self.backend = backend
        self.layout = bundle.layout
        self.budget = bundle.budget
        self.decoding = bundle.decoding  # what stage D measured; beam width per request
        if new_item_share is not None:
            self.decoding = replace(self.decoding, new_item_share=new_item_share)
        self.max_len = int(bundle.generator.config.max_len)
        self.table = ItemTable(
            bundle.item_vectors,
            bundle.item_tokens,
            bundle.prefix_index,
            device,
            base_id_free=np.asarray(bundle.popularity) == 0,  # no training interaction: no id
        )
        self.cold_start = ColdStart.from_bundle(bundle)
        self.n_bundle = bundle.n_items
        # A plain dict: one hash lookup per id. (A pandas Index of 1M strings took 0.3-0.9 s
        # per get_indexer call under pandas 3, which made /recommend scale with the catalog.)
        external = np.asarray(bundle.external_ids).tolist()
        self.bundle_ids: dict[str, int] = {item_id: row for row, item_id in enumerate(external)}
        if len(self.bundle_ids) != len(external):
            raise ValueError("bundle external_ids are not unique")
        del self.bundle_ids[""]  # row 0 is padding, never an item
        self.base_index = bundle.prefix_index
        self.added: dict[str, AddedState] = {}
        self.row_to_added: dict[int, str] = {}  # internal row -> external id (added items)
        pop = np.asarray(bundle.popularity, dtype=np.int64).copy()
        pop[0] = -1
        self.popular = np.argsort(-pop, kind="stable")[: max(1, min(len(pop) - 1, 10_000))]
        self.popularity = pop
        # Retirements by external id (the newest revision seen of each: retired or
        # restored), kept for ids not in the catalog yet too (an added item whose record
        # has not arrived), and the rows they withdraw: never returned, read in histories.
        self.retirements: dict[str, Retirement] = {}
        self.retired_rows = np.zeros(0, dtype=np.int64)

    # --- ids ---
    @property
    def n_items(self) -> int:
        return self.n_bundle + len(self.added)

    def resolve(self, item_ids: Sequence[str]) -> np.ndarray:
        """(M,) internal ids, -1 for ids unknown to the catalog (bundle or added)."""
        if not item_ids:
            return np.zeros(0, dtype=np.int64)
        rows = np.array([self.bundle_ids.get(item_id, -1) for item_id in item_ids], dtype=np.int64)
        for i in np.flatnonzero(rows < 0):
            state = self.added.get(item_ids[i])
            if state is not None:
                rows[i] = state.row
        return rows

    def external_id(self, row: int) -> str:
        if row <= self.n_bundle:
            return str(self.bundle.external_ids[row])
        return self.row_to_added[row]

    def is_retired(self, item_id: str) -> bool:
        held = self.retirements.get(item_id)
        return held is not None and held.retired

    def view(self, item_id: str) -> ItemView | None:
        retired = self.is_retired(item_id)
        state = self.added.get(item_id)
        if state is not None:
            rec = state.record
            tokens = [*rec.prefix, int(self.layout.dedup_offset + rec.dedup)]
            return ItemView(
                item_id, tokens, ORIGIN_ADDED, rec.alpha, rec.n_cf, rec.at, retired=retired
            )
        rows = self.resolve([item_id])
        if rows[0] < 1:
            return None
        row = int(rows[0])
        return ItemView(
            item_id,
            [int(t) for t in self.bundle.item_tokens[row]],
            ORIGIN_BUNDLE,
            float(self.bundle.alpha[row]),
            int(self.bundle.n_cf[row]),
            retired=retired,
        )

    def bundle_cache_entries(self) -> Iterator[tuple[str, str]]:
        """(external id, compact JSON) of every bundle item, for the shared cache."""
        tokens = self.bundle.item_tokens
        for row in range(1, self.n_bundle + 1):
            toks = ",".join(str(int(t)) for t in tokens[row])
            yield str(self.bundle.external_ids[row]), f'{{"o":"b","t":[{toks}]}}'

    # --- recommendation ---
    def recommend_batch(self, queries: list[RecQuery]) -> list[RecResult]:
        """Groups by beam width (a request's result never depends on its batch mates'
        settings) and runs one user-state + decoding call per group."""
        results: list[RecResult | None] = [None] * len(queries)
        groups: dict[int, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.beam_width, []).append(i)
        for width, members in groups.items():
            found = self._search([queries[i] for i in members], width)
            for i, res in zip(members, found, strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def _search(self, queries: list[RecQuery], width: int) -> list[RecResult]:
        batch = len(queries)
        length = max(1, max(len(q.history) for q in queries))
        items = np.zeros((batch, length), dtype=np.int64)  # left-padded
        for b, q in enumerate(queries):
            if len(q.history):
                items[b, length - len(q.history) :] = q.history
        n_ex = max(1, max(len(q.exclude) for q in queries))
        exclude = np.full((batch, n_ex), -1, dtype=np.int64)
        for b, q in enumerate(queries):
            exclude[b, : len(q.exclude)] = q.exclude
        k = max(q.k for q in queries)
        rows, scores = recommend_top_k(
            self.generator,
            torch.as_tensor(items, device=self.device),
            self.table.catalogue(),
            top_k=k,
            config=replace(self.decoding, beam_width=width),
            exclude=torch.as_tensor(exclude, device=self.device),
        )
        rows, scores = rows.cpu().numpy(), scores.float().cpu().numpy()
        out = []
        for b, q in enumerate(queries):
            keep = rows[b] > 0
            found, vals = rows[b][keep][: q.k], scores[b][keep][: q.k]
            out.append(RecResult([self.external_id(int(r)) for r in found], vals.tolist()))
        return out

    def popular_items(self, k: int, exclude: np.ndarray) -> RecResult:
        skip = np.concatenate([np.asarray(exclude, dtype=np.int64), self.retired_rows])
        rows = self.popular[~np.isin(self.popular, skip)][:k]
        return RecResult(
            [self.external_id(int(r)) for r in rows],
            [float(self.popularity[r]) for r in rows],
        )

    # --- cold start ---
    def tokenize(self, embeddings: np.ndarray) -> tuple[np.ndarray, NewItemCodes]:
        codes = self.cold_start.tokenize(embeddings)
        base = bundle_next_dedup(self.base_index, codes.prefixes, self.layout.dedup_offset)
        return base, codes

    def apply(self, records: Sequence[ItemRecord]) -> int:
        """Make stored records recommendable; idempotent (older or equal revisions of
        what is held are skipped). Returns how many changed the state."""
        fresh: dict[str, ItemRecord] = {}
        for rec in records:
            held = self.added.get(rec.id)
            best = fresh.get(rec.id)
            if (held is None or rec.seq > held.record.seq) and (best is None or rec.seq > best.seq):
                fresh[rec.id] = rec
        if not fresh:
            return 0
        recs = list(fresh.values())
        if any(r.id in self.bundle_ids for r in recs):
            logger.error("ignoring stored records that reuse bundle ids")
            recs = [r for r in recs if r.id not in self.bundle_ids]
        if not recs:
            return 0
        hidden = self.table.vectors.shape[1]
        if any(len(r.vector) != hidden for r in recs):
            raise ValueError(f"stored item vectors must have {hidden} values (this bundle's)")
        retire = np.array([self.added[r.id].row for r in recs if r.id in self.added], np.int64)
        token_rows = np.array(
            [[*r.prefix, self.layout.dedup_offset + r.dedup] for r in recs], dtype=np.int64
        )
        vectors = np.array([r.vector for r in recs], dtype=np.float32)
        rows = self.table.add(vectors, token_rows, retire)  # raises before changing anything
        new_added = dict(self.added)
        for rec, row in zip(recs, rows, strict=True):
            new_added[rec.id] = AddedState(int(row), rec)
            self.row_to_added[int(row)] = rec.id
        self.added = new_added
        if any(r.id in self.retirements for r in recs):  # a retired item's new row
            self._withdraw_retired([r.id for r in recs])
        return len(recs)

    # --- retiring ---
    def apply_retirements(self, changes: Sequence[Retirement]) -> int:
        """Retire or restore items; idempotent (revisions not newer than the one held are
        skipped). Returns how many changed the state."""
        fresh: dict[str, Retirement] = {}
        for change in changes:
            held = fresh.get(change.id) or self.retirements.get(change.id)
            if held is None or change.seq > held.seq:
                fresh[change.id] = change
        if not fresh:
            return 0
        self.retirements.update(fresh)
        self._withdraw_retired(list(fresh))
        return len(fresh)

    def _withdraw_retired(self, item_ids: list[str]) -> None:
        """Bring the item table's withdrawn rows in line with `retirements` for these ids."""
        rows = self.resolve(item_ids)
        flags = np.array([self.is_retired(i) for i in item_ids], dtype=bool)
        known = rows > 0
        self.table.set_withdrawn(rows[known & flags], True)
        self.table.set_withdrawn(rows[known & ~flags], False)
        retired = [i for i, r in self.retirements.items() if r.retired]
        held = self.resolve(retired)
        self.retired_rows = np.unique(held[held > 0])


# --- the asynchronous façade ---------------------------------------------------------------


class Engine:
    """What the routes call. Owns the inference thread, the micro-batcher and the store."""

    def __init__(
        self,
        recommender: Recommender,
        store: CatalogStore,
        text_encoder: TextEncoderLike,
        metrics: Metrics,
        batch_max_size: int,
        batch_max_wait_s: float,
        default_beam_width: int,
        max_beam_width: int,
    ) -> None:
        self.rec = recommender
        self.store = store
        self.text_encoder = text_encoder
        self.metrics = metrics
        self.default_beam_width = default_beam_width
        self.max_beam_width = max_beam_width
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexcode-infer")
        # Text encoding is read-only on the bundle: its own thread, so /items does not hold
        # up recommendation batches while MiniLM runs.
        self.encode_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flexcode-encode"
        )
        self.batcher: MicroBatcher[RecQuery, RecResult] = MicroBatcher(
            recommender.recommend_batch,
            self.executor,
            batch_max_size,
            batch_max_wait_s,
            on_batch=self._on_batch,
        )
        self.ready = False
        # Before each recommendation, the retirements stored anywhere before it arrived are
        # applied here (one check shared by the requests waiting at the same time).
        self._catch_up = SingleFlight(store.catch_up_retirements)
        self._in_flight = 0  # requests holding this engine (`serving`)
        self._idle = asyncio.Event()
        self._idle.set()

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.beam_search_duration.observe(seconds)

    async def _on_thread(self, fn: Callable, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # --- lifecycle ---
    async def start(self) -> None:
        await self.store.start(
            self.rec.bundle_cache_entries,
            self.apply_records,
            self._on_up,
            self._on_resync,
            on_retirements=self.apply_retirements,
        )
        self.batcher.start()
        self.metrics.catalog_items.set(self.rec.n_items)

    def _on_up(self, up: bool) -> None:
        self.metrics.redis_up.set(1 if up else 0)

    def _on_resync(self) -> None:
        self.metrics.catalog_resyncs.inc()

    async def warm_up(self) -> None:
        started = time.perf_counter()
        history = self.rec.popular[:3].astype(np.int64)
        query = RecQuery(history, history, k=1, beam_width=self.default_beam_width)
        await self.batcher.submit(query)
        await asyncio.get_running_loop().run_in_executor(
            self.encode_executor, self.text_encoder.encode, ["warm-up item"]
        )
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
        await self.batcher.stop()
        await self.store.close()
        self.executor.shutdown(wait=True)
        self.encode_executor.shutdown(wait=True)

    async def apply_records(self, records: list[ItemRecord]) -> int:
        """Make stored records servable here; returns how many changed local state (the
        rest were held already, at the same or a newer revision)."""
        try:
            changed = await self._on_thread(self.rec.apply, records)
        except ValueError:
            # One bad record (e.g. a token row another item holds) must not block the
            # rest, nor make the store's catch-up fail forever: apply one by one.
            changed = 0
            for record in records:
                try:
                    changed += await self._on_thread(self.rec.apply, [record])
                except ValueError as e:
                    logger.error("cannot serve stored item %r: %s", record.id, e)
        if changed:
            self.metrics.catalog_items.set(self.rec.n_items)
            logger.debug("applied %d item records", changed)
        return changed

    async def apply_retirements(self, changes: list[Retirement]) -> None:
        """Retire or restore items here (stored retirements, from any replica)."""
        changed = await self._on_thread(self.rec.apply_retirements, changes)
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
        self.metrics.cache_hits.inc(hits)
        self.metrics.cache_misses.inc(len(rows) - hits)

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
        self, history: list[str], k: int, exclude_history: bool, beam_width: int | None
    ) -> tuple[RecResult, list[str], str | None]:
        """(result, unknown history ids, fallback name or None). beam_width: None = the
        width `auto_beam_width` picks. Any width returns k items when the catalog has k
        eligible ones: the dense head's candidates hold k of them whatever the beam finds."""
        await self._catch_up_retirements()
        rows = self.rec.resolve(history)
        self._count_lookups(rows)
        unknown = [h for h, r in zip(history, rows, strict=True) if r < 1]
        known = rows[rows > 0]
        exclude = np.unique(known) if exclude_history else np.zeros(0, dtype=np.int64)
        if len(known) == 0:
            return self.rec.popular_items(k, exclude), unknown, FALLBACK_POPULARITY
        width = beam_width if beam_width is not None else self.auto_beam_width(k, len(exclude))
        query = RecQuery(known[-self.rec.max_len :], exclude, k, width)
        return await self.batcher.submit(query), unknown, None

    async def get_item(self, item_id: str) -> ItemView:
        view = self.rec.view(item_id)
        if view is None:
            self.metrics.cache_misses.inc()
            record = await self.store.get(item_id)  # another replica's, not yet streamed
            if record is not None:
                await self.apply_records([record])
                view = self.rec.view(item_id)
        else:
            self.metrics.cache_hits.inc()
        if view is None:
            raise NotFound(f"item {item_id!r} is neither in the bundle nor added")
        return view

    # --- cold start ---
    async def add_items(
        self, items: list[NewItemInput], replace: bool
    ) -> list[tuple[str, ItemView]]:
        """(status, view) per item, in order: added | replaced | unchanged."""
        rows = self.rec.resolve([it.item_id for it in items])
        in_bundle = (rows >= 1) & (rows <= self.rec.n_bundle)
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
            held = self.rec.added.get(it.item_id)
            if held is None or held.record.hash != it.content_hash:
                todo.append(it)
        now = round(time.time(), 3)
        records = await self._tokenized(
            [(it.item_id, it.content_hash, it.text, now) for it in todo]
        )
        outcomes = {}
        if records:
            stored = await self.store.add(records, replace, self.rec.layout.dedup_size)
            # Unchanged ones too: another replica may have stored them a moment ago.
            await self.apply_records([o.record for o in stored])
            for o in stored:
                outcomes[o.record.id] = o.status
            self.metrics.items_added.inc(sum(o.status != STATUS_UNCHANGED for o in stored))
        # Re-adding a retired item restores it (after a look at what other replicas retired).
        await self._catch_up_retirements()
        retired = [it.item_id for it in items if self.rec.is_retired(it.item_id)]
        if retired:
            await self.store.retire(retired, False)
            self.metrics.items_restored.inc(len(retired))
        out = []
        for it in items:
            view = self.rec.view(it.item_id)
            if view is None:  # cannot happen unless a record was refused locally
                raise RuntimeError(f"item {it.item_id!r} was stored but is not in the catalog")
            out.append((outcomes.get(it.item_id, STATUS_UNCHANGED), view))
        return out

    async def _tokenized(self, items: Sequence[tuple[str, str, str, float]]) -> list[ItemRecord]:
        """(id, content hash, text, time) per item -> records holding this bundle's
        cold-start tokens and item vectors; the store assigns their dedup ids."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        texts = [text for _id, _hash, text, _at in items]
        embeddings = await loop.run_in_executor(
            self.encode_executor, self.text_encoder.encode, texts
        )
        base, codes = await loop.run_in_executor(
            self.encode_executor, self.rec.tokenize, embeddings
        )
        return [
            ItemRecord(
                id=item_id,
                hash=content_hash,
                prefix=tuple(int(t) for t in codes.prefixes[i]),
                base=int(base[i]),
                cf=tuple(int(c) for c in codes.cf_codes[i]),
                sem=tuple(int(c) for c in codes.sem_codes[i]),
                alpha=round(float(codes.alpha[i]), 6),
                n_cf=int(codes.n_cf[i]),
                vector=tuple(float(v) for v in codes.vectors[i]),
                at=at,
                text=text,
                order=tuple(map(tuple, codes.placement_order[i].tolist())),
            )
            for i, (item_id, content_hash, text, at) in enumerate(items)
        ]

    # --- retiring ---
    async def retire(self, item_id: str, retired: bool) -> ItemView:
        """Retire (retired=True) or restore a bundle or added item, for every replica and
        every bundle version. NotFound for an id the catalog does not have."""
        await self.get_item(item_id)
        held = self.rec.retirements.get(item_id)
        (change,) = await self.store.retire([item_id], retired)
        if change.seq > (held.seq if held else 0):  # a change, not a repeat
            (self.metrics.items_retired if retired else self.metrics.items_restored).inc()
        view = self.rec.view(item_id)
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
            held = self.rec.added.get(rec.id)
            if rec.id in self.rec.bundle_ids or (
                held is not None and (held.record.hash == rec.hash or held.record.at >= rec.at)
            ):
                continue
            (todo if rec.text else no_text).append(rec)
        carried = 0
        for start in range(0, len(todo), CARRY_CHUNK):
            chunk = todo[start : start + CARRY_CHUNK]
            fresh = await self._tokenized([(r.id, r.hash, r.text, r.at) for r in chunk])
            stored = await self.store.add(fresh, True, self.rec.layout.dedup_size)
            await self.apply_records([o.record for o in stored])
            carried += len(stored)
        return carried, [r.id for r in no_text]
