"""The interface every catalog store implements, and the refusals they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence

from service.catalog.records import AddOutcome, ItemRecord, Retirement
from service.errors import DedupExhausted, ItemConflict

# Receives stored records to make servable; may return how many changed local state (the
# stores only log it).
RecordsCallback = Callable[[list[ItemRecord]], Awaitable[int | None]]
UpCallback = Callable[[bool], None]
# Called once per full reload forced by a replication gap (flexcode_catalog_resyncs_total).
ResyncCallback = Callable[[], None]
BundleItems = Callable[[], Iterator[tuple[str, str]]]
# Receives retirement changes (read back from the store, or just written here) to apply.
RetirementsCallback = Callable[[list[Retirement]], Awaitable[None]]


class CatalogStore(ABC):
    """Durable, shared (Redis) or node-local (SQLite) home of added items."""

    mode: str

    @property
    @abstractmethod
    def up(self) -> bool:
        """Whether writes can go through now."""

    @abstractmethod
    async def start(
        self,
        bundle_items: BundleItems,
        on_records: RecordsCallback,
        on_up: UpCallback | None = None,
        on_resync: ResyncCallback | None = None,
        on_retirements: RetirementsCallback | None = None,
    ) -> None:
        """Connect, load what is stored (passed to on_records and on_retirements before
        returning when the store is reachable) and keep following changes made elsewhere.

        bundle_items() yields (item id, compact JSON) of the bundle's items, for stores
        that cache them. on_resync: called when the store had to reload everything because
        its change feed lost entries this replica had not read yet."""

    @abstractmethod
    async def add(
        self, records: Sequence[ItemRecord], replace: bool, dedup_size: int
    ) -> list[AddOutcome]:
        """Assign dedup ids to new items, all or nothing. ItemConflict (an id with other
        content and no replace, or a bundle id), DedupExhausted, StoreUnavailable."""

    @abstractmethod
    async def get(self, item_id: str) -> ItemRecord | None:
        """The stored record of an added item, or None."""

    @abstractmethod
    async def retire(self, item_ids: Sequence[str], retired: bool) -> list[Retirement]:
        """Retire (retired=True) or restore the ids, shared by every bundle version; one
        Retirement per id (seq 0: restoring an id that was never retired). Passed to
        on_retirements before returning. StoreUnavailable."""

    @abstractmethod
    async def catch_up_retirements(self) -> None:
        """Return once every retirement stored before the call has reached on_retirements
        (a cheap check when nothing is new); does nothing while the store is unreachable."""

    @abstractmethod
    async def close(self) -> None: ...


def check_dedup(base: int, counter: int, dedup_size: int, key: str) -> None:
    if base + counter - 1 >= dedup_size:
        raise dedup_exhausted(key, dedup_size)


def dedup_exhausted(key: str, dedup_size: int, steps: int = 1) -> DedupExhausted:
    """The refusal when an item's own code prefix [key] and the code sequences after it in
    its placement order, `steps` in all (service/catalog/placement.py), are full."""
    where = f"code prefix [{key}]"
    if steps > 1:
        where += f" nor for the {steps - 1} code sequences nearest to it"
    return DedupExhausted(
        f"no dedup id left for {where}: dedup_size={dedup_size} ids are taken by items "
        "sharing each; the next bundle needs a larger dedup block",
        prefix=[int(t) for t in key.split(",")],
    )


def item_conflict(item_id: str, bundle: bool) -> ItemConflict:
    if bundle:
        return ItemConflict(
            f"item {item_id!r} belongs to the model bundle; bundle items cannot be added or "
            "replaced (add it under another id)",
            item_id=item_id,
        )
    return ItemConflict(
        f"item {item_id!r} already exists with different content; send 'replace': true to "
        "replace it",
        item_id=item_id,
    )
