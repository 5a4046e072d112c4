"""The decoder's row gathers: PyTorch advanced indexing (`table[idx]`) against
`models.take.take_rows` (index_select), on the tables a 1M-item request reads.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_gather.py [--rows 1000000] \
        [--out reports/bench_gather.json]

Tables of --rows rows, as the service holds them: item vectors (C = 64 float32, 256 MB at
1M rows), served tokens (4 int16), liveness flags (bool). Index tensors of the shapes a
request uses: (1, 522) and (32, 522) candidate rows (the index path's pool at batch 1
and 32), (1, 10) and (32, 50) history rows. Rows are drawn at random each round (the
pool is scattered over the table, so every gather misses the cache as a request's does);
both ways gather the same rows in a round, taking turns first. One torch thread.
Prints and writes the median milliseconds per gather and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.take import take_rows  # noqa: E402

SHAPES = ((1, 522), (32, 522), (1, 10), (32, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_gather.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tables = {
        "item_vectors": torch.as_tensor(rng.standard_normal((args.rows + 1, 64), dtype=np.float32)),
        "item_tokens": torch.as_tensor(rng.integers(0, 3000, (args.rows + 1, 4)).astype(np.int16)),
        "live": torch.as_tensor(rng.random(args.rows + 1) < 0.99),
    }
    ways = {"advanced_indexing": lambda t, i: t[i], "take_rows": take_rows}
    results = []
    for name, table in tables.items():
        for shape in SHAPES:
            times: dict[str, list[float]] = {way: [] for way in ways}
            for round_ in range(args.rounds):
                idx = torch.as_tensor(rng.integers(1, args.rows + 1, shape))
                order = list(ways) if round_ % 2 else list(ways)[::-1]
                for way in order:
                    started = time.perf_counter()
                    ways[way](table, idx)
                    times[way].append(time.perf_counter() - started)
            med = {way: 1000 * float(np.median(t[10:])) for way, t in times.items()}
            row = {
                "table": name,
                "index_shape": list(shape),
                **{f"{way}_ms": round(ms, 4) for way, ms in med.items()},
                "ratio": round(med["advanced_indexing"] / med["take_rows"], 1),
            }
            results.append(row)
            print(
                f"{name:12s} {shape!s:10s} advanced {row['advanced_indexing_ms']:.4f} ms, "
                f"take_rows {row['take_rows_ms']:.4f} ms (x{row['ratio']})",
                flush=True,
            )
    report = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "rows": args.rows,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
