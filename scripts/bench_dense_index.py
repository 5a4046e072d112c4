"""Benchmark the dense head's approximate index (models/dense_index.py): recall of its
dense candidates against exact scoring, per-request latency exact vs index, build time
and memory.

On random bundles of the shipped shape (scripts/make_large_bundle.py, built into
--bundle-root when it holds none of that size; random weights, so the item vectors are
the served path's output on random text: C = 64):

  - recall@10 / @50: the decoder's dense candidates on the index path
    (`models.decoding.index_dense_candidates`, 50 of them, nothing excluded) against the
    exact top 10 / 50 of state . v over rows 1..N, per --nprobe, for three kinds of user
    state, --states of each: `served` (the generator's user state of a random history of
    --history items: what a request scores with), `sum` (the sum of the history's item
    vectors: a state in the items' own span) and `random` (Gaussian, the served states'
    norm). Random vectors are the hard case for an inverted-list index: nothing clusters,
    so a row's best centroid says little about it, and recall at a given nprobe is lower
    than on trained item vectors, which do cluster;
  - latency: `recommend_top_k` (k = 10, the history excluded, w = 1: what the shipped
    bundles serve, the dense head alone) with the exact scan and with the index, batch 1
    and 32, in rounds that alternate which runs first (the machine is shared: only the
    ratio within one run means anything);
  - the index's build time (k-means + assignment, one thread) and memory.

--codec picks how the lists hold the vectors: pq4fs (the default, as served: half a byte
per dimension, PQ fast scan, 512 candidates handed to the decoder), sq8 (one byte, 256
candidates), flat (float32); several (--codec sq8,pq4fs) are measured on the same bundle,
states and requests, their latency rounds taking turns. --nlist and --candidates (lists,
0 = the served automatic choice) multiply the indexes measured the same way.

With --bundle PATH (a bundle root or version directory) the same measures run on that
bundle instead: a TRAINED one (`flexcode train pipeline`) shows the recall on item vectors
that cluster by taste, which random bundles cannot.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_dense_index.py --sizes 100000,1000000
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_dense_index.py --bundle bundles-syn100k
Writes reports/bench_dense_index.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from models.decoding import Catalogue, recommend_top_k  # noqa: E402
from models.dense_candidates import index_dense_candidates  # noqa: E402
from models.dense_index import (  # noqa: E402
    DENSE_INDEX_CODECS,
    DenseIndexConfig,
    build_dense_index,
)
from scripts.bench_filters import bundle_for  # noqa: E402

N_CANDIDATES = 50  # the shipped bundles' dense_candidates


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def exact_top(states: torch.Tensor, vectors: torch.Tensor, k: int) -> torch.Tensor:
    """(S, C) states -> (S, k) the exact best rows of 1..N (chunks bound the memory)."""
    out = []
    for lo in range(0, len(states), 32):
        logits = states[lo : lo + 32] @ vectors[1:].T
        out.append(logits.topk(k, dim=1).indices + 1)
    return torch.cat(out)


def make_states(generator, vectors: torch.Tensor, n: int, history: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    hist = torch.as_tensor(rng.integers(1, len(vectors), (n, history)), dtype=torch.int64)
    with torch.no_grad():
        served = torch.cat(
            [
                generator.user_state(vectors[hist[lo : lo + 64]], hist[lo : lo + 64] != 0)
                for lo in range(0, n, 64)
            ]
        ).float()
    summed = vectors[hist].sum(dim=1)
    noise = torch.as_tensor(rng.standard_normal(served.shape).astype(np.float32))
    noise = noise / noise.norm(dim=1, keepdim=True) * served.norm(dim=1, keepdim=True)
    return {"served": served, "sum": summed, "random": noise}


def recall(got: torch.Tensor, want: torch.Tensor, k: int) -> float:
    hits = [len(set(g[:k].tolist()) & set(w[:k].tolist())) for g, w in zip(got, want, strict=True)]
    return float(np.mean(hits) / k)


def index_configs(args: argparse.Namespace) -> list[tuple[str, DenseIndexConfig]]:
    """(name, config) of every index measured: each codec x --nlist x --candidates (0 =
    the automatic choice); named by the codec alone when only the codec varies."""
    out = []
    for codec in args.codec:
        for nlist in args.nlist:
            for candidates in args.candidates:
                name = codec
                if len(args.nlist) > 1 or nlist:
                    name += f"-L{nlist or 'auto'}"
                if len(args.candidates) > 1 or candidates:
                    name += f"-M{candidates or 'auto'}"
                config = DenseIndexConfig(
                    mode="ann", codec=codec, nlist=nlist, candidates=candidates
                )
                out.append((name, config))
    return out


def time_decoding(args, generator, catalogues: dict[str, Catalogue], decoding) -> dict:
    """Median latency of `recommend_top_k` per catalogue ("exact" and one per codec), the
    catalogues taking turns in an order that rotates every round."""
    rng = np.random.default_rng(1)
    n = catalogues["exact"].n_rows - 1
    config = replace(decoding, dense_weight=1.0)
    names = list(catalogues)
    out = {}
    for batch in args.batch:
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.warmup + args.rounds):
            hist = torch.as_tensor(rng.integers(1, n + 1, (batch, args.history)))
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                recommend_top_k(generator, hist, catalogues[name], args.k, config, exclude=hist)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - started)
        med = {name: float(np.median(t)) for name, t in times.items()}
        row = {}
        for name, t in times.items():
            row[f"{name}_ms"] = round(1000 * med[name], 2)
            row[f"{name}_p90_ms"] = round(1000 * float(np.percentile(t, 90)), 2)
            if name != "exact":
                row[f"{name}_speedup"] = round(med["exact"] / med[name], 2)
        out[str(batch)] = row
    return out


def run_size(args: argparse.Namespace, n_items: int | None) -> dict:
    """The measures on a random bundle of n_items, or on args.bundle when n_items is None."""
    path = args.bundle if n_items is None else bundle_for(args.bundle_root, n_items)
    bundle = load_bundle(path, device="cpu")
    n_items = bundle.n_items
    generator = bundle.generator.eval()
    vectors = torch.as_tensor(bundle.item_vectors, dtype=torch.float32)
    exact = Catalogue(
        item_vectors=vectors,
        item_tokens=torch.as_tensor(bundle.item_tokens, dtype=torch.int64),
        index=bundle.prefix_index.to_tensors(),
    )
    result: dict = {"items": n_items, "dim": int(vectors.shape[1]), "codecs": {}}
    indexes, catalogues = {}, {"exact": exact}
    for name, config in index_configs(args):
        before = rss_mb()
        index = build_dense_index(vectors, config)
        grown = rss_mb() - before
        indexes[name], catalogues[name] = index, replace(exact, dense_index=index)
        result["codecs"][name] = {
            "codec": config.codec,
            "nlist": index.nlist,
            "build_s": round(index.build_s, 2),
            "index_mb": round(index.nbytes / 2**20, 1),
            "rss_growth_mb": round(grown, 1),
            "candidates_asked": index.candidates,
            "recall": {},
        }
        print(
            f"N={n_items}: IVF ({name}) {index.nlist} lists built in {index.build_s:.1f} s, "
            f"{index.nbytes / 2**20:.0f} MB (RSS +{grown:.0f} MB), "
            f"{index.candidates} candidates asked",
            flush=True,
        )
    states = make_states(generator, vectors, args.states, args.history, seed=0)
    wants = {kind: exact_top(s, vectors, N_CANDIDATES) for kind, s in states.items()}
    result["latency"] = {}
    for nprobe in args.nprobe:
        for name, index in indexes.items():
            index.set_nprobe(nprobe)
            row: dict = {}
            for kind, s in states.items():
                found = index_dense_candidates(s, catalogues[name], None, None, N_CANDIDATES)
                row[kind] = {
                    "recall@10": round(recall(found.rows, wants[kind], 10), 3),
                    "recall@50": round(recall(found.rows, wants[kind], 50), 3),
                    "exact_fallback": round(float(found.exact.float().mean()), 3),
                }
            result["codecs"][name]["recall"][str(nprobe)] = row
            line = "  ".join(
                f"{kind} r@10 {r['recall@10']:.3f} r@50 {r['recall@50']:.3f}"
                for kind, r in row.items()
            )
            print(f"  {name:16s} nprobe {nprobe:4d}: {line}", flush=True)
        if nprobe in args.time_nprobe:
            lat = time_decoding(args, generator, catalogues, bundle.decoding)
            result["latency"][str(nprobe)] = lat
            for batch, t in lat.items():
                parts = ", ".join(
                    f"{c} {t[f'{c}_ms']:.2f} ms (x{t[f'{c}_speedup']:.1f})" for c in indexes
                )
                print(f"    batch {batch:>2s}: exact {t['exact_ms']:.2f} ms, {parts}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="catalogue sizes N")
    parser.add_argument("--nprobe", default="16,32,64,128", help="lists probed, to sweep")
    parser.add_argument(
        "--time-nprobe", default="16,64", help="the nprobe values whose latency is measured"
    )
    parser.add_argument("--states", type=int, default=300, help="user states of each kind")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--history", type=int, default=20, help="history length")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument(
        "--codec",
        default="pq4fs",
        help=f"how the lists hold vectors, comma-separated, of {', '.join(DENSE_INDEX_CODECS)}",
    )
    parser.add_argument(
        "--nlist", default="0", help="inverted lists, comma-separated (0 = automatic)"
    )
    parser.add_argument(
        "--candidates",
        default="0",
        help="rows asked of the index per request, comma-separated (0 = the codec's default)",
    )
    parser.add_argument("--bundle-root", type=Path, default=ROOT / "bundles" / "bench")
    parser.add_argument(
        "--bundle", type=Path, default=None, help="measure this (trained) bundle, not --sizes"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_dense_index.json")
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(",")]
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    args.time_nprobe = {int(p) for p in args.time_nprobe.split(",")}
    args.codec = args.codec.split(",")
    args.nlist = [int(n) for n in args.nlist.split(",")]
    args.candidates = [int(m) for m in args.candidates.split(",")]
    unknown = set(args.codec) - set(DENSE_INDEX_CODECS)
    if unknown:
        parser.error(f"unknown codec(s) {sorted(unknown)}; choose from {DENSE_INDEX_CODECS}")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = [None] if args.bundle is not None else [int(n) for n in args.sizes.split(",")]
    results = [run_size(args, n) for n in sizes]
    report = {
        "command": " ".join(sys.argv),
        "level": "models.decoding (index path vs exact scan), in process",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "threads": args.threads,
        },
        "candidates": N_CANDIDATES,
        "states_per_kind": args.states,
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
