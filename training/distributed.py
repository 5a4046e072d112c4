"""Data-parallel training under `torchrun`: one process per device, explicit context.

`init_distributed` reads the environment torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR/PORT) and returns a `DistContext` that the training code passes down; without
torchrun (WORLD_SIZE unset or 1) it returns a single-process context and starts no
process group, and every helper here is then a no-op, so single-process runs execute
exactly the code (and produce exactly the numbers) they did before.

The scheme the stages follow:
  - every rank seeds identically and builds the identical, identically shuffled list of
    batches; `shard` gives each rank its equal share of it;
  - the trained modules are wrapped in DistributedDataParallel (`wrap`), which averages
    gradients over the ranks at every step;
  - validation runs on rank 0 only; its metrics go to all ranks (`broadcast_object`), so
    every rank's EarlyStopping takes the same decisions and they stop together;
  - artifacts (checkpoints, tokenizer, bundle) are written by rank 0; the others wait at
    a `barrier` and read what rank 0 wrote when they need it.

A rank that fails leaves the others blocked in their next collective; torchrun notices
the failed process and stops the rest of the group.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training.device import resolve_device

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Rank 0 alone runs stages B and C, validation, test evaluation and the export while the
# other ranks wait in a collective; on a large catalog that can take far longer than
# torch's default collective timeout (10 min for NCCL), which would kill the waiting ranks.
DEFAULT_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the (possibly one-process) training group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # this rank's device: cuda:LOCAL_RANK under torchrun on GPUs
    backend: str | None = None  # "nccl" or "gloo"; None without a process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, logs and writes artifacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def single_process(device: torch.device) -> DistContext:
    """The context of an ordinary run: rank 0 of 1, no process group."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device))


def init_distributed(device_arg: str = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> DistContext:
    """The context for this process; joins the process group when torchrun started it.

    device_arg: as `training.device.resolve_device` ("auto", "cpu", "cuda", ...). Under
    torchrun a CUDA device becomes cuda:LOCAL_RANK (one GPU per process, whatever index
    was asked for) with the NCCL backend; a CPU device uses gloo.
    ValueError when CUDA is asked for but there are fewer GPUs than local processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_arg)
    if world_size <= 1:
        return single_process(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local_rank} needs GPU {local_rank}, but only "
                f"{torch.cuda.device_count()} are visible: lower --nproc_per_node"
            )
        if device.index is not None and device.index != local_rank:
            logger.warning(
                "distributed: ignoring %s, rank %d uses cuda:%d", device, rank, local_rank
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL collectives and object broadcasts use it
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    ctx = DistContext(rank, world_size, local_rank, device, backend)
    logger.info("distributed: rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return ctx


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written an artifact)."""
    if not ctx.distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.local_rank])
    else:
        dist.barrier()


def broadcast_object(obj: T, ctx: DistContext) -> T:
    """Rank 0's `obj` on every rank (any picklable value; the other ranks' is ignored)."""
    if not ctx.distributed:
        return obj
    box: list[Any] = [obj if ctx.is_main else None]
    device = ctx.device if ctx.backend == "nccl" else None
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    """The sum of `value` over the ranks (e.g. the epoch's summed loss)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Overwrite the module's floating-point weights and buffers with rank 0's, in place.

    DDP keeps the ranks' weights equal by construction (same init, same averaged
    gradients, same optimizer); this makes the restored best state equal on every rank
    regardless. Integer and bool buffers are set before training and never change.
    """
    if not ctx.distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():  # shares storage with the module
            if tensor.is_floating_point():
                dist.broadcast(tensor, src=0)


def shard(batches: list[T], ctx: DistContext) -> list[T]:
    """This rank's share of one epoch's batches (the full list for a single process).

    batches: the same B batches, in the same order, on every rank. Each rank gets
    ceil(B / W) of them, interleaved (rank r takes r, r + W, ...). The counts must be
    equal: every step all-reduces gradients, and a rank with one step more would wait for
    the others forever. So, like torch's DistributedSampler, the list is padded by
    wrapping around to its start: up to W - 1 batches are trained twice in an epoch
    (different ones each epoch, since the batches are reshuffled).
    """
    if not ctx.distributed or not batches:
        return batches
    per_rank = math.ceil(len(batches) / ctx.world_size)
    padded = [batches[i % len(batches)] for i in range(per_rank * ctx.world_size)]
    return padded[ctx.rank :: ctx.world_size]


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """`module` in DistributedDataParallel when there are several ranks, else itself.

    Its forward must compute the loss from everything trained (DDP averages the
    gradients of the parameters it sees in forward, and expects all of those that
    require grad to receive one every step: no `find_unused_parameters` scan is needed
    by the stages' modules). Parameters frozen before wrapping are left out.
    """
    if not ctx.distributed:
        return module
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)
