"""Benchmark the constrained beam-search kernel against a per-beam trie search.

    .venv/bin/python scripts/bench_beam_search.py [--sizes 10000 1000000] [--batch 32]
        [--beam 20] [--repeats 5] [--out reports/bench_beam_search.json]

Catalogues: random unique item rows shaped like real ones (models.tokens.item_tokens on
random codes: L = 5 code levels + 1 dedup token, K = 256 codes per level, random CF/SEM
split per item). The model is a cheap fixed table of random log-probs indexed by (position,
hash of the last token), so the model's cost does not hide the index's.

Reports, per catalogue size: index build time, per-depth widths, the kernel's time per
decoding step (measured between one step_fn return and the next call: the selection work
of that depth) and per full search (median of repeats after a warm-up); and, at the
smallest size, the reference per-beam dict-trie search (tests/models/test_beam_search.py)
on the same batch, its results checked equal to the kernel's, and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.beam_search import constrained_beam_search  # noqa: E402
from models.prefix_index import build_prefix_index  # noqa: E402
from models.tokens import TokenLayout, item_tokens  # noqa: E402
from tests.models.test_beam_search import reference_beam_search  # noqa: E402

LEVELS, K = 5, 256


def synthetic_catalog(n: int, seed: int) -> tuple[np.ndarray, TokenLayout]:
    rng = np.random.default_rng(seed)
    layout = TokenLayout(codebook_size=K, n_levels=LEVELS, dedup_size=16)
    cf = rng.integers(0, K, (n, LEVELS))
    sem = rng.integers(0, K, (n, LEVELS))
    n_cf = rng.integers(0, LEVELS + 1, n)
    return item_tokens(cf, sem, n_cf, LEVELS, layout), layout


def table_model(depth: int, vocab: int, seed: int, rows: int = 64):
    """step_fn(tokens (B, W, 1 + t), state) -> (B, W, V) log-probs from a random table."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.log_softmax(torch.randn(depth, rows, vocab, generator=gen) * 3, dim=-1)

    def step_fn(tokens: torch.Tensor, state):
        t = tokens.shape[-1] - 1
        return table[t][(tokens[..., -1] * 7919) % rows], state

    return step_fn


def time_kernel(step_fn, dev, batch, beam, top_k, repeats):
    """(median full-search seconds, per-depth median step seconds)."""
    marks: list[tuple[str, float]] = []

    def timed_step(tokens, state):
        marks.append(("call", time.perf_counter()))
        out = step_fn(tokens, state)
        marks.append(("return", time.perf_counter()))
        return out

    full, per_step = [], []
    for rep in range(repeats + 1):  # the first run is the warm-up
        marks.clear()
        start = time.perf_counter()
        constrained_beam_search(timed_step, dev, batch, beam, top_k)
        end = time.perf_counter()
        returns = [t for kind, t in marks if kind == "return"]
        calls = [*(t for kind, t in marks if kind == "call"), end][1:]
        if rep:
            full.append(end - start)
            per_step.append([c - r for r, c in zip(returns, calls, strict=True)])
    steps = [statistics.median(col) for col in zip(*per_step, strict=True)]
    return statistics.median(full), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="reports/bench_beam_search.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {
        "config": vars(args) | {"levels": LEVELS, "codebook_size": K, "depth": LEVELS + 1},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "catalogs": [],
    }
    for n in args.sizes:
        rows, layout = synthetic_catalog(n, seed=n)
        ids = np.arange(n)
        start = time.perf_counter()
        index = build_prefix_index(rows, ids, layout.vocab_size)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        dev = index.to_tensors("cpu")
        tables_s = time.perf_counter() - start
        table_mb = sum(t.numel() * 8 * 2 for t in dev.tokens) / 2**20
        step_fn = table_model(index.depth, layout.vocab_size, seed=0)
        full_s, steps = time_kernel(step_fn, dev, args.batch, args.beam, args.top_k, args.repeats)
        entry = {
            "n_items": n,
            "vocab_size": layout.vocab_size,
            "max_branch": index.max_branch.tolist(),
            "n_nodes": index.n_nodes,
            "build_s": round(build_s, 3),
            "to_tensors_s": round(tables_s, 3),
            "table_mib": round(table_mb, 1),
            "kernel_full_search_ms": round(full_s * 1e3, 3),
            "kernel_step_ms_per_depth": [round(s * 1e3, 3) for s in steps],
            "kernel_step_ms_median": round(statistics.median(steps) * 1e3, 3),
        }
        print(json.dumps(entry))
        if n == min(args.sizes):
            kernel = constrained_beam_search(step_fn, dev, args.batch, args.beam, args.top_k)
            start = time.perf_counter()
            ref = reference_beam_search(step_fn, rows, ids, args.batch, args.beam, args.top_k)
            ref_s = time.perf_counter() - start
            same = all(
                kernel[0][b, : len(r)].tolist() == [x[0] for x in r] for b, r in enumerate(ref)
            )
            entry |= {
                "reference_full_search_ms": round(ref_s * 1e3, 1),
                "speedup_kernel_vs_reference": round(ref_s / full_s, 1),
                "reference_results_equal": same,
            }
            print(json.dumps({k: entry[k] for k in list(entry)[-3:]}))
        results["catalogs"].append(entry)
    out = REPO_ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
