"""Fixtures for the service tests: tiny random bundles, settings, a running app reached
through real HTTP (httpx ASGITransport with the lifespan run), and Redis key prefixes
that are unique per test and deleted afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from models.bundle import write_bundle
from service.app import create_app
from service.settings import Settings
from tests.bundle_factory import tiny_contents
from tests.service.fakes import FakeTextEncoder

REDIS_URL = "redis://127.0.0.1:6379/0"
EXTRA_DEDUP = 24  # room for many colliding added items (the tiny bundle has 2 spare ids)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_roomy_bundle(root: Path, n_items: int = 60, budget: int = 3, seed: int = 0) -> Path:
    """make_tiny_bundle with EXTRA_DEDUP more spare dedup ids per code prefix."""
    c = tiny_contents(n_items, budget, seed, dedup_slack=2 + EXTRA_DEDUP)
    return write_bundle(root, c, now=datetime.now(timezone.utc))


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root (with LATEST) shared by the session; tests must not modify it."""
    root = tmp_path_factory.mktemp("bundles")
    write_roomy_bundle(root)
    return root


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"flexcode-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def make_settings(bundle_root: Path, tmp_path: Path):
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "bundle_path": bundle_root,
            "journal_path": tmp_path / "journal.sqlite3",
            "device": "cpu",
            "redis_backoff_initial_s": 0.05,
            "redis_backoff_max_s": 0.5,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app with its lifespan run, and an HTTP client talking to it."""
    app = create_app(settings, text_encoder=FakeTextEncoder())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client, app


def metric_value(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` in a Prometheus text exposition whose labels
    include `labels`; 0.0 when there is none (a labelled series not created yet)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port (append-only file in `data_dir`), to stop
    and restart mid-test."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.data_dir), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
