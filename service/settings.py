"""Service configuration, read from the environment (prefix FLEXCODE_) by pydantic-settings.

Nothing is read at import time: `Settings()` is built by the app factory (or passed in by
a test), so every app instance has its own configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Keys that are obviously not secrets; production refuses them.
_PLACEHOLDER_KEYS = {"changeme", "change-me", "secret", "password", "test", "dev", "key"}


class Settings(BaseSettings):
    """Every knob of the service; the deploy files set exactly these names."""

    model_config = SettingsConfigDict(env_prefix="FLEXCODE_", extra="ignore")

    # Bundle directory, or a bundle root holding a LATEST file that names the current one.
    bundle_path: Path = Path("bundles")
    # auto = CUDA when available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch or onnx (onnxruntime: CUDA EP on GPU, CPU EP otherwise). Default: the faster
    # one on the benchmark machine (scripts/bench_service.py, reports/bench_service.json).
    backend: Literal["torch", "onnx"] = "torch"
    # Empty = embedded mode: in-process cache + SQLite journal (one node).
    redis_url: str = ""
    redis_prefix: str = "flexcode"
    journal_path: Path = Path("data/journal.sqlite3")
    # Bearer keys accepted by write routes; empty = no auth (development only).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    environment: Literal["development", "production"] = "development"

    max_history: int = Field(200, ge=1, le=100_000)
    max_k: int = Field(100, ge=1, le=10_000)
    max_beam_width: int = Field(200, ge=1, le=10_000)
    # Beam width when a request gives none; 0 = the width the bundle was validated with
    # (its decoding config). For a larger k: k plus one per excluded item, up to
    # max_beam_width (Engine.auto_beam_width). Excluded items never cost results: the
    # dense head's candidates hold k eligible items whatever the beam finds.
    default_beam_width: int = Field(0, ge=0, le=10_000)
    # POST /recommend: most ids in include_items, and in exclude_items (each).
    max_filter_items: int = Field(1000, ge=1, le=100_000)
    # Share of the dense head's mass given to items without an id (added at serving time
    # or unseen in training), an exposure knob for new items (docs/method.md, new-item
    # share); unset = the bundle's own (None in shipped bundles: the model as trained).
    new_item_share: float | None = Field(None, gt=0.0, lt=1.0)
    # Where the dense head's candidates come from (models/dense_index.py): "exact" scores
    # every row per request; "ann" an IVF index built at load (seconds at 1M items) plus
    # an exact scan of the added items; "auto" the index from dense_index_min_rows bundle
    # items on a CPU (below, the scan is cheap and exact; on a GPU it is one matmul).
    dense_index: Literal["auto", "exact", "ann"] = "auto"
    dense_index_min_rows: int = Field(200_000, ge=1)
    # Inverted lists scanned per request: recall against latency (BENCHMARKS.md).
    dense_index_nprobe: int = Field(192, ge=1, le=65_536)
    # How the index's lists hold the vectors (models/dense_index.py, DENSE_INDEX_CODECS).
    dense_index_codec: Literal["flat", "sq8", "pq4fs"] = "pq4fs"
    max_items_per_request: int = Field(256, ge=1, le=100_000)
    # POST /events: most events in one request, and the newest events kept per user
    # (older ones are dropped as new ones arrive; /recommend reads them all).
    max_events_per_request: int = Field(1000, ge=1, le=100_000)
    user_history_max: int = Field(200, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    batch_max_size: int = Field(32, ge=1, le=4096)
    # 0: a batch runs as soon as the inference thread is free (service/batching.py).
    batch_max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0)
    log_level: str = "info"

    # Start-up: one recommend and one encode before the service reports ready.
    warmup: bool = True
    # Redis reconnect backoff: first wait, doubling up to the cap (seconds).
    redis_backoff_initial_s: float = Field(0.2, gt=0)
    redis_backoff_max_s: float = Field(5.0, gt=0)
    # Torch intra-op threads for inference; 0 = leave torch's default.
    torch_threads: int = Field(0, ge=0)
    # Micro-batches of fewer requests run on one torch thread, larger ones on all
    # (service/threads.py; CPU, torch backend).
    parallel_batch_min: int = Field(4, ge=1, le=4096)
    # Seconds between looks at the bundle root's LATEST (a new version is loaded beside
    # the serving one and swapped in); 0 = only on POST /admin/reload.
    bundle_poll_s: float = Field(30.0, ge=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        levels = ("critical", "error", "warning", "info", "debug")
        if value.lower() not in levels:
            raise ValueError(f"log_level must be one of {levels}, got {value!r}")
        return value.lower()

    @model_validator(mode="after")
    def _production_needs_keys(self) -> Settings:
        if self.environment != "production":
            return self
        if not self.api_keys:
            raise ValueError(
                "FLEXCODE_API_KEYS is required when FLEXCODE_ENVIRONMENT=production "
                "(comma-separated bearer keys for POST /items)"
            )
        weak = [k for k in self.api_keys if k.lower() in _PLACEHOLDER_KEYS or len(k) < 16]
        if weak:
            raise ValueError(
                "FLEXCODE_API_KEYS holds a placeholder or short key (< 16 characters); "
                "production needs real secrets"
            )
        return self

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_url.strip())
