"""The next-item training loop shared by SASRec (stage A and the baseline) and the
FlexCode generator (stage D): one schedule, one early-stopping rule, one DDP scheme.

What a stage hands in:
  - a `step` module whose forward(seq (B, T), targets (B, T)) returns the SUMMED loss over
    the batch's target positions, or a pair (that sum, a regulariser on the scale of a
    per-target mean); DDP wraps it, so everything with gradients must be inside;
  - the training windows (`training_windows`);
  - `validate()`, rank 0's validation metrics ({"all": {"ndcg@10": ...}, ...});
  - `snapshot()`, what to keep of the best epoch (a deep copy of weights, any layout).

Schedule (`LoopConfig`): linear warmup over the first `warmup_epochs`, then the learning
rate is halved each time validation NDCG@10 has not improved for `plateau` evaluations
in a row, and training stops after `patience` evaluations without a gain; the best
snapshot is returned. `max_epochs` is a safety cap set well above where runs stop
(`LoopResult.stopped_early` says which ended a run, and the curve is kept).

Weight averaging (`ema_epochs` > 0): an exponential moving average of the weights over
about that many epochs of steps is kept beside them; validation, early stopping and the
snapshot read the average, training keeps updating the raw weights. It smooths the
step-to-step noise of small-batch Adam, for SASRec and the generator alike.

Batches: windows of similar length are grouped so a batch drops its shared left padding;
each batch's summed loss is divided by one constant (targets per batch on average), so
every target position weighs the same, however full its batch (METHOD.md's warning about
per-batch means).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from models.config import Config, check_choice, check_positive_ints, check_range
from models.sampled_softmax import (
    DEFAULT_SAMPLED_NEGATIVES,
    LOSSES,
    NEGATIVE_SAMPLERS,
    SampledSoftmax,
    resolve_loss,
)
from training.data.preprocess import Sequences
from training.device import autocast
from training.distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_object,
    shard,
    single_process,
    wrap,
)
from training.early_stopping import EarlyStopping

logger = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float]]


@dataclass(frozen=True)
class LoopConfig(Config):
    lr: float = 2e-3  # tuned on ML-100K validation (BENCHMARKS.md); 4e-3 is unstable
    weight_decay: float = 0.0  # dropout regularises enough at this size
    batch_size: int = 64  # small batches: ML-100K has only ~1k training windows
    max_epochs: int = 300  # a safety cap: early stopping ends runs far sooner
    patience: int = 10  # evaluations without a validation NDCG@10 gain before stopping
    plateau: int = 3  # evaluations without a gain before the learning rate is halved
    eval_every: int = 1  # epochs between validation passes
    warmup_epochs: float = 1.0  # linear warmup of the learning rate
    grad_clip: float = 1.0
    seed: int = 0
    # The next-item softmax over the catalogue (`models.sampled_softmax`): "full", or
    # "sampled" (in-batch + `sampled_negatives` shared negatives, logQ-corrected), or
    # "auto": full below SAMPLED_SOFTMAX_MIN_ITEMS items, sampled from there on, so
    # per-step memory does not grow with the catalogue.
    loss: str = "auto"
    sampled_negatives: int = DEFAULT_SAMPLED_NEGATIVES
    negative_sampler: str = "uniform"  # or "popularity" (training counts, +1 smoothed)
    # Weight averaging horizon in epochs (0 = off): validation and the kept snapshot read
    # an exponential moving average of the weights with decay 1 - 1 / (ema_epochs *
    # batches per epoch), started as a plain running mean.
    ema_epochs: float = 0.0

    def __post_init__(self) -> None:
        check_positive_ints(self, "batch_size", "max_epochs", "patience", "plateau", "eval_every")
        check_range(self, "lr", 0, low_open=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "warmup_epochs", 0)
        check_choice(self, "loss", LOSSES)
        check_choice(self, "negative_sampler", NEGATIVE_SAMPLERS)
        check_range(self, "sampled_negatives", 0, integer=True)
        check_range(self, "ema_epochs", 0)

    def sampled_softmax(self, counts: np.ndarray, device: torch.device) -> SampledSoftmax | None:
        """The sampled loss this config gives a catalogue with training-target counts
        `counts` ((N + 1,), row 0 padding), or None for the full softmax."""
        if resolve_loss(self.loss, len(counts) - 1) == "full":
            return None
        return SampledSoftmax(counts, self.sampled_negatives, self.negative_sampler, device)


@dataclass
class LoopResult:
    best: dict  # the snapshot of the best evaluation
    best_valid: Metrics
    best_epoch: int
    epochs_run: int
    stopped_early: bool  # False: max_epochs ended the run (raise it)
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def training_windows(train: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every training sequence into (input, next-item target) windows of max_len.

    A user with n items has n - 1 (input, target) pairs; they are split into
    ceil((n - 1) / max_len) windows counted back from the most recent, so every target
    position is trained on exactly once. Windows are left-padded with 0.
    Returns inputs, targets: (W, max_len) int64.
    """
    pairs = np.maximum(train.lengths - 1, 0)  # (U,)
    n_windows = -(-pairs // max_len)  # ceil
    users = np.repeat(np.arange(train.n_users), n_windows)
    index_in_user = np.arange(len(users)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = pairs[users] - index_in_user * max_len  # exclusive end of the window's pairs
    start = np.maximum(end - max_len, 0)
    lengths = end - start
    rows = np.repeat(np.arange(len(users)), lengths)
    step = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = max_len - np.repeat(lengths, lengths) + step
    src = np.repeat(train.offsets[users] + start, lengths) + step
    inputs = np.zeros((len(users), max_len), dtype=np.int64)
    targets = np.zeros((len(users), max_len), dtype=np.int64)
    inputs[rows, cols] = train.items[src]
    targets[rows, cols] = train.items[src + 1]
    return inputs, targets


class WeightAverage:
    """An exponential moving average of `params`, and a context that swaps it in.

    The weight of step t's parameters is max(1 - decay, 1 / t): a running mean of every
    step until the horizon is reached, then the moving average, so the early random
    weights fade out instead of lingering as a bias."""

    def __init__(self, params: list[torch.nn.Parameter], steps_per_horizon: float) -> None:
        self.params = params
        self.decay = 1.0 - 1.0 / max(1.0, steps_per_horizon)
        self.average = [p.detach().clone() for p in params]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        weight = max(1.0 - self.decay, 1.0 / self.steps)
        for avg, param in zip(self.average, self.params, strict=True):
            avg.lerp_(param.detach(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in place of the raw ones, restored on exit."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            for param, avg in zip(self.params, self.average, strict=True):
                param.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, raw, strict=True):
                    param.copy_(saved)


def length_bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Random batches of windows of similar length, in random order.

    Most windows are much shorter than max_len; grouping similar lengths lets a batch
    drop its shared padding (3-4x less compute on ML-100K). Safe because the loss is
    normalised by a constant, not per batch.
    """
    perm = torch.randperm(len(lengths), generator=generator)
    bucket = lengths[perm] // 16
    order = perm[torch.sort(bucket, stable=True).indices]
    batches = list(order.split(batch_size))
    shuffled = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffled]


def fit(
    step: torch.nn.Module,
    windows: tuple[np.ndarray, np.ndarray],
    config: LoopConfig,
    validate: Callable[[], Metrics],
    snapshot: Callable[[], dict],
    device: torch.device,
    desc: str,
    progress: bool = True,
    distributed: DistContext | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> LoopResult:
    """Train `step`'s parameters (those with requires_grad) on `windows` (module
    docstring) and return the best snapshot.

    before_epoch(epoch): called before each epoch's batches (e.g. to rebuild a layout).
    distributed: under torchrun, this rank's context: every rank trains a DDP replica on
    its shard of each epoch's batches, rank 0 validates and the others follow its
    early-stopping decisions; all ranks get the same snapshot. With W ranks each rank
    divides by the single-process constant and DDP averages the W gradients, so every
    target still weighs the same and an epoch has W times fewer steps.
    """
    dist_ctx = distributed or single_process(device)
    started = time.perf_counter()
    inputs, targets = windows
    if len(inputs) == 0:
        raise ValueError("no training window: every training sequence has fewer than 2 items")
    inputs_t, targets_t = torch.as_tensor(inputs), torch.as_tensor(targets)
    lengths = (targets_t != 0).sum(dim=1)
    n_batches = math.ceil(len(inputs) / config.batch_size)
    loss_scale = float((targets != 0).sum()) / n_batches
    params = [p for p in step.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n_batches / dist_ctx.world_size
    average = (
        WeightAverage(params, config.ema_epochs * steps_per_epoch) if config.ema_epochs else None
    )
    net = wrap(step, dist_ctx)  # the module itself for one process
    if dist_ctx.distributed and dist_ctx.is_main:
        logger.info(
            "%s: %d processes (%s), %d of %d batches each per epoch",
            desc,
            dist_ctx.world_size,
            dist_ctx.backend,
            math.ceil(n_batches / dist_ctx.world_size),
            n_batches,
        )
    generator = torch.Generator().manual_seed(config.seed)
    warmup_steps = max(1, round(config.warmup_epochs * n_batches / dist_ctx.world_size))
    stopper = EarlyStopping(config.patience)
    curve: list[dict] = []
    lr_scale, steps, epoch = 1.0, 0, 0
    epochs = tqdm(
        range(1, config.max_epochs + 1),
        desc=desc,
        disable=not progress or not dist_ctx.is_main,
    )
    for epoch in epochs:
        if before_epoch is not None:
            before_epoch(epoch)
        step.train()
        total = 0.0
        epoch_started = time.perf_counter()
        mine = shard(length_bucketed_batches(lengths, config.batch_size, generator), dist_ctx)
        for batch in mine:
            width = int(lengths[batch].max())  # trim the shared left padding
            seq = inputs_t[batch, -width:].to(device)
            tgt = targets_t[batch, -width:].to(device)
            lr = config.lr * lr_scale * min(1.0, (steps + 1) / warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device):
                out = net(seq, tgt)
            # (summed loss, regulariser already per target) or the summed loss alone
            loss = out[0] / loss_scale + out[1] if isinstance(out, tuple) else out / loss_scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if average is not None:
                average.update()
            steps += 1
            total += loss.item()
        epoch_loss = all_reduce_sum(total, dist_ctx) / (len(mine) * dist_ctx.world_size)
        train_seconds = time.perf_counter() - epoch_started
        if epoch % config.eval_every and epoch != config.max_epochs:
            continue
        step.eval()
        valid_started = time.perf_counter()
        evaluated = average.applied() if average is not None else nullcontext()
        with evaluated:  # validation and the snapshot read the same (averaged) weights
            metrics = validate() if dist_ctx.is_main else None
            # Every rank runs its own EarlyStopping on rank 0's score: same decisions
            # everywhere.
            metrics = broadcast_object(metrics, dist_ctx)
            ndcg = metrics["all"]["ndcg@10"]
            improved = stopper.update(ndcg)
            if improved:
                stopper.best = {"epoch": epoch, "valid": metrics, "state": snapshot()}
        curve.append(
            {
                "epoch": epoch,
                "loss": epoch_loss,
                "lr": lr,
                "valid_ndcg@10": ndcg,
                "train_seconds": round(train_seconds, 2),  # this epoch's batches
                "valid_seconds": round(time.perf_counter() - valid_started, 2),
            }
        )
        epochs.set_postfix(loss=f"{epoch_loss:.3f}", ndcg10=f"{ndcg:.4f}", lr=f"{lr:.1e}")
        if not improved and stopper.evals_without_gain % config.plateau == 0:
            lr_scale *= 0.5
        if stopper.should_stop:
            break
    best = stopper.best  # at least one evaluation always runs (the last epoch evaluates)
    logger.info(
        "%s: best valid NDCG@10 %.4f at epoch %d of %d (%s)",
        desc,
        stopper.best_score,
        best["epoch"],
        epoch,
        "early stop" if stopper.should_stop else "epoch cap",
    )
    return LoopResult(
        best=best["state"],
        best_valid=best["valid"],
        best_epoch=best["epoch"],
        epochs_run=epoch,
        stopped_early=stopper.should_stop,
        curve=curve,
        seconds=time.perf_counter() - started,
    )
