"""Prometheus metrics, one explicit CollectorRegistry per app (names are a contract: the
grafana dashboard reads them). The request timing is service/middleware.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SWAP_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_duration = Histogram(
            "flexcode_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.beam_search_duration = Histogram(
            "flexcode_beam_search_duration_seconds",
            "Time of one batched decoding call: user state, dense head and (when the bundle's "
            "dense weight is below 1) constrained beam search",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "flexcode_batch_size",
            "Recommend requests per micro-batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "flexcode_cache_hits", "Item lookups answered from local state", registry=r
        )
        self.cache_misses = Counter(
            "flexcode_cache_misses", "Item lookups not in local state", registry=r
        )
        self.items_added = Counter(
            "flexcode_items_added", "Items added (or replaced) through POST /items", registry=r
        )
        self.catalog_items = Gauge(
            "flexcode_catalog_items", "Recommendable items (bundle + added)", registry=r
        )
        self.redis_up = Gauge(
            "flexcode_redis_up", "1 when the shared Redis is reachable, else 0", registry=r
        )
        self.catalog_resyncs = Counter(
            "flexcode_catalog_resyncs",
            "Full reloads of the added items (or of the retirements) from Redis because their "
            "replication stream was trimmed past what this replica had read (it fell too far "
            "behind)",
            registry=r,
        )
        self.items_retired = Counter(
            "flexcode_items_retired", "Items retired through DELETE /items/{id}", registry=r
        )
        self.items_restored = Counter(
            "flexcode_items_restored",
            "Retired items restored (POST /items/{id}/restore, or added again)",
            registry=r,
        )
        self.events_recorded = Counter(
            "flexcode_events_recorded", "User events stored through POST /events", registry=r
        )
        self.events_unknown_items = Counter(
            "flexcode_events_unknown_items",
            "User events naming an item the catalog does not have (stored all the same)",
            registry=r,
        )
        self.user_histories_deleted = Counter(
            "flexcode_user_histories_deleted",
            "Users forgotten through DELETE /users/{id}",
            registry=r,
        )
        self.bundle_swaps = Counter(
            "flexcode_bundle_swaps", "Switches to a new bundle version while serving", registry=r
        )
        self.bundle_refusals = Counter(
            "flexcode_bundle_refusals",
            "New bundle versions refused (unreadable, corrupted, or their items cannot be "
            "carried over); the old version kept serving",
            registry=r,
        )
        self.bundle_swap_duration = Histogram(
            "flexcode_bundle_swap_duration_seconds",
            "From noticing a new bundle version to serving it: load, verify, carry items, warm",
            buckets=_SWAP_BUCKETS,
            registry=r,
        )
        self.items_carried = Counter(
            "flexcode_items_carried",
            "Added items tokenized again for a new bundle version (this replica's share)",
            registry=r,
        )
        self.model_info = Gauge(
            "flexcode_model_info",
            "Always 1; labels describe the served model",
            ["version", "device", "backend"],
            registry=r,
        )
