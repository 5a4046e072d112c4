"""Benchmark business-rule filters: recommendation latency filtered vs unfiltered, as a
ratio measured in one run, at RECOMMENDER level (`service.recommender.Recommender.
recommend_batch`, what the engine's inference thread runs per micro-batch: the filter's
allowed-row mask, the user state, the dense head, the constrained beam search with its
prefix pruning, rescoring and top k). HTTP, JSON and the micro-batcher's wait are left
out: they cost the same filtered or not.

Modes, each on the same random histories:
  - none: no filter;
  - allow100: include_items of 100 random items;
  - category: one category of the random catalogue (scripts/make_large_bundle.py gives
    every item one of 20: about 5% of the catalogue);
  - deny100: exclude_items of 100 random items.
Each at the dense weights of --dense-weights: w = 1 (what the shipped bundles serve, no
beam search) and w = 0.5 (the beam runs, with its prefix pruning). Rounds interleave the
modes, in an order that rotates from round to round (the machine is shared and noisy:
only ratios within one run mean anything). The bundle is a random one of the shipped
shape (make_large_bundle.py), built into --bundle-root when it holds none of that size.

    .venv/bin/python scripts/bench_filters.py                          # 10k items
    .venv/bin/python scripts/bench_filters.py --sizes 10000,100000 --batch 1,32
Writes reports/bench_filters.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from models.item_attributes import RowFilter  # noqa: E402
from scripts.make_large_bundle import make_large_bundle  # noqa: E402
from service.recommender import Recommender, RecQuery  # noqa: E402

MODES = ("none", "allow100", "category", "deny100")


def bundle_for(root: Path, n_items: int) -> Path:
    """root/large-<N>: an existing bundle of N items, or a new one."""
    target = root / f"large-{n_items}"
    if (target / "LATEST").is_file():
        return target
    started = time.perf_counter()
    path = make_large_bundle(target, n_items)
    print(f"built {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return target


def queries_for(
    rec: Recommender, mode: str, histories: list[np.ndarray], k: int, rng: np.random.Generator
) -> list[RecQuery]:
    n = rec.n_bundle
    out = []
    for history in histories:
        rule = None
        if mode == "allow100":
            rule = RowFilter(include_rows=rng.choice(np.arange(1, n + 1), 100, replace=False))
        elif mode == "category":
            rule = RowFilter(categories=(f"cat-{rng.integers(0, 20):02d}",))
        elif mode == "deny100":
            rule = RowFilter(exclude_rows=rng.choice(np.arange(1, n + 1), 100, replace=False))
        width = rec.decoding.beam_width
        out.append(RecQuery(history, np.unique(history), k, width, rule))
    return out


def run_size(args: argparse.Namespace, n_items: int) -> list[dict]:
    bundle = load_bundle(bundle_for(args.bundle_root, n_items), device="cpu")
    rec = Recommender(bundle, bundle.generator.eval(), torch.device("cpu"), "torch")
    sizes = np.bincount(bundle.category_ids, minlength=len(bundle.category_names))
    runs = []
    # w = 1 (the shipped bundles' choice) runs no beam search; w < 1 adds the generative
    # head, and with it the beam's prefix pruning.
    for weight in args.dense_weights:
        rec.decoding = replace(rec.decoding, dense_weight=weight)
        runs.append(run_weight(args, rec, n_items, float(sizes.mean() / n_items)))
    return runs


def run_weight(args: argparse.Namespace, rec: Recommender, n_items: int, share: float) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {
        "items": n_items,
        "category_share": round(share, 4),
        "beam_width": rec.decoding.beam_width,
        "dense_weight": rec.decoding.dense_weight,
        "batches": {},
    }
    for batch in args.batch:
        times: dict[str, list[float]] = {m: [] for m in MODES}
        counts: dict[str, list[int]] = {m: [] for m in MODES}
        for round_ in range(args.warmup + args.rounds):
            histories = [
                rng.integers(1, n_items + 1, args.history).astype(np.int64) for _ in range(batch)
            ]
            # The order rotates each round, so no mode always runs first: with a fixed
            # order the unfiltered mode came out slower than every filtered one at 1M
            # items, w = 1, batch 1 (x0.74-0.87), which no filter can make faster.
            shift = round_ % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                queries = queries_for(rec, mode, histories, args.k, rng)
                started = time.perf_counter()
                results = rec.recommend_batch(queries)
                seconds = time.perf_counter() - started
                if round_ >= args.warmup:
                    times[mode].append(seconds)
                    counts[mode].extend(len(r.item_ids) for r in results)
        base = float(np.median(times["none"]))
        summary = {}
        for mode in MODES:
            med = float(np.median(times[mode]))
            summary[mode] = {
                "median_ms": round(1000 * med, 2),
                "p90_ms": round(1000 * float(np.percentile(times[mode], 90)), 2),
                "ratio_to_none": round(med / base, 3),
                "min_results": int(min(counts[mode])),  # k whenever k items pass
            }
        out["batches"][str(batch)] = summary
        w = rec.decoding.dense_weight
        print(f"N={n_items} w={w} batch={batch} k={args.k}", flush=True)
        for mode, row in summary.items():
            print(
                f"  {mode:9s} median {row['median_ms']:8.2f} ms  p90 {row['p90_ms']:8.2f} ms  "
                f"x{row['ratio_to_none']:.3f}  min results {row['min_results']}",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000", help="comma-separated catalogue sizes")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--history", type=int, default=20, help="history length")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--dense-weights", default="1.0,0.5", help="served dense weights w to measure at"
    )
    parser.add_argument("--bundle-root", type=Path, default=ROOT / "bundles" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_filters.json")
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(",")]
    args.dense_weights = [float(w) for w in args.dense_weights.split(",")]
    torch.set_num_threads(args.threads)
    results = [run for n in args.sizes.split(",") for run in run_size(args, int(n))]
    report = {
        "command": " ".join(sys.argv),
        "level": "Recommender.recommend_batch (in process; no HTTP)",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "k": args.k,
        "history": args.history,
        "rounds": args.rounds,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
