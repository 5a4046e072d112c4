"""Stage A: train SASRec on the training sequences; its item table is the CF embedding.

Reads a ProcessedDataset, writes into the run directory:
  sasrec.safetensors   model weights
  sasrec.json          model config, training config, best validation metrics
  cf_embeddings.npy    (N + 1, hidden) float32 item table, row 0 = padding
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from models.sasrec import SASRec, SASRecConfig
from training.data.preprocess import ProcessedDataset, Sequences
from training.device import autocast, seed_everything
from training.distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_module,
    broadcast_object,
    shard,
    single_process,
    wrap,
)
from training.early_stopping import EarlyStopping
from training.evaluate import EvalResult, ScoreFn, evaluate_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SASRecTrainConfig:
    lr: float = 2e-3  # tuned on ML-100K validation (BENCHMARKS.md); 4e-3 is unstable
    weight_decay: float = 0.0  # dropout regularises enough at this size
    batch_size: int = 64  # small batches: ML-100K has only ~1k training windows
    max_epochs: int = 200  # an upper bound; early stopping ends runs far sooner
    patience: int = 10  # evaluations without a validation NDCG@10 gain before stopping
    eval_every: int = 2  # epochs between validation passes
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class SASRecResult:
    model: SASRec
    best_valid: dict[str, dict[str, float]]
    best_epoch: int
    epochs_run: int
    curve: list[dict[str, float]] = field(default_factory=list)


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


def length_bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Random batches of windows of similar length, in random order.

    Most windows are much shorter than max_len; grouping similar lengths lets a batch
    drop its shared padding (3-4x less compute on ML-100K). Safe here because the loss
    is normalised by a constant, not per batch (METHOD.md's warning about bucketing
    applies to per-batch means).
    """
    perm = torch.randperm(len(lengths), generator=generator)
    bucket = lengths[perm] // 16
    order = perm[torch.sort(bucket, stable=True).indices]
    batches = list(order.split(batch_size))
    shuffled = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffled]


def sasrec_score_fn(model: SASRec, device: torch.device) -> ScoreFn:
    """Scores the next item from the last max_len items of each history."""

    def score(users: np.ndarray, history: Sequences) -> torch.Tensor:
        seq = torch.as_tensor(history.last(model.config.max_len), device=device)
        with autocast(device):
            return model.score(seq).float()

    return score


def train_sasrec(
    dataset: ProcessedDataset,
    model_config: SASRecConfig,
    train_config: SASRecTrainConfig,
    device: torch.device,
    progress: bool = True,
    distributed: DistContext | None = None,
) -> SASRecResult:
    """Train with early stopping on validation NDCG@10; returns the best model.

    distributed: under torchrun, this rank's context (`training.distributed`): every rank
    trains a DDP replica on its shard of each epoch's batches, rank 0 validates and the
    others follow its early-stopping decisions; all ranks return the same best model and
    the same metrics. None: one process.

    Loss weighting with W ranks: each rank divides its batch's summed loss by the same
    constant as a single process, and DDP averages the W gradients, so a step's gradient
    is the sum over the W batches' targets divided by W * loss_scale: every target still
    weighs the same, the effective batch is W times larger and an epoch W times fewer
    steps (the learning rate is not rescaled).
    """
    dist_ctx = distributed or single_process(device)
    seed_everything(train_config.seed)
    inputs, targets = training_windows(dataset.train_sequences(), model_config.max_len)
    if len(inputs) == 0:
        raise ValueError(f"{dataset.name}: no training sequence has two or more items")
    inputs_t, targets_t = torch.as_tensor(inputs), torch.as_tensor(targets)
    lengths = (targets_t != 0).sum(dim=1)
    n_batches = math.ceil(len(inputs) / train_config.batch_size)
    # Dividing each batch's summed loss by the same constant weights every target
    # position equally, however full a batch happens to be.
    loss_scale = float((targets != 0).sum()) / n_batches

    model = SASRec(model_config).to(device)
    net = wrap(model, dist_ctx)  # the model itself for one process
    if dist_ctx.distributed:
        # Same init on every rank (above), different dropout masks from here on.
        torch.manual_seed(train_config.seed + dist_ctx.rank)
        if dist_ctx.is_main:
            logger.info(
                "sasrec: %d processes (%s), %d of %d batches each per epoch",
                dist_ctx.world_size,
                dist_ctx.backend,
                math.ceil(n_batches / dist_ctx.world_size),
                n_batches,
            )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    generator = torch.Generator().manual_seed(train_config.seed)
    validation = dataset.validation()
    groups = dataset.item_groups()

    stopper = EarlyStopping(train_config.patience)
    curve: list[dict[str, float]] = []
    epochs = tqdm(
        range(1, train_config.max_epochs + 1),
        desc="sasrec",
        disable=not progress or not dist_ctx.is_main,
    )
    epoch = 0
    for epoch in epochs:
        model.train()
        total = 0.0
        batches = length_bucketed_batches(lengths, train_config.batch_size, generator)
        mine = shard(batches, dist_ctx)
        for batch in mine:
            width = int(lengths[batch].max())  # trim the shared left padding
            seq = inputs_t[batch, -width:].to(device)
            tgt = targets_t[batch, -width:].to(device)
            with autocast(device):
                _, loss = net(seq, tgt)
            loss = loss / loss_scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            total += loss.item()
        # Mean over all ranks' batches; for one process: total / n_batches.
        epoch_loss = all_reduce_sum(total, dist_ctx) / (len(mine) * dist_ctx.world_size)
        if epoch % train_config.eval_every and epoch != train_config.max_epochs:
            continue
        model.eval()
        metrics = None
        if dist_ctx.is_main:
            score_fn = sasrec_score_fn(model, device)
            metrics = evaluate_scores(score_fn, validation, groups, desc="valid").metrics
        # Every rank runs its own EarlyStopping on rank 0's score: same decisions everywhere.
        metrics = broadcast_object(metrics, dist_ctx)
        ndcg = metrics["all"]["ndcg@10"]
        curve.append({"epoch": epoch, "loss": epoch_loss, "valid_ndcg@10": ndcg})
        epochs.set_postfix(loss=f"{epoch_loss:.3f}", ndcg10=f"{ndcg:.4f}")
        if stopper.update(ndcg):
            state = copy.deepcopy(model.state_dict())
            stopper.best = {"epoch": epoch, "valid": metrics, "state": state}
        if stopper.should_stop:
            break
    best = stopper.best  # at least one evaluation always runs (the last epoch evaluates)
    model.load_state_dict(best["state"])
    broadcast_module(model, dist_ctx)  # the replicas' snapshots agree; make it certain
    model.eval()
    logger.info(
        "sasrec: best valid NDCG@10 %.4f at epoch %d of %d",
        stopper.best_score,
        best["epoch"],
        epoch,
    )
    return SASRecResult(model, best["valid"], best["epoch"], epoch, curve)


def evaluate_sasrec(model: SASRec, dataset: ProcessedDataset, device: torch.device) -> EvalResult:
    return evaluate_scores(sasrec_score_fn(model, device), dataset.test(), dataset.item_groups())


def save_sasrec(result: SASRecResult, train_config: SASRecTrainConfig, run_dir: Path) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = result.model
    save_file(
        {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
        run_dir / "sasrec.safetensors",
    )
    np.save(run_dir / "cf_embeddings.npy", model.item_embeddings().float().cpu().numpy())
    meta = {
        "model_config": model.config.to_dict(),
        "train_config": asdict(train_config),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_valid": result.best_valid,
        "curve": result.curve,
    }
    (run_dir / "sasrec.json").write_text(json.dumps(meta, indent=2))


def load_sasrec(run_dir: Path, device: torch.device) -> SASRec:
    meta = json.loads((Path(run_dir) / "sasrec.json").read_text())
    model = SASRec(SASRecConfig(**meta["model_config"]))
    model.load_state_dict(load_file(Path(run_dir) / "sasrec.safetensors"))
    return model.to(device).eval()
