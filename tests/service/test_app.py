"""The service through real HTTP (embedded mode unless stated): recommend, items, health,
metrics, bad input, restart durability, start-up refusals, torch vs ONNX."""

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest

from models.bundle import resolve_bundle_path
from service.app import StartupError, create_app
from service.schemas import ErrorBody
from tests.service.conftest import metric_value, running_app
from tests.service.fakes import FakeTextEncoder

pytestmark = pytest.mark.anyio

HISTORIES = [["item-1", "item-5"], ["item-7"], ["item-3", "item-9", "item-11", "item-2"]]


async def test_recommend_skips_unknown_and_excludes_history(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        r = await client.post("/recommend", json={"history": ["item-1", "nope", "item-5"], "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["unknown_items"] == ["nope"] and body["fallback"] is None
        ids = [it["item_id"] for it in body["items"]]
        assert len(ids) == 5 and len(set(ids)) == 5
        assert not {"item-1", "item-5"} & set(ids)
        scores = [it["score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert body["model_version"].startswith("tiny-")


async def test_popularity_fallback_and_long_history(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        for history in ([], ["ghost-1", "ghost-2"]):
            r = await client.post("/recommend", json={"history": history, "k": 3})
            assert r.status_code == 200 and r.json()["fallback"] == "popularity"
            assert len(r.json()["items"]) == 3
        # 150 items > the model's max_len (12): cut to the most recent, still answered.
        long = [f"item-{1 + i % 60}" for i in range(150)]
        r = await client.post(
            "/recommend", json={"history": long, "k": 3, "exclude_history": False}
        )
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        # No history field at all: the popularity ranking, at the default k.
        r = await client.post("/recommend", json={})
        assert r.status_code == 200 and r.json()["fallback"] == "popularity"
        assert len(r.json()["items"]) == 10


async def test_large_k_and_long_history_get_k_items(make_settings) -> None:
    """k above the default beam width (the tiny bundle's 20): the beam is raised to k plus
    one per excluded history item, up to max_beam_width, and the answer holds k items,
    none of them from the history."""
    history = [f"item-{i}" for i in range(1, 40)]  # 39 of the 60 items
    k = 60 - len(history)  # 21: every item that is not excluded
    for max_beam_width, expected_width in ((200, k + len(history)), (30, 30)):
        async with running_app(make_settings(max_beam_width=max_beam_width)) as (client, app):
            rec = app.state.engine._rec  # white-box: the beam width each batch ran with
            widths, search = [], rec._search

            def recording(queries, width, search=search, widths=widths):
                widths.append(width)
                return search(queries, width)

            rec._search = recording
            r = await client.post("/recommend", json={"history": history, "k": k})
            assert r.status_code == 200, r.text
            ids = [it["item_id"] for it in r.json()["items"]]
            assert len(set(ids)) == k and not set(ids) & set(history)
            assert widths == [expected_width]
            # A beam narrower than k: the dense head's candidates still fill k.
            r = await client.post("/recommend", json={"history": history, "k": k, "beam_width": 1})
            assert len({it["item_id"] for it in r.json()["items"]}) == k
            assert widths[-1] == 1


async def test_added_items_are_served_and_idempotent(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        new = [{"item_id": f"new-{i}", "title": "Same title", "brand": "Acme"} for i in range(3)]
        r = await client.post("/items", json={"items": new})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [it["status"] for it in items] == ["added"] * 3
        tokens = [tuple(it["tokens"]) for it in items]
        assert len(set(tokens)) == 3 and len({t[:-1] for t in tokens}) == 1  # dedup differs
        assert all(it["origin"] == "added" and 0 <= it["n_cf"] <= 3 for it in items)
        again = await client.post("/items", json={"items": new[:1]})
        assert again.json()["items"][0]["status"] == "unchanged"
        assert tuple(again.json()["items"][0]["tokens"]) == tokens[0]
        conflict = await client.post(
            "/items", json={"items": [{"item_id": "new-0", "title": "Changed"}]}
        )
        assert conflict.status_code == 409 and "replace" in conflict.json()["detail"]
        replaced = await client.post(
            "/items", json={"items": [{"item_id": "new-0", "title": "Changed"}], "replace": True}
        )
        assert replaced.status_code == 200 and replaced.json()["items"][0]["status"] == "replaced"
        bundle = await client.post("/items", json={"items": [{"item_id": "item-2", "title": "x"}]})
        assert bundle.status_code == 409 and "bundle" in bundle.json()["detail"]

        got = await client.get("/items/new-1")
        assert got.status_code == 200 and tuple(got.json()["tokens"]) == tokens[1]
        assert (await client.get("/items/item-4")).json()["origin"] == "bundle"
        assert (await client.get("/items/missing")).status_code == 404

        # New items are recommendable: in history (known, excluded) and as results.
        r = await client.post("/recommend", json={"history": ["new-1"], "k": 60, "beam_width": 80})
        assert r.status_code == 200 and r.json()["unknown_items"] == []
        ids = {it["item_id"] for it in r.json()["items"]}
        assert "new-1" not in ids and {"new-0", "new-2"} & ids


async def test_restart_keeps_added_items_embedded(make_settings) -> None:
    settings = make_settings()
    async with running_app(settings) as (client, _):
        r = await client.post("/items", json={"items": [{"item_id": "keep-me", "title": "Kept"}]})
        tokens = r.json()["items"][0]["tokens"]
    async with running_app(settings) as (client, _):
        got = await client.get("/items/keep-me")
        assert got.status_code == 200 and got.json()["tokens"] == tokens
        ready = (await client.get("/readyz")).json()
        assert ready["added_items"] == 1 and ready["store"] == {"mode": "embedded", "up": True}


async def test_api_key_required_when_configured(make_settings) -> None:
    key = "k" * 32
    async with running_app(make_settings(api_keys=[key])) as (client, _):
        body = {"items": [{"item_id": "auth-1", "title": "x"}]}
        assert (await client.post("/items", json=body)).status_code == 401
        bad = await client.post("/items", json=body, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        ok = await client.post("/items", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert (await client.post("/recommend", json={"history": []})).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/recommend", {"history": ["item-1"], "k": 0}, "k"),
        ("/recommend", {"history": ["item-1"], "k": 101}, "k must be <= 100"),
        ("/recommend", {"history": ["item-1"] * 201}, "at most 200"),
        ("/recommend", {"history": ["item-1"], "beam_width": 201}, "beam_width must be"),
        ("/recommend", {"history": "item-1"}, "history"),
        ("/recommend", {"history": [""]}, "1 to 256"),
        ("/recommend", {"history": [], "unknown_field": 1}, "unknown_field"),
        ("/items", {"items": []}, "items"),
        ("/items", {"items": [{"item_id": "a"}]}, "title"),
        ("/items", {"items": [{"item_id": "a", "title": "t", "x": {"y": 1}}]}, "items.0.x"),
        ("/items", {"items": [{"item_id": "a", "title": t} for t in "tu"]}, "appears twice"),
        ("/items", {"items": [{"item_id": f"a{i}", "title": "t"} for i in range(257)]}, "256"),
    ],
)
async def test_bad_input_is_a_4xx_with_a_message(make_settings, path, body, needle) -> None:
    async with running_app(make_settings()) as (client, _):
        r = await client.post(path, json=body)
        assert 400 <= r.status_code < 500, r.text
        assert needle in r.json()["detail"], r.json()
        ErrorBody.model_validate(r.json())  # the one error body, as the OpenAPI says


async def test_malformed_and_oversized_bodies(make_settings) -> None:
    async with running_app(make_settings(max_body_bytes=2048)) as (client, _):
        headers = {"Content-Type": "application/json"}
        r = await client.post("/recommend", content=b"{not json", headers=headers)
        assert r.status_code == 422 and "JSON" in r.json()["detail"]
        big = {"history": ["item-1"] * 100, "pad": "x" * 5000}
        r = await client.post("/recommend", json=big)
        assert r.status_code == 413 and r.json() == {"detail": "request body exceeds 2048 bytes"}

        async def chunks():  # no Content-Length: the limit counts what arrives
            for _ in range(10):
                yield b" " * 1000

        r = await client.post("/recommend", content=chunks(), headers=headers)
        assert r.status_code == 413
        r = await client.get("/nowhere")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
        r = await client.get("/recommend")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json() == {"detail": "Method Not Allowed"}


async def test_health_and_metrics(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        await client.post("/recommend", json={"history": ["item-1"], "k": 2})
        await client.post("/items", json={"items": [{"item_id": "m-1", "title": "x"}]})
        await client.get("/items/m-1")
        response = await client.get("/metrics")
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.text
        for name in (
            "flexcode_http_request_duration_seconds_bucket",
            "flexcode_beam_search_duration_seconds_bucket",
            "flexcode_batch_size_bucket",
        ):
            assert name in text, name
        assert metric_value(text, "flexcode_items_added_total") == 1
        assert metric_value(text, "flexcode_catalog_items") == 61
        assert metric_value(text, "flexcode_redis_up") == 0
        assert re.search(r'flexcode_model_info\{backend="torch",device="cpu",version="tiny-', text)
        assert 'route="/recommend"' in text
        assert 'route="/metrics"' not in text and 'route="/healthz"' not in text

        # A 404 of GET /items/{item_id} is counted under its route template and status.
        item_route = {"route": "/items/{item_id}", "method": "GET"}
        requests = "flexcode_http_request_duration_seconds_count"
        before_404 = metric_value(text, requests, status="404", **item_route)
        before_200 = metric_value(text, requests, status="200", **item_route)
        assert before_200 == 1
        assert (await client.get("/items/nothing-here")).status_code == 404
        text = (await client.get("/metrics")).text
        assert metric_value(text, requests, status="404", **item_route) == before_404 + 1
        assert metric_value(text, requests, status="200", **item_route) == before_200


async def test_cache_metrics_count_lookups(make_settings) -> None:
    """Every id looked up (history ids, GET /items) is one hit or one miss."""
    async with running_app(make_settings()) as (client, _):
        await client.post("/items", json={"items": [{"item_id": "c-1", "title": "x"}]})

        async def counts() -> tuple[float, float]:
            text = (await client.get("/metrics")).text
            hits = metric_value(text, "flexcode_cache_hits_total")
            return hits, metric_value(text, "flexcode_cache_misses_total")

        hits, misses = await counts()
        history = ["item-1", "nope", "c-1", "item-5", "gone"]
        r = await client.post("/recommend", json={"history": history, "k": 3})
        assert r.status_code == 200
        assert await counts() == (hits + 3, misses + 2)
        assert (await client.get("/items/c-1")).status_code == 200
        assert (await client.get("/items/item-2")).status_code == 200
        assert (await client.get("/items/missing")).status_code == 404
        assert await counts() == (hits + 5, misses + 3)


async def test_concurrent_requests_are_micro_batched(make_settings) -> None:
    async with running_app(make_settings(batch_max_wait_ms=50)) as (client, _):
        results = await asyncio.gather(
            *(client.post("/recommend", json={"history": h, "k": 3}) for h in HISTORIES * 4)
        )
        assert all(r.status_code == 200 for r in results)
        text = (await client.get("/metrics")).text
        count = float(re.search(r"flexcode_batch_size_count (\S+)", text).group(1))
        assert count < 12  # 12 requests (and the warm-up) in fewer batches
        # Batching does not change answers: the same items in the same order; scores agree
        # up to float rounding (a matrix product's blocking depends on the batch size).
        alone = (await client.post("/recommend", json={"history": HISTORIES[2], "k": 3})).json()
        batched = results[2].json()
        assert [i["item_id"] for i in alone["items"]] == [i["item_id"] for i in batched["items"]]
        for a, b in zip(alone["items"], batched["items"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


async def test_torch_and_onnx_return_the_same_top_k(make_settings) -> None:
    tops = {}
    for backend in ("torch", "onnx"):
        settings = make_settings(backend=backend)
        async with running_app(settings) as (client, _):
            tops[backend] = []
            for history in HISTORIES:
                r = await client.post("/recommend", json={"history": history, "k": 10})
                tops[backend].append([it["item_id"] for it in r.json()["items"]])
            text = (await client.get("/metrics")).text
            assert f'backend="{backend}"' in text
    assert tops["torch"] == tops["onnx"]


async def test_corrupted_bundle_stops_start_up(bundle_root: Path, make_settings, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(resolve_bundle_path(bundle_root), copy)
    with (copy / "generator.safetensors").open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    app = create_app(make_settings(bundle_path=copy), text_encoder=FakeTextEncoder())
    with pytest.raises(StartupError, match=r"generator\.safetensors: sha256"):
        async with app.router.lifespan_context(app):
            pass
    original = resolve_bundle_path(bundle_root)
    shutil.copy(original / "generator.safetensors", copy / "generator.safetensors")
    (copy / "items.npz").unlink()
    with pytest.raises(StartupError, match=r"items\.npz: listed in manifest\.json but missing"):
        async with app.router.lifespan_context(app):
            pass
    shutil.copy(original / "items.npz", copy / "items.npz")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StartupError, match="incompatible bundle format 99"):
        async with app.router.lifespan_context(app):
            pass


async def test_wrong_text_encoder_stops_start_up(make_settings) -> None:
    app = create_app(make_settings(), text_encoder=FakeTextEncoder(model_id="other-model"))
    with pytest.raises(StartupError, match="other-model"):
        async with app.router.lifespan_context(app):
            pass


async def test_added_items_are_merged_in_the_background(make_settings, monkeypatch) -> None:
    """Added items go to the overlay at once, and are folded into the base index off the
    inference thread a moment later; recommendations are the same before and after."""
    import service.index_merge

    monkeypatch.setattr(service.index_merge, "MERGE_DELAY_S", 0.2)
    async with running_app(make_settings()) as (client, app):
        new = [{"item_id": f"merge-{i}", "title": f"Thing {i}"} for i in range(4)]
        assert (await client.post("/items", json={"items": new})).status_code == 200
        table = app.state.engine._rec.table  # white-box: the index the decoder reads
        assert table.overlay.n_added == 4
        bodies = [
            {"history": ["merge-1"], "k": 60, "beam_width": 80},
            {"history": ["item-5", "item-9", "item-12"], "k": 10},
        ]
        before = [(await client.post("/recommend", json=b)).json() for b in bodies]
        await app.state.engine.merged()
        assert table.overlay.n_added == 0 and table.merge_job() is None
        after = [(await client.post("/recommend", json=b)).json() for b in bodies]
        assert after == before
        assert {"merge-0", "merge-2"} & {it["item_id"] for it in after[0]["items"]}
