"""Memory per item of what constrained decoding holds, on the shipped code shape.

    .venv/bin/python scripts/bench_index_memory.py [--sizes 10000 100000 1000000]
        [--out reports/bench_index_memory.json]

Catalogues: the served tokens of `scripts/make_large_bundle.py`'s random catalogue (the
shipped K, L and dedup slack, long-tailed popularity, the router's split), no model run.
Per size, bytes per item of:

  - the device index (`PrefixIndex.to_tensors`, `DeviceIndex.nbytes`): per-depth CSR in
    the narrowest integer types, leaf runs, the item id -> leaf position table, and the
    V-sized root maps; broken down by part;
  - the token table (`models.item_table.ItemTable.tokens`, int16 for these vocabularies);
  - for comparison, the padded (node, max_branch) int64 tables the device index replaced
    (computed from the trie's shape, not built) and the host CSR the bundle ships
    (`prefix_index.npz`, int64; the service keeps it for lookups and merges).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.device_index import narrow_int  # noqa: E402
from models.prefix_index import PrefixIndex, build_prefix_index  # noqa: E402
from scripts.make_large_bundle import large_catalogue  # noqa: E402


def padded_table_bytes(index: PrefixIndex) -> int:
    """Bytes of the previous layout: per depth k >= 1 an (n_k + 1, max_branch[k]) int64
    token table and one of children, leaf lo / hi per node, ids and positions, root maps."""
    total = index.vocab_size * (1 + 8) + index.n_items * 16
    for k in range(1, index.depth):
        nodes = int(index.level_ptr[k + 1] - index.level_ptr[k])
        total += (nodes + 1) * (max(1, int(index.max_branch[k])) * 16 + 16)
    return total


def measure(n_items: int, seed: int) -> dict:
    tokens = large_catalogue(n_items, seed).item_tokens[1:]
    vocab = int(tokens.max()) + 1
    index = build_prefix_index(tokens, np.arange(1, n_items + 1), vocab)
    dev = index.to_tensors("cpu")
    per = 1.0 / n_items

    def size(tensors) -> float:
        return round(sum(t.nelement() * t.element_size() for t in tensors) * per, 1)

    token_table = narrow_int(tokens, vocab)
    host_csr = index.row_ptr.nbytes + index.child_token.nbytes + index.child_node.nbytes
    return {
        "n_items": n_items,
        "depth": index.depth,
        "vocab_size": vocab,
        "max_branch": index.max_branch.tolist(),
        "nodes_per_item": round(index.n_nodes * per, 2),
        "device_index_bytes_per_item": round(dev.nbytes * per, 1),
        "device_index_parts": {
            "row_ptr": size([lv.row_ptr for lv in dev.levels]),
            "child_token": size([lv.token for lv in dev.levels]),
            "child": size([lv.child for lv in dev.levels if lv.child is not None]),
            "leaf_ptr": size([lv.leaf_ptr for lv in dev.levels[:-1]]),  # the last is row_ptr
            "leaf_of": size([dev.leaf_of]),
            "root_maps": size([dev.root_mask, dev.root_child]),
            # depth-1 windows (models.dense_window), where a level's nodes fill them
            "windows": size([t for lv in dev.levels if lv.window for t in lv.window.tensors()]),
            "dtypes": sorted({str(t.dtype) for lv in dev.levels for t in lv.tensors()}),
        },
        "token_table_bytes_per_item": round(token_table.nbytes * per, 1),
        "token_table_dtype": str(token_table.dtype),
        "index_and_tokens_bytes_per_item": round((dev.nbytes + token_table.nbytes) * per, 1),
        "previous_padded_tables_bytes_per_item": round(padded_table_bytes(index) * per, 1),
        "previous_token_table_bytes_per_item": tokens.shape[1] * 8,
        "host_csr_bytes_per_item": round(host_csr * per, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_index_memory.json"))
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        row = measure(n, args.seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.node(), "catalogs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
