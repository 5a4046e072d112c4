"""Benchmark a bundle swap under load: /recommend latency before, during and after a new
bundle version is taken up, on the real service (uvicorn on loopback in a subprocess,
embedded catalog store), and whether every answer came from exactly one version.

Two random bundles of the shipped shape (scripts/make_large_bundle.py, seeds 0 and 1:
same item ids, other weights and codes) are written into one bundle root, LATEST naming
the first. The service starts on that root; some items are added (POST /items) so the
swap has items to carry; then `--concurrency` clients send /recommend back to back for
the whole run. After the baseline window the second version is published the way an
export does (LATEST replaced atomically) and taken up by POST /admin/reload (with the
API key, as in production) or, with `--trigger poll`, by the service's own LATEST poll.

Windows, by when a request was SENT: before = until the swap started (LATEST written);
during = from then until the first answer carrying the new version; after = the rest.
Checks: no failed request; every answer names one of the two versions; each client sees
old then new, never old again after new; and no request sent after the first new answer
got the old version (the switch is one reference assignment: once a request got the new
engine, every later one does).

The machine is shared and noisy (client and server on the same 2 cores): compare the
windows within one run, not with other runs.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_swap.py                 # 10k items
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_swap.py --items 100000 --trigger poll
Writes reports/bench_swap.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

API_KEY = "bench-swap-key-0123456789"  # >= 16 characters, as production requires


def _serve(config_json: str) -> None:
    """Child process: the real app under uvicorn, with the hash text encoder."""
    import uvicorn

    from scripts.make_large_bundle import HashTextEncoder
    from service.app import create_app
    from service.settings import Settings

    config = json.loads(config_json)
    port = config.pop("port")
    app = create_app(Settings(**config), text_encoder=HashTextEncoder())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _publish(root: Path, version: str) -> None:
    """Point LATEST at a version the way write_bundle does: write aside, then rename."""
    tmp = root / ".LATEST.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "LATEST")


def _peak_rss_mb(pid: int) -> float | None:
    """The server's peak resident memory (VmHWM): both versions are held during a swap."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@dataclass
class Sample:
    client: int
    sent: float  # seconds since the load started
    done: float
    status: int
    version: str | None  # model_version of the answer; None for a failure


class Load:
    """`concurrency` clients sending /recommend back to back until stop() is called."""

    def __init__(self, url: str, histories: list[list[str]], concurrency: int, k: int) -> None:
        self.url = url
        self.histories = histories
        self.concurrency = concurrency
        self.k = k
        self.samples: list[Sample] = []
        self.t0 = time.perf_counter()
        self._stop = asyncio.Event()
        self.first_new: float | None = None  # when the first answer of `new_version` came
        self.new_version: str | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        import httpx

        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(base_url=self.url, timeout=120, limits=limits) as client:
            await asyncio.gather(*(self._client(client, c) for c in range(self.concurrency)))

    async def _client(self, client, number: int) -> None:
        i = number
        while not self._stop.is_set():
            body = {"history": self.histories[i % len(self.histories)], "k": self.k}
            i += self.concurrency
            sent = self.now()
            try:
                r = await client.post("/recommend", json=body)
                status = r.status_code
                version = r.json().get("model_version") if status == 200 else None
            except Exception:  # a connection error counts as a failure
                status, version = 0, None
            done = self.now()
            if version is not None and version == self.new_version and self.first_new is None:
                self.first_new = done
            self.samples.append(Sample(number, sent, done, status, version))


def _window(samples: list[Sample]) -> dict:
    ok = [s for s in samples if s.status == 200]
    lat = np.array([s.done - s.sent for s in ok]) * 1000
    span = (max(s.done for s in samples) - min(s.sent for s in samples)) if samples else 0.0
    out = {
        "requests": len(samples),
        "failures": len(samples) - len(ok),
        "seconds": round(span, 2),
        "throughput_rps": round(len(samples) / span, 1) if span > 0 else None,
    }
    if len(lat):
        out |= {
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
        }
    return out


def _timeline(samples: list[Sample], bucket_s: float) -> list[dict]:
    """p50/p99 and count per bucket of send time (where in the run latency moved)."""
    out = []
    if not samples:
        return out
    end = max(s.sent for s in samples)
    for lo in np.arange(0.0, end + bucket_s, bucket_s):
        part = [s for s in samples if lo <= s.sent < lo + bucket_s and s.status == 200]
        if part:
            lat = np.array([s.done - s.sent for s in part]) * 1000
            versions = sorted({s.version for s in part if s.version})
            out.append(
                {
                    "t": round(float(lo), 1),
                    "n": len(part),
                    "p50_ms": round(float(np.percentile(lat, 50)), 1),
                    "p99_ms": round(float(np.percentile(lat, 99)), 1),
                    "versions": versions,
                }
            )
    return out


def _version_checks(samples: list[Sample], old: str, new: str, first_new: float | None) -> dict:
    """Every answer is one of the two versions; each client's answers go old -> new once;
    nothing sent after the first new answer got the old version."""
    answered = [s for s in samples if s.status == 200]
    unknown = sum(s.version not in (old, new) for s in answered)
    back_to_old = 0  # per client: an old answer after a new one
    switches = 0
    for client in {s.client for s in answered}:
        seq = [s.version for s in sorted(answered, key=lambda s: s.sent) if s.client == client]
        seen_new = False
        for prev, cur in itertools.pairwise(seq):
            if prev != cur:
                switches += 1
        for v in seq:
            seen_new |= v == new
            back_to_old += seen_new and v == old
    late_old = sum(
        s.version == old and first_new is not None and s.sent > first_new for s in answered
    )
    return {
        "answers_with_other_version": unknown,
        "clients": len({s.client for s in answered}),
        "version_changes_over_all_clients": switches,  # one per client when all switched
        "old_after_new_per_client": back_to_old,
        "old_answers_sent_after_first_new": late_old,
        "ok": unknown == 0 and back_to_old == 0 and late_old == 0 and first_new is not None,
    }


async def _add_items(url: str, count: int) -> float:
    """POST /items in chunks of 50 (the items the swap carries); returns seconds."""
    import httpx

    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
        for lo in range(0, count, 50):
            items = [
                {"item_id": f"swap-new-{i}", "title": f"New thing {i}", "categories": "cat-00"}
                for i in range(lo, min(lo + 50, count))
            ]
            r = await client.post("/items", json={"items": items})
            r.raise_for_status()
    return time.perf_counter() - started


async def _scenario(url: str, root: Path, old: str, new: str, args: argparse.Namespace) -> dict:
    import httpx

    rng = np.random.default_rng(0)
    histories = [
        [f"item-{i}" for i in rng.integers(1, args.items + 1, args.history)] for _ in range(2000)
    ]
    load = Load(url, histories, args.concurrency, args.k)
    load.new_version = new
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(args.warmup_s + args.before_s)
    swap_start = load.now()
    _publish(root, new)
    reload_answer: dict | None = None
    reload_done = None
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as admin:
        if args.trigger == "reload":
            r = await admin.post("/admin/reload")
            reload_done = load.now()
            reload_answer = {"status_code": r.status_code, **r.json()}
        deadline = swap_start + args.max_swap_s
        while load.first_new is None and load.now() < deadline:
            await asyncio.sleep(0.05)
        switched = load.first_new
        await asyncio.sleep(args.after_s)
        load.stop()
        await runner
        ready = (await admin.get("/readyz")).json()
    samples = [s for s in load.samples if s.sent >= args.warmup_s]  # warm-up left out
    before = [s for s in samples if s.sent < swap_start]
    end = switched if switched is not None else float("inf")
    during = [s for s in samples if swap_start <= s.sent < end]
    after = [s for s in samples if s.sent >= end]
    return {
        "swap": {
            "trigger": args.trigger,
            "old_version": old,
            "new_version": new,
            "started_at_s": round(swap_start, 2),
            # LATEST written -> the first answer carrying the new version
            "to_first_new_answer_s": None if switched is None else round(switched - swap_start, 2),
            "reload_call_s": None if reload_done is None else round(reload_done - swap_start, 2),
            "reload_answer": reload_answer,  # its `seconds`: load + carry + warm, to the switch
            "readyz_after": {k: ready.get(k) for k in ("model_version", "last_swap")},
        },
        "windows": {"before": _window(before), "during": _window(during), "after": _window(after)},
        "checks": _version_checks(samples, old, new, switched),
        "timeline": _timeline(samples, args.bucket_s),
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        _serve(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="catalogue size N")
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--history", type=int, default=10, help="history length")
    parser.add_argument("--added-items", type=int, default=100, help="items the swap carries")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load left out, at start")
    parser.add_argument("--before-s", type=float, default=20.0, help="baseline window")
    parser.add_argument("--after-s", type=float, default=20.0, help="load after the switch")
    parser.add_argument("--max-swap-s", type=float, default=300.0, help="give up after")
    parser.add_argument("--bucket-s", type=float, default=1.0, help="timeline resolution")
    parser.add_argument("--trigger", choices=("reload", "poll"), default="reload")
    parser.add_argument("--poll-s", type=float, default=1.0, help="LATEST poll (--trigger poll)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--bundle-root", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_swap.json")
    args = parser.parse_args()

    from scripts.make_large_bundle import make_large_bundle

    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        root = args.bundle_root or Path(tmp) / "bundles"
        started = time.perf_counter()
        old = make_large_bundle(root / f"n{args.items}", args.items, seed=0).name
        new = make_large_bundle(root / f"n{args.items}", args.items, seed=1).name
        root = root / f"n{args.items}"
        _publish(root, old)
        print(
            f"two {args.items}-item bundles in {time.perf_counter() - started:.0f} s: "
            f"{old} -> {new}",
            flush=True,
        )
        port = _free_port()
        config = {
            "port": port,
            "bundle_path": str(root),
            "journal_path": f"{tmp}/journal.sqlite3",
            "api_keys": API_KEY,
            "environment": "production",
            "device": "cpu",
            "log_level": "warning",
            "torch_threads": args.torch_threads,
            "bundle_poll_s": args.poll_s if args.trigger == "poll" else 0,
        }
        proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(config)])
        url = f"http://127.0.0.1:{port}"
        try:
            startup_s = _wait_ready(url, proc)
            added_s = asyncio.run(_add_items(url, args.added_items))
            result = asyncio.run(_scenario(url, root, old, new, args))
            peak = _peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report = {
        "command": " ".join(sys.argv),
        "note": "synthetic bundles of the shipped shape, RANDOM weights "
        "(scripts/make_large_bundle.py); timings only. Client and server share the host "
        "(2 cores, shared with other jobs): compare windows within this run only.",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "items": args.items,
        "concurrency": args.concurrency,
        "added_items": args.added_items,
        "startup_s": round(startup_s, 2),
        "add_items_s": round(added_s, 2),
        "server_peak_rss_mb": peak,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    _print_summary(report)
    print(f"wrote {args.out}")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 900) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server not ready")


def _print_summary(report: dict) -> None:
    swap = report["swap"]
    print(
        f"{report['items']} items, concurrency {report['concurrency']}, "
        f"{report['added_items']} added items carried; trigger {swap['trigger']}"
    )
    print(
        f"  swap: first new answer after {swap['to_first_new_answer_s']} s; "
        f"reload call {swap['reload_call_s']} s; "
        f"service's own figure {(swap['reload_answer'] or {}).get('seconds')}"
    )
    for name, w in report["windows"].items():
        print(
            f"  {name:6s} requests {w['requests']:5d}  failures {w['failures']}  "
            f"p50 {w.get('p50_ms')} ms  p99 {w.get('p99_ms')} ms  max {w.get('max_ms')} ms  "
            f"{w['throughput_rps']} req/s"
        )
    print(f"  checks: {json.dumps(report['checks'])}")
    print(f"  server peak RSS {report['server_peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
