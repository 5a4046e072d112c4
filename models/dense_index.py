"""An approximate index for the dense head's candidates at large catalogues.

The dense head scores an item by the inner product state . v_i (`models.decoding`,
`dense_log_probs`). Scoring every row per request is a full scan of the item table: at 1M
items and C = 64, 64 M multiply-adds per request, 16-17 ms on one CPU core, the whole of a
w = 1 request (BENCHMARKS.md). Above a catalogue size the decoder takes the dense
candidates from this index instead, and computes their exact logits.

* BUILDER (here, NumPy + faiss, at load): `build_dense_index` puts the bundle's item
  vectors (rows 1..N) in a faiss inverted-file index under the inner product: k-means on
  a sample gives `nlist` centroids, every row goes to the list of its best centroid, its
  list holding it in the config's codec (`DENSE_INDEX_CODECS`). Rows added at serving
  time are NOT put in it (the decoder scans them exactly: few), so the index never
  changes after the build and needs no lock.
* KERNEL (`DenseIndex.search`): (B, C) states -> the top M rows of the `nprobe` lists
  whose centroids score best, and their inner products.

Why an inverted-file index and not HNSW (measured on 2 shared CPU cores, one thread,
C = 64, random vectors; BENCHMARKS.md, "The dense head's candidates at 1M items"): IVF
with 1,024 lists builds in about 3 s at 1M items (1 s k-means, 2 s assignment; 2,048
lists, the default there now, 7.6 s), HNSW (M = 32, efConstruction 40) took 11 s at
100k and grows faster than linearly, minutes at 1M. The service builds the index when
it loads a bundle (beside the serving version during a swap), so a build of seconds needs
no bundle format change; an HNSW index would have to be built by the export and stored
in the bundle.

Why PQ fast-scan lists (`pq4fs`, half a byte per dimension) by default: at 1M items, on
the same 1,024 lists and nprobe, the same recall of the exact top 10 as SQ8 lists (0.871
against 0.873 at nprobe 128: the decoder rescores 1,024 PQ candidates exactly where SQ8
hands over 256), a third of SQ8's memory (23 MB against 69 MB) and a search 3.7x faster
(0.83 against 3.09 ms per request at nprobe 128, one thread; BENCHMARKS.md, "PQ fast-scan
lists"). SQ8 (a quarter of Flat's 252 MB, 17-20% faster than Flat) and Flat stay choices
(`codec`). Since then the defaults moved to 2,048 lists at 1M, nprobe 192 and 512 PQ
candidates: recall@10 0.900 against 0.871, the search a third cheaper ("Where the
1M-item request's time went").

Why not for small catalogues: at 100k items the exact scan takes 2 ms, and the index
needs half its lists probed for 96% recall, which costs as much (BENCHMARKS.md); at 1M
the default nprobe keeps 90% of the exact top 10 (random vectors, the hard case) at a
tenth of the latency. Below `min_rows` (200k), `mode="auto"` keeps the exact scan, bit
for bit what evaluation measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from models.config import Config, check_choice, check_positive_ints

DENSE_INDEX_MODES = ("auto", "exact", "ann")
# How the lists store the vectors: "flat" as float32 (IVF-Flat), "sq8" one byte per
# dimension (IVF-SQ8: a quarter of the memory), "pq4fs" half a byte per dimension
# (IVF-PQ fast scan: C / 2 sub-quantizers of 16 centroids each, scanned with SIMD lookup
# tables). The decoder rescores every candidate exactly, so a coarser code costs recall
# only through which rows make the candidate list.
DENSE_INDEX_CODECS = ("flat", "sq8", "pq4fs")
# Rows asked of the index per request when `DenseIndexConfig.candidates` is 0: PQ scores
# misorder near neighbours more than 8-bit ones, so it hands over a longer list (its scan
# is cheap, and the exact rescoring of 512 rows is one small matrix product). 1,024 kept
# 0.3 points more of the exact top 10 at 1M items and cost 15% more at batch 32.
DEFAULT_CANDIDATES = {"flat": 256, "sq8": 256, "pq4fs": 512}


@dataclass(frozen=True)
class DenseIndexConfig(Config):
    """How the service finds the dense head's candidates (a serving choice: the bundle's
    `DecodingConfig` is what stage D measured, and evaluation always scans exactly).

    mode: "exact" scans every row; "ann" uses the index at any size; "auto" uses it when
        the bundle has at least `min_rows` items and the device is a CPU (on a GPU the
        scan is one matrix product, cheap even at 1M rows).
    nlist: inverted lists; 0 = about 2 sqrt(N), a power of two between 64 and 2,048
        (more lists make the load wait for the k-means: at 1M on one core 1,024 lists
        built in 3.8 s, 2,048 in 7.6 s, 4,096 in 14-22 s; for the same recall 2,048 lists
        scan half the rows 1,024 do, BENCHMARKS.md).
    nprobe: lists scanned per request; the recall/latency knob (BENCHMARKS.md).
    candidates: M, rows asked of the index per request before blocked rows (history,
        retired, filtered out) are dropped; at least 4 x the dense candidates needed.
        0 = the codec's `DEFAULT_CANDIDATES`.
    widen: a request left with fewer eligible dense candidates than it needs asks again
        for `widen` x M rows; still short, it is scanned exactly.
    train_per_list: k-means sample size per list (faiss warns below 39).
    codec: how the lists hold the vectors, `DENSE_INDEX_CODECS`.
    """

    mode: str = "auto"
    min_rows: int = 200_000
    nlist: int = 0
    nprobe: int = 192
    candidates: int = 0
    widen: int = 16
    train_per_list: int = 64
    niter: int = 10
    seed: int = 0
    codec: str = "pq4fs"

    def __post_init__(self) -> None:
        check_choice(self, "mode", DENSE_INDEX_MODES)
        check_choice(self, "codec", DENSE_INDEX_CODECS)
        check_positive_ints(self, "min_rows", "nprobe", "widen", "train_per_list")
        check_positive_ints(self, "niter")
        for name in ("nlist", "candidates"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"DenseIndexConfig.{name} must be >= 0 (0 = auto), got {getattr(self, name)}"
                )

    @property
    def candidates_asked(self) -> int:
        """M: the field, or the codec's default when it is 0."""
        return self.candidates or DEFAULT_CANDIDATES[self.codec]

    def wanted(self, n_items: int, device: torch.device | str = "cpu") -> bool:
        """Whether a catalogue of n_items bundle items on `device` gets the index."""
        if self.mode == "exact":
            return False
        if self.mode == "ann":
            return True
        return n_items >= self.min_rows and torch.device(device).type == "cpu"

    def lists_for(self, n_items: int) -> int:
        """nlist for a catalogue of n_items (the field, or its automatic value)."""
        if self.nlist:
            return min(self.nlist, n_items)
        auto = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n_items))))
        return int(min(max(auto, 64), 2048, n_items))


@dataclass
class DenseIndex:
    """An IVF index (SQ8 or Flat lists) over rows 1..n_rows - 1 of an item table (inner
    product).

    index: the faiss index; its ids are the item rows.
    n_rows: N + 1, the rows it covers are 1..N; rows >= n_rows (added at serving time)
        are not in it.
    nlist, nprobe: the index's lists and the lists probed per query.
    candidates, widen: as in `DenseIndexConfig`.
    build_s: seconds the build took.
    """

    index: faiss.IndexIVF
    n_rows: int
    nlist: int
    nprobe: int
    candidates: int
    widen: int
    build_s: float = 0.0

    @property
    def nbytes(self) -> int:
        """Memory held: the vectors' codes, their ids and the centroids."""
        per_row = int(self.index.code_size) + 8
        return int(self.index.ntotal) * per_row + self.nlist * self.index.d * 4

    def set_nprobe(self, nprobe: int) -> None:
        """Lists scanned per query from now on (benchmarks sweep it)."""
        self.nprobe = int(min(max(1, nprobe), self.nlist))
        self.index.nprobe = self.nprobe

    def search(self, states: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) states -> ((B, m) int64 rows best first, -1 where the probed lists hold
        fewer than m rows; (B, m) float32 inner products, -inf there), on the states'
        device. The inner products are faiss's; the decoder recomputes the candidates'
        logits itself, so its scores do not depend on the index's arithmetic."""
        x = np.ascontiguousarray(states.detach().float().cpu().numpy())
        m = max(1, min(int(m), int(self.index.ntotal)))
        scores, rows = self.index.search(x, m)
        rows_t = torch.as_tensor(rows, dtype=torch.int64, device=states.device)
        scores_t = torch.as_tensor(scores, device=states.device)
        return rows_t, scores_t.masked_fill(rows_t < 0, float("-inf"))


def set_search_threads(threads: int) -> None:
    """OpenMP threads of this thread's faiss searches from now on (faiss keeps its own
    thread pool, apart from torch's: `service/threads.py` sets both per micro-batch)."""
    faiss.omp_set_num_threads(max(1, int(threads)))


def build_dense_index(
    item_vectors: np.ndarray | torch.Tensor, config: DenseIndexConfig | None = None
) -> DenseIndex:
    """(N + 1, C) item vectors (row 0 padding) -> a DenseIndex over rows 1..N.

    The k-means runs on a sample of `train_per_list` x nlist rows (deterministic for a
    seed), so the build time grows with N only through the assignment of every row."""
    config = config or DenseIndexConfig()
    started = time.perf_counter()
    if isinstance(item_vectors, torch.Tensor):
        item_vectors = item_vectors.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32)[1:])
    n_items, dim = vectors.shape
    if n_items < 1:
        raise ValueError("a dense index needs at least one item row")
    nlist = config.lists_for(n_items)
    quantizer = faiss.IndexFlatIP(dim)
    if config.codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    elif config.codec == "pq4fs":
        if dim % 2:
            raise ValueError(f"the pq4fs codec needs an even vector width, got {dim}")
        index = faiss.IndexIVFPQFastScan(
            quantizer, dim, nlist, dim // 2, 4, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = config.niter
    index.cp.seed = config.seed
    # A small catalogue (mode "ann" in tests) trains on all the rows it has; faiss would
    # warn that they are fewer than 39 per list.
    index.cp.min_points_per_centroid = 1
    if config.codec == "pq4fs":
        index.pq.cp.min_points_per_centroid = 1  # the sub-quantizers' 16 centroids, likewise
    n_train = min(n_items, config.train_per_list * nlist)
    sample = np.random.default_rng(config.seed).choice(n_items, n_train, replace=False)
    index.train(vectors[np.sort(sample)])
    index.add_with_ids(vectors, np.arange(1, n_items + 1, dtype=np.int64))
    out = DenseIndex(
        index=index,
        n_rows=n_items + 1,
        nlist=nlist,
        nprobe=nlist,
        candidates=config.candidates_asked,
        widen=config.widen,
    )
    out.set_nprobe(config.nprobe)
    out.build_s = time.perf_counter() - started
    return out
