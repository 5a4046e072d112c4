"""Load and a Redis crash against two service replicas: are acknowledged items ever lost?

Two replicas (real uvicorn processes on loopback, Redis catalog mode) share one private
redis-server with an append-only file (appendfsync everysec, as docker-compose runs it).
N concurrent clients call POST /recommend and POST /items on both; mid-run Redis is
killed (SIGKILL: no shutdown, up to a second of writes not yet on disk) and restarted
from its AOF. Afterwards a fresh third replica starts and every item a replica
acknowledged (2xx on POST /items) is looked up there: it must hold all of them, with the
tokens the acknowledgement gave (the replicas write back what Redis lost on reconnect).

Every response is one of: served (2xx), refused (4xx, or 503 with Retry-After: the
service said no and when to retry), failed (any other 5xx, a 503 without Retry-After,
a connection error or a timeout).

The bundle is synthetic (scripts/make_large_bundle.py: the shipped shape, random weights,
dense weight 0.5 so that requests run the beam search too); item text goes through its
hash stand-in for MiniLM. Only the counts mean anything, not the latencies.

    .venv/bin/python scripts/bench_fault.py                        # 8 clients, 40 s
    .venv/bin/python scripts/bench_fault.py --clients 16 --duration 60 --down 5
    .venv/bin/python scripts/bench_fault.py --wipe     # Redis comes back EMPTY instead
Writes reports/bench_fault.json. Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.make_large_bundle import (  # noqa: E402
    HashTextEncoder,
    LargeBundleShape,
    make_large_bundle,
)

# Spare dedup ids per code prefix, room for the items a run adds (a prefix whose block is
# full sends a new item to its next code sequence, `models.placement`; this keeps that rare).
DEDUP_SLACK = 256


# --- processes ------------------------------------------------------------------------------


def _serve(bundle: str, port: str, redis_url: str, prefix: str) -> None:
    """Child process: the real app under uvicorn, Redis catalog mode."""
    import logging

    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        bundle_path=bundle,
        device="cpu",
        redis_url=redis_url,
        redis_prefix=prefix,
        redis_backoff_initial_s=0.1,
        redis_backoff_max_s=1.0,
        torch_threads=1,
        log_level="warning",
    )
    app = create_app(settings, text_encoder=HashTextEncoder())
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A private redis-server with an append-only file (everysec) in `data_dir`.
    `wipe()` deletes that file: the next start comes back empty (a lost volume)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    time.sleep(0.05)  # replaying the AOF
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def wipe(self) -> None:
        for path in self.data_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


class Replica:
    """One service process (this script with --serve), its log in `log_path`."""

    def __init__(self, name: str, bundle: Path, redis_url: str, prefix: str, logs: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("w")
        args = [str(bundle), str(self.port), redis_url, prefix]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def wait_ready(self, timeout: float = 300) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up; see {self.log_path}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "ready":
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout} s")

    def log_count(self, text: str) -> int:
        return self.log_path.read_text(errors="replace").count(text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


# --- the load -------------------------------------------------------------------------------

SERVED, REFUSED, FAILED = "served", "refused", "failed"


def classify(status: int | None, retry_after: str | None) -> str:
    if status is not None and 200 <= status < 300:
        return SERVED
    if status is not None and (400 <= status < 500 or (status == 503 and retry_after)):
        return REFUSED
    return FAILED  # other 5xx, 503 without Retry-After, no response at all


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)  # (route, outcome) -> n
    statuses: Counter = field(default_factory=Counter)  # (route, status or error) -> n
    by_phase: Counter = field(default_factory=Counter)  # (phase, outcome) -> n
    acked: dict[str, list[int]] = field(default_factory=dict)  # item id -> tokens
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Phases:
    """Wall-clock marks of the fault, to tell requests before/during/after it apart."""

    killed_at: float | None = None
    restarted_at: float | None = None

    def of(self, t: float) -> str:
        if self.killed_at is None or t < self.killed_at:
            return "before"
        if self.restarted_at is None or t < self.restarted_at:
            return "redis down"
        return "after restart"


async def client_loop(
    ci: int,
    urls: list[str],
    stop_at: float,
    n_items: int,
    add_share: float,
    tally: Tally,
    phases: Phases,
) -> None:
    import httpx

    rng = random.Random(ci)
    serial = 0
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < stop_at:
            url = urls[rng.randrange(len(urls))]
            if rng.random() < add_share:
                route = "POST /items"
                n_new = rng.randint(1, 4)
                ids = [f"bench-c{ci}-{serial + i}" for i in range(n_new)]
                serial += n_new
                body = {
                    "items": [
                        {"item_id": i, "title": f"Fault bench item {i}", "categories": ["Bench"]}
                        for i in ids
                    ]
                }
                path = "/items"
            else:
                route = "POST /recommend"
                history = [f"item-{rng.randint(1, n_items)}" for _ in range(rng.randint(1, 8))]
                if tally.acked and rng.random() < 0.5:
                    history.append(rng.choice(list(tally.acked)))
                body = {"history": history, "k": 10}
                path = "/recommend"
            t0 = time.monotonic()
            status, retry_after, error = None, None, None
            try:
                r = await http.post(url + path, json=body)
                status, retry_after = r.status_code, r.headers.get("retry-after")
                if path == "/items" and 200 <= status < 300:
                    for it in r.json()["items"]:
                        tally.acked[it["item_id"]] = it["tokens"]
            except httpx.HTTPError as e:
                error = type(e).__name__
            outcome = classify(status, retry_after)
            tally.counts[(route, outcome)] += 1
            tally.statuses[(route, error or str(status))] += 1
            tally.by_phase[(phases.of(t0), outcome)] += 1
            tally.latencies_ms.setdefault(route, []).append((time.monotonic() - t0) * 1000)
            if outcome != SERVED:
                await asyncio.sleep(0.05)  # a client backing off a little


async def fault_schedule(
    redis_proc: RedisProcess, kill_at: float, down_s: float, wipe: bool, ph: Phases
) -> None:
    await asyncio.sleep(max(0.0, kill_at - time.monotonic()))
    redis_proc.kill()
    ph.killed_at = time.monotonic()
    print(f"  redis killed (SIGKILL); restarting in {down_s:.1f} s", flush=True)
    await asyncio.sleep(down_s)
    if wipe:
        redis_proc.wipe()
    await asyncio.to_thread(redis_proc.start)
    ph.restarted_at = time.monotonic()
    print("  redis restarted " + ("EMPTY (AOF deleted)" if wipe else "from its AOF"), flush=True)


async def run_load(args, replicas: list[Replica], redis_proc: RedisProcess) -> tuple[Tally, Phases]:
    tally, phases = Tally(), Phases()
    start = time.monotonic()
    stop_at = start + args.duration
    urls = [r.url for r in replicas]
    fault = asyncio.create_task(
        fault_schedule(
            redis_proc, start + args.kill_at * args.duration, args.down, args.wipe, phases
        )
    )
    await asyncio.gather(
        *(
            client_loop(i, urls, stop_at, args.items, args.add_share, tally, phases)
            for i in range(args.clients)
        )
    )
    await fault
    return tally, phases


# --- the check ------------------------------------------------------------------------------


async def missing_on(url: str, acked: dict[str, list[int]]) -> dict[str, int]:
    """Acknowledged items a replica does not serve: unknown to its local state (through
    /recommend's unknown_items), absent (GET 404), or with other tokens than acknowledged."""
    import httpx

    ids = sorted(acked)
    unknown, absent, other_tokens = 0, 0, 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for i in range(0, len(ids), 200):
            r = await http.post("/recommend", json={"history": ids[i : i + 200], "k": 1})
            r.raise_for_status()
            unknown += len(r.json()["unknown_items"])
        for item_id in ids:
            r = await http.get(f"/items/{item_id}")
            if r.status_code == 404:
                absent += 1
            elif r.json()["tokens"] != acked[item_id]:
                other_tokens += 1
    return {"unknown_locally": unknown, "absent": absent, "other_tokens": other_tokens}


async def wait_store_up(replica: Replica, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                r = await http.get(f"{replica.url}/readyz")
                if r.json().get("status") == "ready":
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{replica.name}: store not back up")


def metric(url: str, name: str) -> float:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def print_table(result: dict) -> None:
    rows = result["requests"]
    print()
    print("| route | served | refused | failed |")
    print("|---|---|---|---|")
    for route, c in rows.items():
        print(f"| {route} | {c[SERVED]} | {c[REFUSED]} | {c[FAILED]} |")
    print()
    print("| phase | served | refused | failed |")
    print("|---|---|---|---|")
    for phase, c in result["by_phase"].items():
        print(f"| {phase} | {c[SERVED]} | {c[REFUSED]} | {c[FAILED]} |")
    print()
    a = result["items"]
    print(f"items acknowledged: {a['acknowledged']}; missing on the fresh replica: "
          f"{a['missing_on_fresh_replica']}; token rows shared by two items: "
          f"{a['token_rows_shared']}")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--kill-at", type=float, default=0.35, help="share of the run")
    parser.add_argument("--down", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--items", type=int, default=500, help="bundle catalog size")
    parser.add_argument("--add-share", type=float, default=0.3, help="share of POST /items")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="delete the AOF before the restart: Redis comes back empty and the replicas "
        "must write back every item",
    )
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_fault.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fault-"))
    (tmp / "redis").mkdir()
    (tmp / "logs").mkdir()
    redis_proc = RedisProcess(tmp / "redis")
    replicas: list[Replica] = []
    try:
        shape = LargeBundleShape(dedup_slack=DEDUP_SLACK, dense_weight=0.5)
        bundle = make_large_bundle(tmp / "bundles", args.items, shape=shape)
        print(f"bundle: {bundle.name} ({args.items} items)", flush=True)
        redis_proc.start()
        prefix = "bench-fault"
        replicas = [
            Replica(name, tmp / "bundles", redis_proc.url, prefix, tmp / "logs")
            for name in ("replica-1", "replica-2")
        ]
        for r in replicas:
            print(f"{r.name} ready in {r.wait_ready():.1f} s", flush=True)
        print(f"load: {args.clients} clients for {args.duration:.0f} s", flush=True)
        tally, phases = asyncio.run(run_load(args, replicas, redis_proc))

        async def settle() -> None:
            await asyncio.gather(*(wait_store_up(r) for r in replicas))

        asyncio.run(settle())
        fresh = Replica("replica-3-fresh", tmp / "bundles", redis_proc.url, prefix, tmp / "logs")
        replicas.append(fresh)
        print(f"{fresh.name} ready in {fresh.wait_ready():.1f} s", flush=True)
        checks = {r.name: asyncio.run(missing_on(r.url, tally.acked)) for r in replicas}
        rows = [tuple(t) for t in tally.acked.values()]
        result = {
            "note": "synthetic bundle (random weights), hash text encoder; two replicas and "
            "one redis-server (AOF everysec) on loopback, Redis SIGKILLed and restarted "
            "mid-run; a fresh third replica checks every acknowledged item",
            "config": {**vars(args), "out": None},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "requests": {
                route: {o: tally.counts[(route, o)] for o in (SERVED, REFUSED, FAILED)}
                for route in ("POST /recommend", "POST /items")
            },
            "by_phase": {
                phase: {o: tally.by_phase[(phase, o)] for o in (SERVED, REFUSED, FAILED)}
                for phase in ("before", "redis down", "after restart")
            },
            "statuses": {f"{k[0]} {k[1]}": n for k, n in sorted(tally.statuses.items())},
            "latency_ms_p50_p99": {
                route: [round(float(np.percentile(v, q)), 1) for q in (50, 99)]
                for route, v in tally.latencies_ms.items()
            },
            "redis_down_s": round((phases.restarted_at or 0) - (phases.killed_at or 0), 2),
            "items": {
                "acknowledged": len(tally.acked),
                "missing_on_fresh_replica": sum(checks[fresh.name].values()),
                "token_rows_shared": len(rows) - len(set(rows)),
                "checks": checks,
            },
            "replicas": {
                r.name: {
                    "resyncs": metric(r.url, "flexcode_catalog_resyncs_total"),
                    "writebacks_logged": r.log_count("writing them back"),
                    "redis_lost_logged": r.log_count("lost redis"),
                }
                for r in replicas
            },
            "wall_s": round(time.perf_counter() - started, 1),
        }
    except BaseException:
        print(f"failed; bundle and replica logs kept in {tmp}", file=sys.stderr)
        raise
    finally:
        for r in replicas:
            r.stop()
        redis_proc.kill()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"written to {out} ({result['wall_s']} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    if result["items"]["missing_on_fresh_replica"]:
        raise SystemExit("acknowledged items are missing on the fresh replica")


if __name__ == "__main__":
    main()
