"""Benchmark the HTTP service on loopback: /recommend latency (concurrency 1) and
throughput (concurrency 32, micro-batched vs unbatched, as a ratio measured in the same
run), and POST /items latency, for the torch and ONNX backends and several catalog sizes.

The bundles are synthetic (scripts/make_large_bundle.py: the shipped model shape, RANDOM
weights); only the timings mean anything. New items' text goes through a hash stand-in
for MiniLM (`HashTextEncoder`, 384-d like it), so POST /items latency here excludes
sentence encoding. The server is uvicorn in a subprocess, embedded catalog store.

    .venv/bin/python scripts/bench_service.py                  # 10k items
    .venv/bin/python scripts/bench_service.py --sizes 10000,1000000
Writes reports/bench_service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _serve(bundle: str, port: int, backend: str, batch: int, journal: str, device: str) -> None:
    """Child process: the real app under uvicorn, with the hash text encoder."""
    import uvicorn

    from scripts.make_large_bundle import HashTextEncoder
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        bundle_path=bundle,
        backend=backend,
        batch_max_size=batch,
        journal_path=journal,
        device=device,
        log_level="warning",
    )
    app = create_app(settings, text_encoder=HashTextEncoder())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: Path, backend: str, batch: int, device: str) -> None:
        self.port = _free_port()
        self.tmp = tempfile.mkdtemp(prefix="bench-journal-")
        args = [str(bundle), str(self.port), backend, str(batch), f"{self.tmp}/j.db", device]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", *args])
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 900) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _histories(n_items: int, count: int, length: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"item-{i}" for i in rng.integers(1, n_items + 1, length)] for _ in range(count)]


class _Connection:
    """One keep-alive HTTP/1.1 connection, written by hand on asyncio streams.

    The load generator shares the 2 cores with the server, so it must be cheap: httpx
    spent about 3 ms of CPU per request, twice what the server spent answering it, so the
    concurrency-32 figures measured the client. This costs a few tens of microseconds."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        assert self.reader is not None
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _run_load(url: str, bodies: list[dict], concurrency: int, path: str) -> dict:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = _Connection(host, int(port))
        try:
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                status = await conn.post(path, body)
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {
        "requests": len(bodies),
        "errors": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "p99_over_p50": round(float(np.percentile(lat, 99) / np.percentile(lat, 50)), 2),
        "throughput_rps": round(len(bodies) / wall, 1),
    }


def bench_size(n_items: int, args: argparse.Namespace, bundle_dir: Path) -> dict:
    from scripts.make_large_bundle import LargeBundleShape, make_large_bundle

    t0 = time.perf_counter()
    shape = LargeBundleShape(dense_weight=args.dense_weight)
    bundle = make_large_bundle(bundle_dir / f"n{n_items}", n_items, shape=shape)
    build_s = time.perf_counter() - t0
    print(f"[{n_items} items] bundle built in {build_s:.1f} s: {bundle}", flush=True)
    result: dict = {"n_items": n_items, "bundle_build_s": round(build_s, 1), "backends": {}}
    seq = [{"history": h, "k": 10} for h in _histories(n_items, args.requests, 10, 1)]
    conc = [{"history": h, "k": 10} for h in _histories(n_items, args.concurrent_requests, 10, 2)]
    for backend in args.backends.split(","):
        figures: dict = {}
        for batch in (32, 1):
            server = Server(bundle, backend, batch, args.device)
            try:
                figures[f"startup_s_batch{batch}"] = round(server.wait_ready(), 2)
                if batch == 32:
                    asyncio.run(_run_load(server.url, seq[:20], 1, "/recommend"))  # warm
                    figures["recommend_c1"] = asyncio.run(
                        _run_load(server.url, seq, 1, "/recommend")
                    )
                key = "recommend_c32_batched" if batch == 32 else "recommend_c32_unbatched"
                asyncio.run(_run_load(server.url, conc[:64], 32, "/recommend"))  # warm
                figures[key] = asyncio.run(_run_load(server.url, conc, 32, "/recommend"))
                if batch == 32:
                    # Items are added last: an add starts a background merge of the overlay
                    # (seconds of CPU at 1M items), which must not share the cores with the
                    # c = 32 phases, and both phases then serve the same catalogue.
                    items = [
                        {"items": [{"item_id": f"bench-{backend}-{i}", "title": f"Thing {i}"}]}
                        for i in range(args.item_requests)
                    ]
                    figures["post_items_c1"] = asyncio.run(
                        _run_load(server.url, items, 1, "/items")
                    )
            finally:
                server.stop()
        figures["batched_vs_unbatched_throughput"] = round(
            figures["recommend_c32_batched"]["throughput_rps"]
            / figures["recommend_c32_unbatched"]["throughput_rps"],
            2,
        )
        result["backends"][backend] = figures
        print(f"[{n_items} items] {backend}: {json.dumps(figures)}", flush=True)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(*sys.argv[2:7], device=sys.argv[7])  # type: ignore[misc]
        return
    from scripts.make_large_bundle import LargeBundleShape

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000", help="catalog sizes, e.g. 10000,1000000")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dense-weight",
        type=float,
        default=LargeBundleShape.dense_weight,
        help="the bundles' dense weight w (default: the shipped bundle's)",
    )
    # 1,000: the p99 is then the 10th slowest request, not the 2nd (200 gave a p99/p50 that
    # moved by 0.5 between runs of the same code).
    parser.add_argument("--requests", type=int, default=1000, help="sequential /recommend")
    parser.add_argument("--concurrent-requests", type=int, default=640)
    parser.add_argument("--item-requests", type=int, default=30, help="sequential POST /items")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_service.json"))
    args = parser.parse_args()

    import torch

    report = {
        "note": "synthetic bundles of the shipped shape with RANDOM weights "
        "(scripts/make_large_bundle.py); timings only. "
        "POST /items uses a hash text encoder (no MiniLM). Client and server share the host.",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "device": args.device,
        },
        # The server inherits these (torch threads, FLEXCODE_* settings): they change
        # the figures, so they are part of the result.
        "environment": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("FLEXCODE_") or k == "OMP_NUM_THREADS"
        },
        "bundle": {
            "shape": "scripts/make_large_bundle.py (shipped tokenizer, budget, generator)",
            "dense_weight": args.dense_weight,
        },
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-bundles-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            report["sizes"].append(bench_size(size, args, Path(tmp)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
