"""Texts/s of the text encoder (stage B, POST /items) per backend and batch size.

    OMP_NUM_THREADS=1 python scripts/bench_text_encoder.py [--datasets ml-100k,synthetic]
        [--texts 1000] [--batch-sizes 16,32,64,128,256] [--backends torch,onnx]
        [--repeats 3] [--threads 1] [--out reports/bench_text_encoder.json]

Real item texts: the first --texts of `item_texts` of ML-100K and of a synthetic catalogue
(--synthetic-items, the CLI's generator), both as stage B builds them. Backends run
interleaved (every repeat times each batch size for each backend in turn), so a shared,
busy machine slows them alike: compare the ratios within one run. Each figure is the
median of --repeats. Also reported: the load time (the onnx one includes the export),
the share of time in the tokenizer, the word-piece lengths, and the max abs difference
between the backends' vectors (the model id is shared only while it is below 1e-5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def dataset_texts(name: str, n: int, synthetic_items: int) -> list[str]:
    from training.data import load_dataset
    from training.data.synthetic import SyntheticConfig
    from training.stages.semantic_embeddings import item_texts

    synthetic = SyntheticConfig(n_items=synthetic_items, n_interactions=20 * synthetic_items)
    items = load_dataset(name, synthetic=synthetic, cache_dir=None).items
    return item_texts(items)[1 : n + 1]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,synthetic")
    parser.add_argument("--texts", type=int, default=1000, help="texts per dataset")
    parser.add_argument("--synthetic-items", type=int, default=10_000)
    parser.add_argument("--batch-sizes", default="16,32,64,128,256")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports/bench_text_encoder.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from models.text_encoder import TextEncoder, TextEncoderConfig

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = args.backends.split(",")
    encoders, load_s = {}, {}
    for backend in backends:
        config = TextEncoderConfig(backend=backend, threads=args.threads)
        load_s[backend], encoders[backend] = timed(lambda c=config: TextEncoder(c))
        print(f"load {backend}: {load_s[backend]:.2f} s", flush=True)

    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "load_seconds": load_s,
        "datasets": {},
    }
    for name in args.datasets.split(","):
        texts = dataset_texts(name, args.texts, args.synthetic_items)
        entry: dict = {"texts": len(texts)}
        if "onnx" in backends:
            onnx = encoders["onnx"]._onnx
            tok_s, ids = timed(lambda o=onnx, t=texts: o.token_ids(t))
            lengths = np.array([len(row) for row in ids])
            entry["word_pieces"] = {
                "mean": round(float(lengths.mean()), 1),
                "max": int(lengths.max()),
            }
            entry["tokenizer_texts_per_s"] = round(len(texts) / tok_s)
        times: dict[tuple[str, int], list[float]] = {}
        vectors = {}
        for _ in range(args.repeats):
            for bs in batch_sizes:
                for backend in backends:
                    enc = encoders[backend]
                    enc.config = dataclasses.replace(enc.config, batch_size=bs)
                    seconds, vectors[backend] = timed(lambda e=enc, t=texts: e.encode(t))
                    times.setdefault((backend, bs), []).append(seconds)
        rates = {
            backend: {bs: round(len(texts) / statistics.median(times[backend, bs]), 1)
                      for bs in batch_sizes}
            for backend in backends
        }  # fmt: skip
        entry["texts_per_s"] = rates
        entry["best"] = {b: max(r, key=r.get) for b, r in rates.items()}
        if {"torch", "onnx"} <= set(backends):
            entry["onnx_over_torch"] = {
                bs: round(rates["onnx"][bs] / rates["torch"][bs], 2) for bs in batch_sizes
            }
            best = {b: rates[b][entry["best"][b]] for b in ("torch", "onnx")}
            entry["best_onnx_over_best_torch"] = round(best["onnx"] / best["torch"], 2)
            entry["max_abs_diff"] = float(np.abs(vectors["onnx"] - vectors["torch"]).max())
            if "onnx" in backends:
                # Tokenizer share of the onnx backend's time at its best batch size.
                tok_share = (len(texts) / entry["tokenizer_texts_per_s"]) / (
                    len(texts) / best["onnx"]
                )
                entry["tokenizer_share_of_onnx"] = round(tok_share, 3)
        report["datasets"][name] = entry
        print(f"\n{name}: {len(texts)} texts, {entry.get('word_pieces')} word pieces")
        print("batch  " + "  ".join(f"{b:>10}" for b in backends) + "  onnx/torch")
        for bs in batch_sizes:
            row = "  ".join(f"{rates[b][bs]:>8.1f}/s" for b in backends)
            ratio = entry.get("onnx_over_torch", {}).get(bs, "")
            print(f"{bs:>5}  {row}  {ratio}")
        for key in ("best", "best_onnx_over_best_torch", "max_abs_diff",
                    "tokenizer_share_of_onnx"):  # fmt: skip
            if key in entry:
                print(f"{key}: {entry[key]}")
        sys.stdout.flush()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
