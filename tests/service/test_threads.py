"""service/threads.py: small micro-batches on one torch thread, larger ones on all."""

from __future__ import annotations

import faiss
import pytest
import torch

from service.threads import threads_by_batch_size


def test_small_batches_run_on_one_thread_and_larger_ones_on_all():
    """In torch and in faiss (the dense index's search), on the calling thread."""
    before = torch.get_num_threads()
    seen: list[int] = []

    def fn(batch: list[int]) -> list[int]:
        seen.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
        return [2 * x for x in batch]

    try:
        run = threads_by_batch_size(fn, threads=2, parallel_from=4)
        assert run([1]) == [2]
        assert run([1, 2, 3, 4]) == [2, 4, 6, 8]
        assert run([5, 6, 7]) == [10, 12, 14]
        assert run(list(range(32))) == [2 * x for x in range(32)]
        assert seen == [(1, 1), (2, 2), (1, 1), (2, 2)]  # torch's and faiss's threads
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(before)


def test_one_thread_in_all_leaves_the_function_as_it_is():
    def fn(batch: list[int]) -> list[int]:
        return batch

    assert threads_by_batch_size(fn, threads=1, parallel_from=4) is fn
    with pytest.raises(ValueError, match="parallel_from"):
        threads_by_batch_size(fn, threads=2, parallel_from=0)
