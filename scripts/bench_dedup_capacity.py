"""Dedup capacity: how many items with (nearly) the same text the catalogue takes, and what
each way of telling them apart costs.

    .venv/bin/python scripts/bench_dedup_capacity.py                  # 10k bundle, 10k new
    .venv/bin/python scripts/bench_dedup_capacity.py --new-items 50000 --redis redis://127.0.0.1:6379/0

The bundle has the shipped shape (scripts/make_large_bundle.py: K codes per level, budget L
and dedup block as `flexcode train pipeline` makes them; RANDOM weights). N new items get
text embeddings that are one vector plus a 1e-4 perturbation each, as a sentence encoder
gives "shirt, size 38" and "shirt, size 40": they all have the same code prefix. Compared:

  fixed block      the exported dedup block alone (the service before placement): what
                   does not fit under the prefix is refused with a 507
  placement        what the service does (service/catalog/placement.py), run through the
                   embedded store (and Redis with --redis): a full prefix sends an item to
                   the next code sequence of its placement order
  larger block     a dedup block sized for the N items: all under one prefix, dedup ids up
                   to N (a new vocabulary: export and retrain)
  second level     one more dedup token for every item, a block of ceil(N / dedup_size)
                   ids (depth L + 2 and a new vocabulary: retrain)

For each: items accepted, code prefixes used and items per prefix, vocabulary size, and
the prefix index of bundle + new items (after a merge) in bytes per item: its CSR arrays
and the decoder's padded device tables (computed from the index's shape: the larger block
would not fit in memory). For placement also: placement steps, how many of the L code
tokens differ from the item's own, the semantic quantisation error of the codes it got
against its own, and the decode check (every new item is in the overlay index under its
tokens and has finite dense and generative log-probabilities).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.bundle import BundleContents  # noqa: E402
from models.cold_start import ColdStart  # noqa: E402
from models.decoding import exact_log_probs  # noqa: E402
from models.dedup_base import bundle_next_dedup  # noqa: E402
from models.generator import Generator  # noqa: E402
from models.item_table import ItemTable  # noqa: E402
from models.prefix_index import PrefixIndex, build_prefix_index  # noqa: E402
from scripts.make_large_bundle import large_contents  # noqa: E402
from service.catalog import (  # noqa: E402
    ItemRecord,
    LocalCatalog,
    RedisCatalog,
    item_cache,
)
from service.catalog.placement import Placer, bundle_bases  # noqa: E402
from service.errors import DedupExhausted  # noqa: E402

BATCH = 256  # new items per store call: one POST /items of the service's default limit
PERTURBATION = 1e-4


# --- inputs ---------------------------------------------------------------------------------


def near_identical_text(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) unit vectors: one direction plus a small perturbation per item."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim)
    x = base / np.linalg.norm(base) + PERTURBATION * rng.standard_normal((n, dim)) / dim**0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bundle_entries(contents: BundleContents) -> list[tuple[str, str]]:
    """(id, item cache entry) of the bundle's items, as the service writes them."""
    return list(item_cache.bundle_entries(contents.external_ids, contents.item_tokens))


def new_records(contents: BundleContents, text: np.ndarray) -> list[ItemRecord]:
    """Records of the new items as POST /items builds them (service.new_items), in batches."""
    cold = ColdStart.from_bundle(contents)
    index = bundle_index(contents)
    out: list[ItemRecord] = []
    for lo in range(0, len(text), BATCH):
        codes = cold.tokenize(text[lo : lo + BATCH])
        base = bundle_next_dedup(index, codes.prefixes, contents.layout.dedup_offset)
        out += [
            ItemRecord(
                id=f"new-{lo + i}",
                hash=str(lo + i),
                prefix=tuple(codes.prefixes[i].tolist()),
                base=int(base[i]),
                cf=tuple(codes.cf_codes[i].tolist()),
                sem=tuple(codes.sem_codes[i].tolist()),
                alpha=float(codes.alpha[i]),
                n_cf=int(codes.n_cf[i]),
                vector=tuple(codes.vectors[i].tolist()),
                order=tuple(map(tuple, codes.placement_order[i].tolist())),
            )
            for i in range(len(codes.prefixes))
        ]
    return out


def bundle_index(contents: BundleContents) -> PrefixIndex:
    tokens = contents.item_tokens[1:]
    ids = np.arange(1, len(tokens) + 1)
    return build_prefix_index(tokens, ids, contents.layout.vocab_size)


# --- index sizes ----------------------------------------------------------------------------


def csr_bytes(index: PrefixIndex) -> int:
    arrays = (index.row_ptr, index.child_token, index.child_node, index.root_mask)
    return sum(a.nbytes for a in arrays)


def device_bytes(index: PrefixIndex) -> int:
    """Bytes of the tensors `PrefixIndex.to_tensors` builds (`DeviceIndex.nbytes`)."""
    return index.to_tensors("cpu").nbytes


def index_figures(index: PrefixIndex, n_items: int) -> dict:
    return {
        "csr_bytes_per_item": round(csr_bytes(index) / n_items, 1),
        "device_bytes_per_item": round(device_bytes(index) / n_items, 1),
        "max_children_last_depth": int(index.max_branch[-1]),
    }


def per_prefix(rows: np.ndarray) -> dict:
    """Items per code prefix over the (N, L + 1) rows: prefixes used, max and mean."""
    _, counts = np.unique(rows[:, :-1], axis=0, return_counts=True)
    return {"prefixes": len(counts), "max": int(counts.max()), "mean": float(counts.mean())}


# --- the options ----------------------------------------------------------------------------


def fixed_block(contents: BundleContents, records: list[ItemRecord]) -> dict:
    """The service before placement: its own prefix only (records without an order)."""
    bases = dict(bundle_bases(lambda: iter(bundle_entries(contents))))
    placer = Placer(contents.layout.dedup_size, lambda key: 0, lambda key: bases.get(key, 0))
    accepted = 0
    for rec in records:
        try:
            placer.place(replace(rec, order=()))
            accepted += 1
        except DedupExhausted:
            pass
    return {"accepted": accepted, "refused": len(records) - accepted}


async def place_in(store, contents: BundleContents, records: list[ItemRecord]) -> tuple:
    """(placed records, refused count, seconds, slowest call's seconds) through a catalog
    store, BATCH at a time."""

    async def ignore(_records):
        return None

    entries = bundle_entries(contents)
    await store.start(lambda: iter(entries), ignore)
    placed, refused, started, slowest = [], 0, time.perf_counter(), 0.0
    try:
        for lo in range(0, len(records), BATCH):
            call = time.perf_counter()
            try:
                out = await store.add(records[lo : lo + BATCH], False, contents.layout.dedup_size)
                placed += [o.record for o in out]
            except DedupExhausted:
                refused += len(records[lo : lo + BATCH])
            slowest = max(slowest, time.perf_counter() - call)
    finally:
        await store.close()
    return placed, refused, time.perf_counter() - started, slowest


def served_rows(contents: BundleContents, placed: list[ItemRecord]) -> np.ndarray:
    offset = contents.layout.dedup_offset
    return np.array([[*r.prefix, offset + r.dedup] for r in placed], dtype=np.int64)


def placement_figures(
    contents: BundleContents, text: np.ndarray, records, placed, timing: tuple[float, float]
) -> dict:
    own = np.array([r.prefix for r in records[: len(placed)]], dtype=np.int64)
    got = np.array([r.prefix for r in placed], dtype=np.int64)
    steps = np.array([r.placement for r in placed])
    changed = (own != got).sum(axis=1)
    order_bytes = np.mean([len(json.dumps(r.order, separators=(",", ":"))) for r in records[:100]])
    return {
        "placement_steps": {"max": int(steps.max()), "median": float(np.median(steps))},
        "code_tokens_changed": {str(k): int((changed == k).sum()) for k in range(own.shape[1] + 1)},
        "items_per_second": round(len(placed) / timing[0]),
        "slowest_call_s": round(timing[1], 3),
        "order_json_bytes_per_item": round(float(order_bytes)),
        "semantic_error": semantic_error(contents, text, records, placed),
    }


def semantic_error(contents: BundleContents, text: np.ndarray, records, placed) -> dict:
    """Mean squared distance from each item's text latent to the sum of the semantic
    codewords of its own codes, of the codes it got, and of random codes (a scale): how
    far placement moves an item. Semantic positions only (a new item's split is SEM-only
    at the shipped L: the router's cold alpha rounds to no CF token)."""
    layout, quantizer = contents.layout, contents.tokenizer.sem.quantizer
    books = quantizer.codebooks.detach()

    def error(codes: np.ndarray, latent: torch.Tensor) -> float:
        levels = torch.arange(codes.shape[1])
        recon = books[levels[None], torch.as_tensor(codes)].sum(1)
        return float((latent - recon).pow(2).sum(1).mean())

    own = layout.describe(np.array([r.prefix for r in records[: len(placed)]]))
    got = layout.describe(np.array([r.prefix for r in placed]))
    if (own["codebook"] != 1).any():
        return {"skipped": "some new items have CF tokens"}
    with torch.no_grad():
        sem_x = contents.tokenizer.standardise_sem(torch.as_tensor(text[: len(placed)]))
        latent = contents.tokenizer.sem.encoder(sem_x)
    rng = np.random.default_rng(0)
    random_codes = rng.integers(0, layout.codebook_size, own["code"].shape)
    return {
        "own": round(error(own["code"], latent), 5),
        "placed": round(error(got["code"], latent), 5),
        "random": round(error(random_codes, latent), 5),
    }


def decode_check(contents: BundleContents, placed: list[ItemRecord]) -> dict:
    """Every new item is in the overlay index under its tokens and both heads score it
    (finite log-probabilities for a history of five of them)."""
    table = ItemTable(contents.item_vectors, contents.item_tokens, bundle_index(contents))
    rows = table.add(
        np.array([r.vector for r in placed], np.float32), served_rows(contents, placed)
    )
    found = table.overlay.lookup(served_rows(contents, placed)) == rows
    history = torch.as_tensor(rows[:5][None])
    dense, gen = exact_log_probs(
        contents.generator, history, table.catalogue(), chunk_sequences=1024
    )
    at = torch.as_tensor(rows)
    return {
        "in_prefix_index": int(found.sum()),
        "finite_dense": int(torch.isfinite(dense[0, at]).sum()),
        "finite_generative": int(torch.isfinite(gen[0, at]).sum()),
        # What serving holds for them before a merge: the overlay index of added items.
        "overlay_index": index_figures(table.overlay.overlay, len(placed)),
    }


def larger_block(contents: BundleContents, records: list[ItemRecord]) -> dict:
    """All new items under their own prefix with dedup ids base, base + 1, ...: the block
    (and the vocabulary) grows to the largest id."""
    layout = contents.layout
    keys = np.array([r.prefix for r in records], dtype=np.int64)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    rank = np.zeros(len(records), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(group.reshape(-1)):
        rank[i], seen[g] = seen.get(g, 0), seen.get(g, 0) + 1
    dedup = np.array([r.base for r in records]) + rank
    dedup_size = max(layout.dedup_size, int(dedup.max()) + 1)
    vocab = layout.vocab_size - layout.dedup_size + dedup_size
    new_rows = np.concatenate([keys, (layout.dedup_offset + dedup)[:, None]], axis=1)
    return merged_figures(contents, new_rows, vocab) | {
        "dedup_size": dedup_size,
        "generator_parameters": generator_parameters(contents, vocab),
    }


def second_level(contents: BundleContents, records: list[ItemRecord]) -> dict:
    """Every item gets a second dedup token; the new items share their prefix and first
    dedup id base.. in groups of `size`, told apart by the second (block of `size` ids)."""
    layout = contents.layout
    size = math.ceil(len(records) / layout.dedup_size)
    vocab = layout.vocab_size + size
    second_offset = layout.vocab_size
    old = contents.item_tokens[1:]
    old_rows = np.concatenate([old, np.full((len(old), 1), second_offset)], axis=1)
    keys = np.array([r.prefix for r in records], dtype=np.int64)
    base = np.array([r.base for r in records])
    i = np.arange(len(records))
    first = layout.dedup_offset + base + i // size
    new_rows = np.concatenate([keys, first[:, None], (second_offset + i % size)[:, None]], 1)
    fits = base + i // size < layout.dedup_size
    rows = np.concatenate([old_rows, new_rows[fits]])
    index = build_prefix_index(rows, np.arange(1, len(rows) + 1), vocab)
    figures = {"accepted": int(fits.sum()), "vocab_size": vocab, "depth": index.depth}
    figures |= index_figures(index, len(rows))
    return figures | {"generator_parameters": generator_parameters(contents, vocab)}


def merged_figures(contents: BundleContents, new_rows: np.ndarray, vocab: int) -> dict:
    rows = np.concatenate([contents.item_tokens[1:], new_rows])
    index = build_prefix_index(rows, np.arange(1, len(rows) + 1), vocab)
    return {"accepted": len(new_rows), "vocab_size": vocab} | index_figures(index, len(rows))


def generator_parameters(contents: BundleContents, vocab: int) -> int:
    config = replace(contents.generator.config, vocab_size=vocab)
    return sum(p.numel() for p in Generator(config).parameters())


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    contents = large_contents(args.bundle_items, args.seed)
    layout = contents.layout
    text = near_identical_text(args.new_items, contents.tokenizer.config.sem.input_dim, args.seed)
    records = new_records(contents, text)
    own_prefixes = per_prefix(np.array([[*r.prefix, 0] for r in records]))
    shape = {
        "bundle_items": args.bundle_items,
        "new_items": args.new_items,
        "codebook_size": layout.codebook_size,
        "budget": contents.budget,
        "dedup_size": layout.dedup_size,
        "vocab_size": layout.vocab_size,
        "new_items_own_prefixes": own_prefixes["prefixes"],
        "generator_parameters": generator_parameters(contents, layout.vocab_size),
        "bundle_index": index_figures(bundle_index(contents), args.bundle_items),
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalCatalog(Path(tmp) / "journal.sqlite3", "bench", poll_s=0)
        placed, refused, *timing = asyncio.run(place_in(store, contents, records))
    rows = served_rows(contents, placed)
    placement = {
        "accepted": len(placed),
        "refused": refused,
        "distinct_rows": len(np.unique(rows, axis=0)),
    }
    placement |= {"items_per_prefix": per_prefix(rows), "vocab_size": layout.vocab_size}
    placement |= merged_figures(contents, rows, layout.vocab_size)
    placement |= placement_figures(contents, text, records, placed, tuple(timing))
    placement |= {"decode_check": decode_check(contents, placed)}
    if args.redis:
        placement["redis"] = redis_figures(args.redis, contents, records, placed)
    result = {
        "shape": shape,
        "fixed_block": fixed_block(contents, records) | {"vocab_size": layout.vocab_size},
        "placement": placement,
        "larger_block": larger_block(contents, records),
        "second_level": second_level(contents, records),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result


def redis_figures(url: str, contents: BundleContents, records, embedded) -> dict:
    """The same placement through Redis (add_items.lua): its speed, and that it agrees
    with the embedded store item for item. Keys under a fresh prefix, deleted after."""
    import redis

    prefix = f"bench-dedup-{uuid.uuid4().hex[:8]}"
    try:
        placed, refused, seconds, slowest = asyncio.run(
            place_in(RedisCatalog(url, prefix, "bench"), contents, records)
        )
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    same = [(r.prefix, r.dedup) for r in placed] == [(r.prefix, r.dedup) for r in embedded]
    return {
        "accepted": len(placed),
        "refused": refused,
        "items_per_second": round(len(placed) / seconds),
        "slowest_call_s": round(slowest, 3),
        "same_as_embedded": same,
    }


def print_table(result: dict) -> None:
    shape = result["shape"]
    print(
        f"bundle {shape['bundle_items']} items, K = {shape['codebook_size']}, L = "
        f"{shape['budget']}, dedup_size = {shape['dedup_size']}; {shape['new_items']} new "
        f"items with near-identical text ({shape['new_items_own_prefixes']} own prefixes)"
    )
    print("| option | accepted | vocab | CSR B/item | device B/item | max children at last depth |")
    print("|---|---|---|---|---|---|")
    bundle = shape["bundle_index"]
    print(
        f"| bundle alone | - | {shape['vocab_size']} | {bundle['csr_bytes_per_item']} | "
        f"{bundle['device_bytes_per_item']} | {bundle['max_children_last_depth']} |"
    )
    fixed = result["fixed_block"]
    print(f"| fixed block | {fixed['accepted']} | {fixed['vocab_size']} | - | - | - |")
    for name in ("placement", "larger_block", "second_level"):
        row = result[name]
        print(
            f"| {name.replace('_', ' ')} | {row['accepted']} | {row['vocab_size']} | "
            f"{row['csr_bytes_per_item']} | {row['device_bytes_per_item']} | "
            f"{row['max_children_last_depth']} |"
        )
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-items", type=int, default=10_000, help="catalogue size")
    parser.add_argument("--new-items", type=int, default=10_000, help="near-identical items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis", help="also place through this Redis (keys deleted after)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
