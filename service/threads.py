"""How many threads a micro-batch runs on (torch's and faiss's).

A lone request (concurrency 1) is a chain of small ops: split over two threads they lose
more to the hand-offs than they gain (at 1M items on two cores a lone request took
1.3-1.5x as long on two threads as on one). A full batch (concurrency 32) has ops large
enough to split; on two cores that was level with one thread within the noise, and more
cores are where it can pay. So batches below `parallel_from` requests run on one thread
and larger ones on all of `threads`, in torch and in the dense index's faiss search
alike (faiss keeps its own OpenMP pool and spreads one query's probes over the cores).
BENCHMARKS.md, "Threads per micro-batch". The inference thread is the only one that
runs either, so switching per batch is safe; it costs two calls when the size class
changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from models.dense_index import set_search_threads

In = TypeVar("In")
Out = TypeVar("Out")


def threads_by_batch_size(
    fn: Callable[[list[In]], Sequence[Out]], threads: int, parallel_from: int
) -> Callable[[list[In]], Sequence[Out]]:
    """fn, run on 1 thread (torch and faiss) for batches of fewer than `parallel_from`
    inputs and on `threads` for larger ones (threads <= 1: fn itself, nothing switched)."""
    if parallel_from < 1:
        raise ValueError(f"parallel_from must be >= 1, got {parallel_from}")
    if threads <= 1:
        return fn

    current = 0  # the threads set last; 0: none yet, the first batch sets both

    def run(batch: list[In]) -> Sequence[Out]:
        nonlocal current
        want = threads if len(batch) >= parallel_from else 1
        if want != current or torch.get_num_threads() != want:
            torch.set_num_threads(want)
            set_search_threads(want)
            current = want
        return fn(batch)

    return run
