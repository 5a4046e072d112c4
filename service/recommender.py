"""The model state one bundle version serves, and the synchronous operations on it: the
bundle, the generator (torch or ONNX), the growing item table (the prefix index with its
overlay of added items), the id maps, the added items and the retirements.

Every method that reads or changes this state runs on ONE thread, the engine's inference
thread (service/engine.py), so a batch never sees half an update and an item added
before a /recommend is there for it. Nothing here is async, and nothing here talks to a
store: the engine hands stored records and retirements in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
import torch

from models.bundle import Bundle
from models.decoding import SPARSE_ALLOWED_MAX, ServingModel, recommend_top_k
from models.dense_index import DenseIndexConfig, build_dense_index
from models.item_attributes import ItemAttributes, RowFilter
from models.item_table import ItemTable
from service.catalog import ItemRecord, Retirement
from service.catalog.item_cache import bundle_entries
from service.filters import denylist_only

logger = logging.getLogger(__name__)

ORIGIN_BUNDLE, ORIGIN_ADDED = "bundle", "added"


@dataclass(frozen=True)
class RecQuery:
    """One resolved /recommend request: internal ids, most recent last."""

    history: np.ndarray  # (T,) int64, cut to the model's max_len
    exclude: np.ndarray  # (E,) int64 ids never to return
    k: int
    beam_width: int
    rule: RowFilter | None = None  # business-rule filters, None = none


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


def filter_form(rule: RowFilter | None) -> str:
    """How a request's filter reaches the decoder: "none"; "list", row lists (an
    allowlist of at most SPARSE_ALLOWED_MAX rows, whatever else the rule says, since it
    can only narrow the list); "mask", a (R,) row mask (categories, times, and denylists
    with them: rules that may allow most of the catalogue). A denylist alone never gets
    here as a rule: `recommend_batch` folds it into the exclusions first."""
    if rule is None:
        return "none"
    if rule.include_rows is not None and len(rule.include_rows) <= SPARSE_ALLOWED_MAX:
        return "list"
    return "mask"


def _denylist_as_exclusions(query: RecQuery) -> RecQuery:
    """A query whose only rule is a denylist, as the same query with those rows excluded
    and no rule (`denylist_only`); any other query as it is."""
    if query.rule is None or not denylist_only(query.rule):
        return query
    exclude = np.union1d(query.exclude, query.rule.exclude_rows).astype(np.int64)
    return replace(query, exclude=exclude, rule=None)


class Recommender:
    """Model state and the synchronous operations on it (all on the inference thread)."""

    def __init__(
        self,
        bundle: Bundle,
        generator: ServingModel,
        device: torch.device,
        backend: str,
        new_item_share: float | None = None,
        dense_index: DenseIndexConfig | None = None,
    ) -> None:
        """new_item_share: overrides the bundle's `DecodingConfig.new_item_share` when set.
        dense_index: how the dense candidates are found (default: `DenseIndexConfig()`,
        the approximate index from 200k items on a CPU); the index is built here, at
        load (seconds at 1M items, BENCHMARKS.md)."""
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
        self.dense_index_config = dense_index or DenseIndexConfig()
        index = None
        if self.dense_index_config.wanted(bundle.n_items, device):
            index = build_dense_index(bundle.item_vectors, self.dense_index_config)
            logger.info(
                "dense index: IVF-%s, %d lists, nprobe %d, over %d items, built in %.1f s",
                self.dense_index_config.codec.upper(),
                index.nlist,
                index.nprobe,
                bundle.n_items,
                index.build_s,
            )
        self.table = ItemTable(
            bundle.item_vectors,
            bundle.item_tokens,
            bundle.prefix_index,
            device,
            base_id_free=np.asarray(bundle.popularity) == 0,  # no training interaction: no id
            dense_index=index,
        )
        self.n_bundle = bundle.n_items
        # A plain dict: one hash lookup per id. (A pandas Index of 1M strings took 0.3-0.9 s
        # per get_indexer call under pandas 3, which made /recommend scale with the catalog.)
        external = np.asarray(bundle.external_ids).tolist()
        self.bundle_ids: dict[str, int] = {item_id: row for row, item_id in enumerate(external)}
        if len(self.bundle_ids) != len(external):
            raise ValueError("bundle external_ids are not unique")
        del self.bundle_ids[""]  # row 0 is padding, never an item
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
        # Per-row categories and added times for filters; grows with the item table.
        self.attributes = bundle_attributes(bundle)

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
        """(external id, item cache entry) of every bundle item, for the shared cache."""
        return bundle_entries(self.bundle.external_ids, self.bundle.item_tokens)

    def added_record(self, item_id: str) -> ItemRecord | None:
        state = self.added.get(item_id)
        return None if state is None else state.record

    def added_records(self) -> list[ItemRecord]:
        """The records of every added item held (what a store writes back to a Redis that
        lost them, and what a new bundle version carries)."""
        return [state.record for state in self.added.values()]

    def held_retirements(self) -> list[Retirement]:
        """The newest revision held of every retirement (written back to a Redis that
        lost them)."""
        return list(self.retirements.values())

    # --- recommendation ---
    def recommend_batch(self, queries: list[RecQuery]) -> list[RecResult]:
        """Groups by beam width (a request's result never depends on its batch mates'
        settings) and by the form its filter takes (unfiltered requests never pay for
        filters, short allowlists never for catalogue-sized masks: `filter_form`), and
        runs one user-state + decoding call per group."""
        queries = [_denylist_as_exclusions(q) for q in queries]
        results: list[RecResult | None] = [None] * len(queries)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.beam_width, filter_form(q.rule)), []).append(i)
        for (width, _), members in groups.items():
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
        catalogue = self.table.catalogue()
        allowed = None
        forms = {filter_form(q.rule) for q in queries}
        if forms == {"list"}:
            allowed = torch.as_tensor(self.allowed_lists(queries, catalogue.n_rows))
        elif forms != {"none"}:
            allowed = torch.as_tensor(self.allowed_rows(queries, catalogue.n_rows))
        rows, scores = recommend_top_k(
            self.generator,
            torch.as_tensor(items, device=self.device),
            catalogue,
            top_k=k,
            config=replace(self.decoding, beam_width=width),
            exclude=torch.as_tensor(exclude, device=self.device),
            allowed=None if allowed is None else allowed.to(self.device),
        )
        rows, scores = rows.cpu().numpy(), scores.float().cpu().numpy()
        out = []
        for b, q in enumerate(queries):
            keep = rows[b] > 0
            found, vals = rows[b][keep][: q.k], scores[b][keep][: q.k]
            out.append(RecResult([self.external_id(int(r)) for r in found], vals.tolist()))
        return out

    def allowed_rows(self, queries: list[RecQuery], n_rows: int) -> np.ndarray:
        """(B, R) bool, each query's filter as an allowed-row mask (all True without
        one); liveness and exclusions are left to the decoder."""
        allowed = np.ones((len(queries), n_rows), dtype=bool)
        for b, q in enumerate(queries):  # a loop over requests; each mask is vector ops
            if q.rule is not None:
                allowed[b] = self.attributes.allowed(q.rule)[:n_rows]
        return allowed

    def allowed_lists(self, queries: list[RecQuery], n_rows: int) -> np.ndarray:
        """(B, P) int64, each query's allowlist as the rows below n_rows it allows (-1
        padding); every query must have one (`filter_form` "list")."""
        lists = [self.attributes.allowed_list(q.rule) for q in queries]
        lists = [rows[rows < n_rows] for rows in lists]
        out = np.full((len(lists), max(1, max(map(len, lists)))), -1, dtype=np.int64)
        for b, rows in enumerate(lists):
            out[b, : len(rows)] = rows
        return out

    def popular_items(
        self, k: int, exclude: np.ndarray, rule: RowFilter | None = None
    ) -> RecResult:
        """The popularity ranking (training interaction counts), without the excluded and
        retired items; with a filter, of the rows it allows, added items (no count) after
        the bundle's, oldest first, so a filtered fallback also gets k items whenever k
        pass the filter."""
        skip = np.concatenate([np.asarray(exclude, dtype=np.int64), self.retired_rows])
        if rule is None:
            rows = self.popular[~np.isin(self.popular, skip)][:k]
        else:
            mask = self.attributes.allowed(rule) & self.table.live.cpu().numpy()
            mask[skip[(skip > 0) & (skip < len(mask))]] = False
            rows = np.flatnonzero(mask)
            counts = np.zeros(len(mask), dtype=np.int64)
            counts[: len(self.popularity)] = self.popularity
            rows = rows[np.argsort(-counts[rows], kind="stable")][:k]
        return RecResult(
            [self.external_id(int(r)) for r in rows],
            [float(self.popularity[r]) if r < len(self.popularity) else 0.0 for r in rows],
        )

    # --- added items ---
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
        self.attributes.add(rows, [r.categories for r in recs], [r.at for r in recs])
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


def bundle_attributes(bundle: Bundle) -> ItemAttributes:
    """The bundle rows' attributes: their categories (none for a bundle written before
    bundles had them) and, as added_at, the bundle's creation time from its manifest
    (bundle items have no time of their own: they exist since this version does)."""
    rows = bundle.n_items + 1
    if bundle.category_ptr is None:
        names, ptr, ids = np.zeros(0, str), np.zeros(rows + 1, np.int64), np.zeros(0, np.int64)
    else:
        names, ptr, ids = bundle.category_names, bundle.category_ptr, bundle.category_ids
    created = datetime.fromisoformat(bundle.manifest.created_at.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return ItemAttributes(names, ptr, ids, created.timestamp())
