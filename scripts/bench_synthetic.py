"""Benchmark the synthetic generator: wall time and peak memory at a given scale.

    python scripts/bench_synthetic.py --items 1000000 --interactions 10000000 \
        [--preprocess] [--out reports/synthetic_scale.json]

Runs `generate_synthetic` in-process, prints wall time and peak RSS (ru_maxrss, also as
the increase over the baseline taken after imports) and writes those figures, the config,
a few statistics of the output and machine info to a JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from training.data.synthetic import (  # noqa: E402
    GENERATOR_VERSION,
    SyntheticConfig,
    generate_synthetic,
)


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/synthetic_scale.json"))
    parser.add_argument(
        "--preprocess",
        action="store_true",
        help="also time the 5-core filter, chronological sort and split on the output",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = SyntheticConfig(n_items=args.items, n_interactions=args.interactions, seed=args.seed)

    baseline = _peak_rss_mib()
    started = time.perf_counter()
    dataset = generate_synthetic(config)
    wall = time.perf_counter() - started
    peak = _peak_rss_mib()

    preprocess_report = None
    if args.preprocess:
        started = time.perf_counter()
        processed = preprocess(dataset, PreprocessConfig())
        test_users = len(processed.test().users)
        preprocess_report = {
            "wall_seconds": round(time.perf_counter() - started, 3),
            "peak_rss_mib_after": round(_peak_rss_mib(), 1),
            **processed.summary(),
            "test_users": test_users,
        }
        print(f"preprocess: {preprocess_report}")

    counts = np.bincount(dataset.interactions["item_id"].to_numpy(), minlength=config.n_items)
    ranked = np.sort(counts)[::-1]
    report = {
        "wall_seconds": round(wall, 3),
        "peak_rss_mib": round(peak, 1),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_increase_mib": round(peak - baseline, 1),
        "generator_version": GENERATOR_VERSION,
        "config": dataclasses.asdict(config),
        "resolved": {
            "n_users": config.resolved_n_users(),
            "n_topics": config.resolved_n_topics(),
        },
        "output": {
            "interactions": len(dataset.interactions),
            "items": len(dataset.items),
            "items_consumed": int((counts > 0).sum()),
            "items_with_5_or_more": int((counts >= 5).sum()),
            "top_20pct_item_share": round(
                float(ranked[: max(1, config.n_items // 5)].sum() / ranked.sum()), 4
            ),
            "interactions_memory_mib": round(
                dataset.interactions.memory_usage(deep=True).sum() / 2**20, 1
            ),
            "items_memory_mib": round(dataset.items.memory_usage(deep=True).sum() / 2**20, 1),
        },
        "preprocess": preprocess_report,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": __import__("pandas").__version__,
        },
    }
    print(
        f"synthetic {config.n_items:,} items / {config.n_interactions:,} interactions: "
        f"{wall:.1f} s wall, peak RSS {peak:.0f} MiB "
        f"(+{peak - baseline:.0f} MiB over {baseline:.0f} MiB after imports)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
