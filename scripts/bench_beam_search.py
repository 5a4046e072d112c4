"""Benchmark the constrained beam-search kernel against a per-beam trie search.

    .venv/bin/python scripts/bench_beam_search.py [--sizes 10000 100000 1000000]
        [--batch 32] [--beam 20] [--top-k 10] [--repeats 20] [--ref-repeats 5]
        [--overlay 1000] [--threads 1] [--levels 3] [--codebook-size 512]
        [--out reports/bench_beam_search.json]

Catalogues: random unique item rows in the shipped code shape by default
(models.tokens.item_tokens on random codes: L = 3 code levels + 1 dedup token, K = 512
codes per level, a random CF/SEM split per item, the dominant codebook first; `--levels 5
--codebook-size 256` gives the shape measured before issue 11 changed it). The model is a
cheap fixed table of random log-probs indexed by (position, hash of the last token), so the
model's cost does not hide the index's; every step_fn call is timed, so model time is
reported apart from the search's own time.

Reports, per catalogue size: index build time, per-depth widths, the kernel's time per
decoding step (measured between one step_fn return and the next call: the selection work
of that depth), per full search, and the model's share of it (medians over `repeats`
rounds after a warm-up; the rounds visit every size in turn, so load on a shared machine
hits all sizes alike). The largest catalogue is also searched as a base index plus an
overlay of its last `overlay` items (OverlayIndex, the serving path), and once more after
that overlay is merged into the base (what the service does in the background), both
checked to give the same results as the whole index. At the smallest size, the reference
per-beam dict-trie search (models/reference_beam_search.py, the tests' oracle) runs on the
same batch and model (its trie built beforehand, outside the timing, as the kernel's index is): its
results (items, scores, tokens) are checked equal to the kernel's, and each reference run
is paired with a kernel run right before it; the speed-ups are medians of the paired
ratios, for the full search (model calls included: the reference calls the model once per
beam, the kernel once per depth) and for the search alone (model time subtracted on both
sides).
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
from models.device_index import narrow_int  # noqa: E402
from models.overlay_index import OverlayIndex  # noqa: E402
from models.prefix_index import build_prefix_index  # noqa: E402
from models.reference_beam_search import reference_beam_search, reference_trie  # noqa: E402
from models.tokens import TokenLayout, item_tokens  # noqa: E402

# The shipped code shape at 10k+ items: K = suggest_codebook_size(N) (512, its clamp) and
# the shipped variant's budget L = 3 (training/stages/generator/variants.py).
SHIPPED_LEVELS, SHIPPED_K = 3, 512


def synthetic_catalog(n: int, seed: int, levels: int, k: int) -> tuple[np.ndarray, TokenLayout]:
    rng = np.random.default_rng(seed)
    layout = TokenLayout(codebook_size=k, n_levels=levels, dedup_size=16)
    cf = rng.integers(0, k, (n, levels))
    sem = rng.integers(0, k, (n, levels))
    n_cf = rng.integers(0, levels + 1, n)
    return item_tokens(cf, sem, n_cf, levels, layout), layout


def table_model(depth: int, vocab: int, seed: int, rows: int = 64):
    """step_fn(tokens (B, W, 1 + t), state) -> (B, W, V) log-probs from a random table."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.log_softmax(torch.randn(depth, rows, vocab, generator=gen) * 3, dim=-1)

    def step_fn(tokens: torch.Tensor, state):
        t = tokens.shape[-1] - 1
        key = (tokens[..., -1] * 7919) % rows
        return table[t].index_select(0, key.reshape(-1)).view(*key.shape, vocab), state

    return step_fn


class TimedModel:
    """Wraps a step_fn; records when each call starts and returns (perf_counter)."""

    def __init__(self, step_fn) -> None:
        self.step_fn = step_fn
        self.calls: list[float] = []
        self.returns: list[float] = []

    def reset(self) -> None:
        self.calls.clear()
        self.returns.clear()

    def __call__(self, tokens, state):
        self.calls.append(time.perf_counter())
        out = self.step_fn(tokens, state)
        self.returns.append(time.perf_counter())
        return out

    @property
    def model_s(self) -> float:
        return sum(r - c for c, r in zip(self.calls, self.returns, strict=True))


def run_kernel(model: TimedModel, dev, args) -> dict:
    """One timed kernel search: full and model seconds, per-depth step seconds."""
    model.reset()
    start = time.perf_counter()
    out = constrained_beam_search(model, dev, args.batch, args.beam, args.top_k)
    end = time.perf_counter()
    # The step of depth t: from step_fn's t-th return to its next call (or the end).
    steps = [c - r for r, c in zip(model.returns, [*model.calls[1:], end], strict=True)]
    return {"full": end - start, "model": model.model_s, "steps": steps, "out": out}


def same_results(kernel, ref, atol: float = 1e-5) -> bool:
    """Same items, order and tokens; scores within atol (both renormalise every step over
    the valid children, with logsumexps that may round differently)."""
    items, scores, tokens = kernel
    for b, r in enumerate(ref):
        n = len(r)
        if (
            items[b, :n].tolist() != [x[0] for x in r]
            or not np.allclose(scores[b, :n].tolist(), [float(x[1]) for x in r], atol=atol)
            or [tuple(x) for x in tokens[b, :n].tolist()] != [x[2] for x in r]
            or (items[b, n:] != -1).any()
        ):
            return False
    return True


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    # sizes ascending: the reference runs at the first, the overlay uses the last
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ref-repeats", type=int, default=5)
    parser.add_argument("--overlay", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--levels", type=int, default=SHIPPED_LEVELS, help="code tokens L")
    parser.add_argument("--codebook-size", type=int, default=SHIPPED_K, help="codes per level K")
    parser.add_argument("--out", default="reports/bench_beam_search.json")
    args = parser.parse_args()
    args.sizes = sorted(args.sizes)
    torch.set_num_threads(args.threads)

    results = {
        "config": vars(args) | {"depth": args.levels + 1},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "catalogs": [],
    }
    cats = []
    for n in args.sizes:
        rows, layout = synthetic_catalog(n, n, args.levels, args.codebook_size)
        ids = np.arange(n)
        start = time.perf_counter()
        index = build_prefix_index(rows, ids, layout.vocab_size)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        dev = index.to_tensors("cpu")
        tables_s = time.perf_counter() - start
        # Memory per item of what decoding holds: the device index and the token table
        # (int16 tokens, as `models.item_table.ItemTable` stores them), beside the host
        # CSR the bundle ships (`PrefixIndex`, int64).
        token_bytes = narrow_int(rows, layout.vocab_size).nbytes
        csr_bytes = sum(a.nbytes for a in (index.row_ptr, index.child_token, index.child_node))
        model = TimedModel(table_model(index.depth, layout.vocab_size, seed=0))
        entry = {
            "n_items": n,
            "vocab_size": layout.vocab_size,
            "max_branch": index.max_branch.tolist(),
            "n_nodes": index.n_nodes,
            "build_s": round(build_s, 3),
            "to_tensors_s": round(tables_s, 3),
            "device_index_bytes_per_item": round(dev.nbytes / n, 1),
            "token_table_bytes_per_item": round(token_bytes / n, 1),
            "index_and_tokens_bytes_per_item": round((dev.nbytes + token_bytes) / n, 1),
            "host_csr_bytes_per_item": round(csr_bytes / n, 1),
        }
        cats.append({"entry": entry, "rows": rows, "ids": ids, "dev": dev, "model": model})
    if args.overlay:
        # The largest catalogue again, its last `overlay` items added at serving time: the
        # (base, overlay) pair must give the same results as the whole index.
        big, m = cats[-1], args.overlay
        n = big["entry"]["n_items"]
        vocab = big["entry"]["vocab_size"]
        ov = OverlayIndex(build_prefix_index(big["rows"][: n - m], big["ids"][: n - m], vocab))
        start = time.perf_counter()
        ov.add(big["rows"][n - m :], big["ids"][n - m :])
        add_s = time.perf_counter() - start
        entry = {"n_items": n, "overlay_items": m, "overlay_add_s": round(add_s, 3)}
        cats.append(big | {"entry": entry, "dev": ov.to_tensors("cpu"), "same_as": big})
        # ... and after the background merge (models.item_table.MergeJob: the merged index
        # and its tables, built off the serving thread), which the service runs once
        # items are added: the decoder is back to one trie.
        start = time.perf_counter()
        merged = ov.merged().to_tensors("cpu")
        entry = {
            "n_items": n,
            "merged_overlay_items": m,
            "merge_s": round(time.perf_counter() - start, 3),
        }
        cats.append(big | {"entry": entry, "dev": merged, "same_as": big})

    # Kernel: round-robin over the sizes, the first round is the warm-up.
    runs: list[list[dict]] = [[] for _ in cats]
    for rep in range(args.repeats + 1):
        for i, cat in enumerate(cats):
            run = run_kernel(cat["model"], cat["dev"], args)
            if "same_as" in cat and not rep:
                want = run_kernel(cat["model"], cat["same_as"]["dev"], args)["out"]
                same = all(torch.equal(a, b) for a, b in zip(run["out"], want, strict=True))
                cat["entry"]["results_equal_whole_index"] = same
            if rep:
                runs[i].append(run)
    for cat, cat_runs in zip(cats, runs, strict=True):
        full = statistics.median(r["full"] for r in cat_runs)
        model = statistics.median(r["model"] for r in cat_runs)
        kernel = statistics.median(r["full"] - r["model"] for r in cat_runs)
        per_run = [r["steps"] for r in cat_runs]
        steps = [statistics.median(col) for col in zip(*per_run, strict=True)]
        cat["entry"] |= {
            "full_search_ms": ms(full),
            "model_ms": ms(model),
            "kernel_ms": ms(kernel),
            "step_ms_mean": ms(full / len(steps)),
            "kernel_step_ms_per_depth": [ms(s) for s in steps],
        }
        print(json.dumps(cat["entry"]))

    # Reference at the smallest size, each run paired with a kernel run just before it.
    cat = cats[0]
    trie = reference_trie(cat["rows"], cat["ids"])
    ref_model = TimedModel(cat["model"].step_fn)
    pairs, equal = [], True
    for rep in range(args.ref_repeats + 1):
        kernel = run_kernel(cat["model"], cat["dev"], args)
        ref_model.reset()
        start = time.perf_counter()
        ref = reference_beam_search(
            ref_model, cat["rows"], cat["ids"], args.batch, args.beam, args.top_k, trie=trie
        )
        ref_s = time.perf_counter() - start
        equal = equal and same_results(kernel["out"], ref)
        if rep:
            pairs.append((kernel, ref_s, ref_model.model_s))
    ref_full = statistics.median(p[1] for p in pairs)
    ref_model_s = statistics.median(p[2] for p in pairs)
    cat["entry"] |= {
        "reference_full_search_ms": ms(ref_full),
        "reference_model_ms": ms(ref_model_s),
        "reference_search_ms": ms(statistics.median(p[1] - p[2] for p in pairs)),
        "reference_model_calls": len(ref_model.calls),
        "reference_results_equal": equal,
        "speedup_full_search": round(statistics.median(p[1] / p[0]["full"] for p in pairs), 1),
        "speedup_search_only": round(
            statistics.median((p[1] - p[2]) / (p[0]["full"] - p[0]["model"]) for p in pairs),
            1,
        ),
    }
    print(json.dumps({k: v for k, v in cat["entry"].items() if k.startswith(("ref", "speed"))}))
    results["catalogs"] = [c["entry"] for c in cats]
    out = REPO_ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
