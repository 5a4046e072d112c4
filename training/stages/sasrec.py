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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.config import check_range
from models.sampled_softmax import SampledSoftmax
from models.sasrec import SASRec, SASRecConfig
from training.data.preprocess import ProcessedDataset, Sequences, warm_mask
from training.device import autocast, seed_everything
from training.distributed import DistContext, broadcast_module, single_process
from training.evaluate import EvalResult, ScoreFn, evaluate_scores, subsample
from training.loop import LoopConfig, fit, training_windows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SASRecTrainConfig(LoopConfig):
    """The shared loop's schedule and next-item loss (`training.loop.LoopConfig`: `loss`
    "auto" trains the full softmax below 20k items and the sampled one above); SASRec
    adds which validation users each epoch reads."""

    # Validation users per epoch: a fixed random subsample above this (None = all), as in
    # stage D. On 100k users x 70k items validating every user cost twice an epoch of
    # training (BENCHMARKS.md, stage A at scale); ML-100K's 943 are all used. Test
    # figures use every user.
    eval_users: int | None = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "eval_users", 1, optional=True, integer=True, hint="(None = all)")


@dataclass
class SASRecResult:
    model: SASRec
    best_valid: dict[str, dict[str, float]]
    best_epoch: int
    epochs_run: int
    curve: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = True


class _SASRecStep(torch.nn.Module):
    """The loop's step: the summed next-item cross-entropy of a batch, over the whole
    catalog (sampled None) or sampled (`models.sampled_softmax.SampledSoftmax`)."""

    def __init__(self, model: SASRec, sampled: SampledSoftmax | None = None) -> None:
        super().__init__()
        self.model = model
        self.sampled = sampled

    def forward(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.sampled is None:
            return self.model(seq, targets)[1]
        return self.sampled(*self.model.target_states(seq, targets))


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
    text: np.ndarray | None = None,
) -> SASRecResult:
    """Train with the shared loop (`training.loop.fit`: warmup, halving on plateaus, early
    stopping on validation NDCG@10); returns the best model. distributed: under torchrun,
    this rank's context (see `fit`); None: one process. text: (N + 1, D) item text
    embeddings, for the id + content variant (model_config.text_dim = D); items without
    training interactions then have no id of their own and are written by text alone."""
    dist_ctx = distributed or single_process(device)
    seed_everything(train_config.seed)
    windows = training_windows(dataset.train_sequences(), model_config.max_len)
    id_rows = None
    if text is not None:
        counts = dataset.train_counts()
        id_rows = torch.as_tensor(np.where(warm_mask(counts), np.arange(len(counts)), 0))
        text = torch.as_tensor(text, dtype=torch.float32)
    model = SASRec(model_config, text, id_rows).to(device)
    if dist_ctx.distributed:
        # Same init on every rank (above), different dropout masks from here on.
        torch.manual_seed(train_config.seed + dist_ctx.rank)
    validation = subsample(dataset.validation(), train_config.eval_users, train_config.seed)
    groups = dataset.item_groups()
    sampled = train_config.sampled_softmax(dataset.train_counts(), device)
    logger.info(
        "sasrec: %s softmax over %d items%s",
        "sampled" if sampled else "full",
        model_config.n_items,
        f" ({train_config.sampled_negatives} shared negatives)" if sampled else "",
    )

    def validate() -> dict:
        score_fn = sasrec_score_fn(model, device)
        return evaluate_scores(score_fn, validation, groups, desc="valid").metrics

    run = fit(
        _SASRecStep(model, sampled),
        windows,
        train_config,
        validate,
        lambda: copy.deepcopy(model.state_dict()),
        device,
        desc="sasrec",
        progress=progress,
        distributed=dist_ctx,
    )
    model.load_state_dict(run.best)
    broadcast_module(model, dist_ctx)  # the replicas' snapshots agree; make it certain
    model.eval()
    return SASRecResult(
        model, run.best_valid, run.best_epoch, run.epochs_run, run.curve, run.stopped_early
    )


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
        "stopped_early": result.stopped_early,
        "best_valid": result.best_valid,
        "curve": result.curve,
    }
    (run_dir / "sasrec.json").write_text(json.dumps(meta, indent=2))


def load_sasrec(run_dir: Path, device: torch.device) -> SASRec:
    meta = json.loads((Path(run_dir) / "sasrec.json").read_text())
    config = SASRecConfig(**meta["model_config"])
    # The id + content variant's text and id rows are buffers: placeholders until loaded.
    text = torch.zeros(config.n_items + 1, config.text_dim) if config.text_dim else None
    model = SASRec(config, text)
    model.load_state_dict(load_file(Path(run_dir) / "sasrec.safetensors"))
    return model.to(device).eval()
