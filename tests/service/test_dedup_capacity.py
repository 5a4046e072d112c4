"""Dedup capacity through the real API: 10,000 items whose text differs in one word, all
with the same code prefix, each get their own token sequence (service/catalog/placement.py),
with the embedded store and with Redis, and every one of them can be read back and
recommended.

The tiny bundle (tests/bundle_factory.py, K = 8 codes per level, L = 3) has 8^3 = 512
code sequences for a new item's split; the session bundle's 36 dedup ids per sequence hold
18,432 items, so 10,000 fit, where its own prefix alone holds 36.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
import torch

from models.decoding import exact_log_probs
from service.app import create_app
from tests.bundle_factory import TEXT_DIM
from tests.service.conftest import REDIS_URL

pytestmark = pytest.mark.anyio

N_ITEMS = 10_000
BATCH = 1_000  # items per POST /items


class NearDuplicateEncoder:
    """Text that differs only in its digits gets nearly the same unit vector (a 1e-4
    perturbation per text), as a sentence encoder does for "shirt, size 38" and "shirt,
    size 40": their codes coincide, their placement orders nearly so."""

    model_id = "tiny-random-text-encoder;max_seq_length=128"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            vec = _hashed_unit(re.sub(r"\d", "", text)) + 1e-4 * _hashed_unit(text)
            out[i] = vec / np.linalg.norm(vec)
        return out


def _hashed_unit(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(TEXT_DIM)
    return vec / np.linalg.norm(vec)


def _variants(lo: int, hi: int) -> list[dict]:
    return [
        {"item_id": f"variant-{i}", "title": f"Blue cotton shirt {i}", "categories": ["shirts"]}
        for i in range(lo, hi)
    ]


async def _add_all(client: httpx.AsyncClient) -> dict[str, tuple[int, ...]]:
    """POST every variant in batches; item id -> its tokens, as the API answered."""
    tokens: dict[str, tuple[int, ...]] = {}
    for lo in range(0, N_ITEMS, BATCH):
        r = await client.post("/items", json={"items": _variants(lo, lo + BATCH)})
        assert r.status_code == 200, r.text[:500]
        for item in r.json()["items"]:
            assert item["status"] == "added"
            tokens[item["item_id"]] = tuple(item["tokens"])
    return tokens


async def _read_back(client: httpx.AsyncClient, tokens: dict[str, tuple[int, ...]]) -> None:
    for item_id, want in tokens.items():
        r = await client.get(f"/items/{item_id}")
        assert r.status_code == 200, (item_id, r.text)
        assert tuple(r.json()["tokens"]) == want


def _check_recommendable(engine, tokens: dict[str, tuple[int, ...]]) -> None:
    """Every item is in the overlay prefix index under its served tokens, and both heads
    can rank it: a finite dense log-probability (live, its vector in the table) and a
    finite generative one (teacher-forced under the restricted softmax: its tokens lead
    to it in the index), the two parts of the decoder's score."""
    rec = engine._rec  # white-box: the item table and the overlay index
    ids = list(tokens)
    rows = rec.resolve(ids)
    assert (rows > rec.n_bundle).all()
    table = rec.table
    token_rows = np.array([tokens[i] for i in ids], dtype=np.int64)
    assert (table.overlay.lookup(token_rows) == rows).all()
    history = torch.as_tensor(rows[:5][None], device=table.device)
    dense, generative = exact_log_probs(rec.generator, history, table.catalogue())
    at = torch.as_tensor(rows, device=table.device)
    assert bool(torch.isfinite(dense[0, at]).all())
    assert bool(torch.isfinite(generative[0, at]).all())


async def _run(settings) -> dict[str, tuple[int, ...]]:
    app = create_app(settings, text_encoder=NearDuplicateEncoder())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            started = time.perf_counter()
            tokens = await _add_all(client)
            added = time.perf_counter()
            assert len(set(tokens.values())) == N_ITEMS  # one token sequence each
            engine = app.state.engine
            records = {r.id: r for r in engine.added_records()}
            placed = [records[i].placement for i in tokens]
            # The point of the test: nearly all of them did not fit under their own prefix.
            assert sum(p > 0 for p in placed) > N_ITEMS - 100
            _check_recommendable(engine, tokens)
            await _read_back(client, tokens)
            # As a history they are known items (no popularity fallback). Whether one is
            # also among the top 10 depends on the (random) weights, not on placement.
            r = await client.post(
                "/recommend", json={"history": ["variant-1", "variant-9999"], "k": 10}
            )
            assert r.status_code == 200
            assert r.json()["fallback"] is None and len(r.json()["items"]) == 10
            print(
                f"added in {added - started:.1f} s, checked in {time.perf_counter() - added:.1f} s"
            )
    return tokens


def _settings(make_settings, **extra):
    return make_settings(max_items_per_request=BATCH, **extra)


async def test_ten_thousand_near_identical_items_embedded(make_settings) -> None:
    await _run(_settings(make_settings))


async def test_ten_thousand_near_identical_items_redis(make_settings, redis_prefix) -> None:
    await _run(_settings(make_settings, redis_url=REDIS_URL, redis_prefix=redis_prefix))
