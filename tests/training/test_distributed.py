"""Data-parallel training: the helpers in one process, and the pipeline under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.tiny_pipeline import tiny_pipeline_args
from training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_module,
    broadcast_object,
    init_distributed,
    shard,
    single_process,
    wrap,
)

REPO = Path(__file__).resolve().parents[2]


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == single_process(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.backend) == (0, 1, True, None)
    assert not torch.distributed.is_initialized()
    batches = [torch.arange(3), torch.arange(2)]
    assert shard(batches, ctx) is batches
    assert broadcast_object({"a": 1}, ctx) == {"a": 1}
    assert all_reduce_sum(2.5, ctx) == 2.5
    module = torch.nn.Linear(2, 2)
    assert wrap(module, ctx) is module
    barrier(ctx)
    broadcast_module(module, ctx)


@pytest.mark.parametrize("n_batches", [1, 5, 8])
def test_shard_gives_every_rank_the_same_number_of_batches(n_batches):
    batches = list(range(n_batches))
    shares = [shard(batches, DistContext(r, 4, r, torch.device("cpu"), "gloo")) for r in range(4)]
    per_rank = -(-n_batches // 4)
    assert all(len(share) == per_rank for share in shares)
    covered = sorted(b for share in shares for b in share)
    assert set(covered) == set(batches)  # every batch trained; the padding wraps around
    assert len(covered) - n_batches < 4


@pytest.mark.slow
def test_pipeline_under_torchrun_with_two_cpu_processes(tmp_path):
    """`torchrun --nproc_per_node=2 -m training.cli train pipeline` with gloo: both ranks
    train stages A and D, rank 0 exports, and the bundle loads."""
    from models.bundle import load_bundle

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # what the torchrun script runs
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training.cli",
        *tiny_pipeline_args(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "rank 0 of 2 on cpu (gloo)" in log and "rank 1 of 2 on cpu (gloo)" in log
    assert "sasrec: 2 processes (gloo)" in log
    assert "generator: 2 processes (gloo)" in log
    # Rank 0 alone exports and reports the bundle.
    assert [line for line in done.stdout.splitlines() if line.startswith("bundle: ")] == [
        f"bundle: {next((tmp_path / 'bundles').glob('synthetic-*'))}"
    ]
    bundle = load_bundle(tmp_path / "bundles")
    saved = np.load(tmp_path / "run" / "generator" / "items.npz")
    np.testing.assert_array_equal(bundle.external_ids, saved["external_ids"])
    np.testing.assert_array_equal(bundle.item_tokens, saved["item_tokens"])
