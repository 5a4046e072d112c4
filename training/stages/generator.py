"""Stage D: the router (PATA) and the generator (ARG), trained on the tokenizer's codes.

Schedule (METHOD.md, "Training schedule"):

  phase 1  router + generator jointly. Every step the router gives alpha for the WHOLE
           catalog (N is small); the history items enter the generator with SOFT masks
           (mask-weighted sums of their token embeddings), which is the router's only
           gradient path from the generation loss, plus its regularisers (load balancing
           per popularity band, smoothness). Targets are the hard L + 1 tokens of the
           next item under the CURRENT hard split, recomputed (with dedup) once per epoch.
  phase 2  the router is frozen at its best state, the hard layout (n_cf, item tokens) is
           fixed, and the generator is fine-tuned with HARD masks: the layout it is served
           with. The returned generator is the best of phase 2 (or the phase-1 best when
           no fine-tuning evaluation beats it: both use the same hard layout and masks).

Validation decodes with constrained beam search over the prefix index of the current hard
layout and measures NDCG@10 with `training.evaluate.evaluate_topk`.

Cold items (no training interaction) have untrained CF embeddings, so their CF codes are
meaningless; `impute_cold_cf_codes` replaces them with those of the nearest warm item in
the tokenizer's aligned space before any layout is built.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.cold_start import aligned_cf_vectors, build_imputation_index, nearest_warm
from models.decoding import recommend_top_k
from models.dual_tokenizer import DualTokenizer
from models.generator import Generator, GeneratorConfig, HistoryItems
from models.item_table import ItemTable
from models.prefix_index import DeviceIndex, build_prefix_index
from models.router import Router, RouterConfig, popularity_bands, router_features
from models.tokens import TokenLayout, code_sequences, max_dedup_needed
from training.data.preprocess import EvalSet, ProcessedDataset, Sequences
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
from training.evaluate import EvalResult, TopKFn, evaluate_topk
from training.stages.sasrec import length_bucketed_batches, training_windows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table: each field is one switch of the method."""

    fixed_alpha: float | None = None  # None = learned router; 0.5 fix, 0 sid-only, 1 cf-only
    tokenizer_dir: str = "tokenizer"  # "tokenizer-no-align": the lambda_CCA = 0 twin
    budget: int = 5  # L, tokens per item (+1 dedup)


VARIANTS: dict[str, Variant] = {
    "full": Variant(),
    "fix": Variant(fixed_alpha=0.5),
    "sid-only": Variant(fixed_alpha=0.0),
    "cf-only": Variant(fixed_alpha=1.0),
    "no-align": Variant(tokenizer_dir="tokenizer-no-align"),
    **{f"full-L{budget}": Variant(budget=budget) for budget in (3, 4, 6)},
}


@dataclass(frozen=True)
class GeneratorTrainConfig:
    # Chosen on ML-100K validation NDCG@10 under a CPU budget (docs/method.md, "Stage D
    # schedule"): validation peaks within ~12 hard-layout epochs and then overfits, so
    # short phases with early stopping lose little and keep a run to a few minutes.
    lr: float = 2e-3
    batch_size: int = 64
    max_epochs: int = 4  # phase 1 (router + generator, soft masks) upper bound
    patience: int = 2  # evaluations without a validation NDCG@10 gain before stopping
    eval_every: int = 4  # epochs between validation passes
    finetune_epochs: int = 12  # phase 2: frozen router, hard layout, hard masks
    grad_clip: float = 1.0
    seed: int = 0
    beam_width: int = 30  # >= top-10 + a margin for excluded history items
    eval_users: int | None = None  # subsample validation users (fixed rng) for speed
    # Spare dedup ids beyond what the training catalogue needs, for cold items added at
    # serving time (their dedup ids continue after the largest one in their group).
    dedup_slack: int = 8


@dataclass
class GeneratorResult:
    generator: Generator
    router: Router
    item_tokens: np.ndarray  # (N + 1, L + 1) int64 served tokens, row 0 = zeros
    n_cf: np.ndarray  # (N + 1,) int64 CF tokens per item (row 0: padding, meaningless)
    alpha: np.ndarray  # (N + 1,) float32 the frozen router's CF share
    layout: TokenLayout
    best_valid: dict[str, dict[str, float]]
    curve: list[dict] = field(default_factory=list)
    table: ItemTable | None = None  # codes (with cold CF codes imputed) as tokens
    beam_width: int = 30  # what validation decoded with; evaluate_generator reuses it
    features: np.ndarray | None = None  # (N + 1, 4) raw router features (row 0: no interactions)
    seconds: float = 0.0  # training wall time


# --- item features and codes -------------------------------------------------------------


def _train_mask(dataset: ProcessedDataset) -> np.ndarray:
    """(nnz,) bool over dataset.sequences.items: the entries that are training data
    (the same rule as ProcessedDataset.train_sequences: all but each user's last two
    items, held-out items removed)."""
    seq = dataset.sequences
    pos = np.arange(len(seq.items)) - np.repeat(seq.offsets[:-1], seq.lengths)
    keep = pos < np.repeat(np.maximum(seq.lengths - 2, 0), seq.lengths)
    return keep & ~dataset.cold_holdout[seq.items]


def item_features(
    dataset: ProcessedDataset,
    tokenizer: DualTokenizer,
    codes: dict,
    cf_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """(N + 1, 4) raw router features (`models.router.router_features`).

    first_seen is each item's first TRAINING interaction time, last_time the largest
    training timestamp. uncertainty is the CF quantisation error
    ||standardise_cf(cf_emb) - cf.decode(cf_codes)||^2 of warm items when the CF
    embeddings (the SASRec table, (N + 1, D_cf)) are given; cold items and padding get NaN,
    which router_features fills with the warm mean. Without embeddings: no uncertainty.
    """
    counts = dataset.train_counts()
    n = len(counts)
    keep = _train_mask(dataset)
    items = dataset.sequences.items[keep]
    times = np.asarray(dataset.timestamps, dtype=np.float64)[keep]
    first_seen = np.full(n, np.inf)
    np.minimum.at(first_seen, items, times)
    first_seen[counts == 0] = np.nan
    last_time = float(times.max()) if len(times) else None
    uncertainty = None
    if cf_embeddings is not None:
        if len(cf_embeddings) != n:
            raise ValueError(f"cf_embeddings has {len(cf_embeddings)} rows, expected {n}")
        warm = counts > 0
        warm[0] = False
        uncertainty = np.full(n, np.nan)
        device = next(tokenizer.parameters()).device
        with torch.no_grad():
            x = torch.as_tensor(cf_embeddings[warm], dtype=torch.float32, device=device)
            cf_codes = torch.as_tensor(codes["cf_codes"][warm], device=device)
            recon = tokenizer.cf.decode(cf_codes)
            err = (tokenizer.standardise_cf(x) - recon).pow(2).sum(dim=1)
        uncertainty[warm] = err.cpu().numpy()
    return router_features(
        counts,
        first_seen=first_seen if last_time is not None else None,
        last_time=last_time,
        n_users=dataset.train_sequences().n_users,
        uncertainty=uncertainty,
    )


def impute_cold_cf_codes(
    tokenizer: DualTokenizer,
    sem_codes: np.ndarray,
    cf_codes: np.ndarray,
    warm: np.ndarray,
) -> np.ndarray:
    """CF codes for every item, cold ones imputed from their nearest warm neighbour.

    An item with no training interaction has an untrained CF embedding, so its own CF
    codes carry no collaborative signal. Each cold item (not `warm`, row 0 = padding
    excluded) copies the CF codes of the warm item nearest to it in the tokenizer's
    aligned space (`models.cold_start.nearest_warm`, a FAISS index): exactly what a newly
    added item gets at serving time. Warm rows and row 0 come back unchanged.

    sem_codes, cf_codes: (N + 1, L_max) int; warm: (N + 1,) bool. Returns a new array.
    """
    cf_codes = np.asarray(cf_codes)
    warm = np.asarray(warm, dtype=bool).copy()
    warm[0] = False
    out = cf_codes.copy()
    cold = np.flatnonzero(~warm)
    cold = cold[cold > 0]
    if len(cold) == 0:
        return out
    warm_ids = np.flatnonzero(warm)
    if len(warm_ids) == 0:
        raise ValueError("cannot impute CF codes: there is no warm item")
    index = build_imputation_index(aligned_cf_vectors(tokenizer, cf_codes[warm_ids]))
    out[cold] = cf_codes[nearest_warm(tokenizer, np.asarray(sem_codes)[cold], index, warm_ids)]
    return out


def layout_for(
    sem_codes: np.ndarray, cf_codes: np.ndarray, budget: int, codebook_size: int, slack: int = 8
) -> TokenLayout:
    """A TokenLayout whose dedup block fits ANY split of these items at this budget.

    Items with different splits never collide, so a group of colliding items under a mixed
    split is a subset of a group under one uniform split: the largest group over the
    uniform splits n_cf = 0..L bounds every layout the router can produce.
    """
    n_levels = sem_codes.shape[1]
    probe = TokenLayout(codebook_size=codebook_size, n_levels=n_levels, dedup_size=1)
    needed = max(
        max_dedup_needed(code_sequences(cf_codes, sem_codes, n_cf, budget, probe))
        for n_cf in range(budget + 1)
    )
    return TokenLayout(codebook_size, n_levels, max(needed, 1) + slack)


# --- decoding ----------------------------------------------------------------------------


def build_index(hard_tokens: np.ndarray, layout: TokenLayout, device: torch.device) -> DeviceIndex:
    """Prefix index over items 1..N of (N + 1, L + 1) hard tokens, as device tensors."""
    ids = np.arange(1, hard_tokens.shape[0])
    return build_prefix_index(hard_tokens[1:], ids, layout.vocab_size).to_tensors(device)


def _padded_exclude(history: Sequences, device: torch.device) -> torch.Tensor:
    """(B, E) int64 every history item per user, -1 padding (E = longest history, >= 1)."""
    width = max(int(history.lengths.max(initial=0)), 1)
    out = np.full((history.n_users, width), -1, dtype=np.int64)
    rows = history.row_ids()
    cols = np.arange(len(history.items)) - np.repeat(history.offsets[:-1], history.lengths)
    out[rows, cols] = history.items
    return torch.as_tensor(out, device=device)


def generator_topk_fn(
    generator: Generator,
    table: ItemTable,
    hard_tokens: np.ndarray,
    n_cf: np.ndarray,
    index_tensors: DeviceIndex | tuple[DeviceIndex, DeviceIndex],
    device: torch.device,
    beam_width: int,
    top_k: int | None = None,
) -> TopKFn:
    """A TopKFn ranking by constrained beam search under the hard layout.

    The history is each user's last max_len items with HARD masks; the beam search
    returns top_k (default beam_width) items, best first, -1 padding. Exclusion: ALL of a
    user's history items are excluded (not just the last max_len), so no returned item is
    a history item. Excluded leaves are masked only at the last decoding step, so beams
    spent on history items at earlier steps can leave fewer than top_k results (-1
    padding, which evaluate_topk treats as a miss); beam_width >= 10 + a margin (default
    30) keeps that rare for the top 10.
    """
    top_k = beam_width if top_k is None else top_k
    cf_all, sem_all = table.hard_masks(n_cf)
    dedup = torch.as_tensor(hard_tokens[:, -1], device=table.device)
    max_len = generator.config.max_len

    def topk(users: np.ndarray, history: Sequences) -> np.ndarray:
        del users
        seq = torch.as_tensor(history.last(max_len), device=table.device)
        hist = table.history(seq, cf_all[seq], sem_all[seq], dedup)
        hist = HistoryItems(*(x.to(device) for x in hist))
        generator.eval()
        with torch.no_grad(), autocast(device):
            items, _ = recommend_top_k(
                generator,
                hist,
                index_tensors,
                beam_width=beam_width,
                top_k=top_k,
                exclude=_padded_exclude(history, device),
            )
        return items.cpu().numpy()

    return topk


def _subsample(eval_set: EvalSet, n: int | None, seed: int) -> EvalSet:
    if n is None or n >= len(eval_set.users):
        return eval_set
    idx = np.sort(np.random.default_rng(seed).choice(len(eval_set.users), n, replace=False))
    return EvalSet(eval_set.users[idx], eval_set.history.select(idx), eval_set.targets[idx])


def _evaluate(
    generator: Generator,
    table: ItemTable,
    hard_tokens: np.ndarray,
    n_cf: np.ndarray,
    eval_set: EvalSet,
    groups: np.ndarray,
    device: torch.device,
    beam_width: int,
    desc: str,
) -> EvalResult:
    index = build_index(hard_tokens, table.layout, device)
    fn = generator_topk_fn(generator, table, hard_tokens, n_cf, index, device, beam_width)
    return evaluate_topk(fn, eval_set, groups, desc=desc)


def evaluate_generator(
    result: GeneratorResult, dataset: ProcessedDataset, device: torch.device, split: str = "test"
) -> EvalResult:
    """Full-catalog evaluation of the served model (frozen router, hard layout)."""
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    if result.table is None:
        raise ValueError("GeneratorResult has no item table")
    eval_set = dataset.test() if split == "test" else dataset.validation()
    return _evaluate(
        result.generator,
        result.table,
        result.item_tokens,
        result.n_cf,
        eval_set,
        dataset.item_groups(),
        device,
        beam_width=result.beam_width,
        desc=split,
    )


# --- training ----------------------------------------------------------------------------


class _TrainingStep(torch.nn.Module):
    """One stage-D training step's loss as a module: the router and the generator together.

    Under DDP (`training.distributed.wrap`) the wrapped module's forward must compute the
    whole loss: in phase 1 the generation loss reaches the router's parameters through the
    soft masks, so both must be one DDP model for the router's gradients to be averaged
    too. In phase 2 the router is frozen before wrapping, and DDP leaves it out.
    """

    def __init__(
        self,
        generator: Generator,
        router: Router,
        table: ItemTable,
        features: torch.Tensor,
        bands: torch.Tensor,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.router = router
        self.table = table  # not a module: codes only
        self.features = features  # (N + 1, 4) raw router features, constant
        self.bands = bands  # (N + 1,) popularity band per item, constant
        self.device = device

    def forward(
        self,
        seq: torch.Tensor,
        tgt: torch.Tensor,
        tok: torch.Tensor,
        hard_masks: tuple[torch.Tensor, torch.Tensor] | None,
        loss_scale: float,
    ) -> torch.Tensor:
        """seq, tgt: (B, T) item ids (history and next item, 0 = none); tok: (N + 1, L + 1)
        the current hard tokens; hard_masks: (N + 1, L) CF and SEM masks (phase 2), or None
        for the router's soft masks (phase 1). Returns the scalar loss: the summed
        generation loss / loss_scale, plus the router's regularisers when it learns."""
        router = self.router
        reg = None
        if hard_masks is None:
            alpha = router(self.features)  # (N + 1,) with gradients (learned router)
            cf_m, sem_m = router.soft_masks(alpha)
            if router.mlp is not None:
                reg = router.regularisers(alpha, self.features, self.bands)["total"]
        else:
            cf_m, sem_m = hard_masks
        hist = self.table.history(seq, cf_m[seq], sem_m[seq], tok[:, -1])
        with autocast(self.device):
            _, loss = self.generator(hist, tok[tgt])
        loss = loss / loss_scale
        if reg is not None:
            loss = loss + reg
        return loss


def train_generator(
    dataset: ProcessedDataset,
    tokenizer: DualTokenizer,
    codes: dict,
    router_config: RouterConfig,
    generator_config: GeneratorConfig,
    train_config: GeneratorTrainConfig,
    device: torch.device,
    progress: bool = True,
    cf_embeddings: np.ndarray | None = None,
    distributed: DistContext | None = None,
) -> GeneratorResult:
    """Stage D (module docstring). codes: load_tokenizer's dict (sem_codes, cf_codes,
    warm). generator_config's vocab_size and budget are replaced by the layout's
    vocab_size and router_config.budget. cf_embeddings: optional SASRec table for the
    router's uncertainty feature.

    distributed: under torchrun, this rank's context: each rank trains a DDP replica of
    the router + generator (phase 1) or the generator (phase 2) on its shard of the
    batches; rank 0 validates and every rank follows its early-stopping decisions; all
    ranks return the same result. The per-target loss weighting is unchanged (see
    `training.stages.sasrec.train_sasrec`); the router's regularisers are computed on
    the whole catalog, so they are the same on every rank and DDP's averaging keeps
    their weight. None: one process."""
    del progress  # logging only; kept for the runner interface
    dist_ctx = distributed or single_process(device)
    started = time.perf_counter()
    seed_everything(train_config.seed)
    budget = router_config.budget
    warm = dataset.train_counts() > 0
    warm[0] = False
    sem_codes = np.array(codes["sem_codes"], dtype=np.int64)  # copies: row 0 is reset
    cf_raw = np.array(codes["cf_codes"], dtype=np.int64)
    if budget > sem_codes.shape[1]:
        raise ValueError(f"budget {budget} exceeds the tokenizer's {sem_codes.shape[1]} levels")
    sem_codes[0] = cf_raw[0] = 0  # padding row (-1 in the tokenizer's codes)
    cf_codes = impute_cold_cf_codes(tokenizer, sem_codes, cf_raw, warm)
    layout = layout_for(
        sem_codes[1:],
        cf_codes[1:],
        budget,
        tokenizer.config.sem.codebook_size,
        train_config.dedup_slack,
    )
    table = ItemTable(cf_codes, sem_codes, budget, layout, device)
    generator_config = replace(generator_config, vocab_size=layout.vocab_size, budget=budget)

    features_np = item_features(dataset, tokenizer, {"cf_codes": cf_raw}, cf_embeddings)
    features = torch.as_tensor(features_np, device=device)
    bands = torch.as_tensor(
        popularity_bands(dataset.train_counts(), router_config.n_bands), device=device
    )
    router = Router(router_config).to(device)
    if router.mlp is not None:
        router.fit_scaler(features_np, warm)
    generator = Generator(generator_config).to(device)

    inputs, targets = training_windows(dataset.train_sequences(), generator_config.max_len)
    if len(inputs) == 0:
        raise ValueError(f"{dataset.name}: no training sequence has two or more items")
    inputs_t, targets_t = torch.as_tensor(inputs), torch.as_tensor(targets)
    lengths = (targets_t != 0).sum(dim=1)
    n_batches = math.ceil(len(inputs) / train_config.batch_size)
    loss_scale = float((targets != 0).sum()) / n_batches  # every target weighs the same
    rng = torch.Generator().manual_seed(train_config.seed)
    validation = _subsample(dataset.validation(), train_config.eval_users, train_config.seed)
    groups = dataset.item_groups()

    def current_layout() -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        with torch.no_grad():
            alpha = router(features)
            n_cf = router.hard_split(alpha).cpu().numpy()
        return n_cf, table.hard_tokens(n_cf), alpha

    step = _TrainingStep(generator, router, table, features, bands, device)
    if dist_ctx.distributed:
        # Same init on every rank (above), different dropout masks from here on.
        torch.manual_seed(train_config.seed + dist_ctx.rank)
        if dist_ctx.is_main:
            logger.info(
                "generator: %d processes (%s), %d of %d batches each per epoch",
                dist_ctx.world_size,
                dist_ctx.backend,
                math.ceil(n_batches / dist_ctx.world_size),
                n_batches,
            )

    def run_epoch(net, params, optimizer, hard_tokens, hard_masks) -> float:
        """One epoch over this rank's shard; the mean batch loss over all ranks."""
        generator.train()
        tok = torch.as_tensor(hard_tokens, device=device)
        total = 0.0
        batches = length_bucketed_batches(lengths, train_config.batch_size, rng)
        mine = shard(batches, dist_ctx)
        for batch in mine:
            width = int(lengths[batch].max())
            seq = inputs_t[batch, -width:].to(device)
            tgt = targets_t[batch, -width:].to(device)
            loss = net(seq, tgt, tok, hard_masks, loss_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train_config.grad_clip)
            optimizer.step()
            total += loss.item()
        # For one process: total / n_batches.
        return all_reduce_sum(total, dist_ctx) / (len(mine) * dist_ctx.world_size)

    def validate(hard_tokens, n_cf) -> dict[str, dict[str, float]]:
        """Rank 0's validation metrics, on every rank (so they all stop together)."""
        metrics = None
        if dist_ctx.is_main:
            metrics = _evaluate(
                generator,
                table,
                hard_tokens,
                n_cf,
                validation,
                groups,
                device,
                train_config.beam_width,
                desc="valid",
            ).metrics
        return broadcast_object(metrics, dist_ctx)

    curve: list[dict] = []

    # Phase 1: router + generator, soft masks on the history side.
    params = list(generator.parameters())
    if router.mlp is not None:
        params += list(router.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_config.lr, weight_decay=0.0)
    net = wrap(step, dist_ctx)  # the step itself for one process
    phase1 = EarlyStopping(train_config.patience)
    for epoch in range(1, train_config.max_epochs + 1):
        router.train()
        n_cf, hard_tokens, _ = current_layout()
        loss = run_epoch(net, params, optimizer, hard_tokens, None)
        if epoch % train_config.eval_every and epoch != train_config.max_epochs:
            continue
        router.eval()
        n_cf, hard_tokens, alpha = current_layout()
        metrics = validate(hard_tokens, n_cf)
        ndcg = metrics["all"]["ndcg@10"]
        curve.append(
            {
                "phase": 1,
                "epoch": epoch,
                "loss": loss,
                "valid_ndcg@10": ndcg,
                "mean_alpha": float(alpha[1:].mean()),
                "mean_n_cf": float(n_cf[1:].mean()),
            }
        )
        logger.info("generator phase 1 epoch %d: loss %.4f valid NDCG@10 %.4f", epoch, loss, ndcg)
        if phase1.update(ndcg):
            phase1.best = {
                "valid": metrics,
                "generator": copy.deepcopy(generator.state_dict()),
                "router": copy.deepcopy(router.state_dict()),
            }
        if phase1.should_stop:
            break

    # Phase 2: frozen router, fixed hard layout, hard masks.
    best = phase1.best  # the last epoch always evaluates, so phase 1 has a best
    generator.load_state_dict(best["generator"])
    router.load_state_dict(best["router"])
    broadcast_module(step, dist_ctx)  # the replicas' snapshots agree; make it certain
    router.eval()
    for p in router.parameters():
        p.requires_grad_(False)
    n_cf, hard_tokens, alpha = current_layout()
    masks = table.hard_masks(n_cf)
    params = list(generator.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_config.lr, weight_decay=0.0)
    # A new DDP wrapper: the frozen router must be left out of gradient averaging (the
    # phase-1 wrapper's hooks stay idle: they only act after a forward through it).
    del net
    net = wrap(step, dist_ctx)
    # Phase 2 must beat phase 1's best to replace the generator kept from it.
    phase2 = EarlyStopping(train_config.patience, best_score=phase1.best_score)
    for epoch in range(1, train_config.finetune_epochs + 1):
        loss = run_epoch(net, params, optimizer, hard_tokens, masks)
        if epoch % train_config.eval_every and epoch != train_config.finetune_epochs:
            continue
        metrics = validate(hard_tokens, n_cf)
        ndcg = metrics["all"]["ndcg@10"]
        curve.append({"phase": 2, "epoch": epoch, "loss": loss, "valid_ndcg@10": ndcg})
        logger.info("generator phase 2 epoch %d: loss %.4f valid NDCG@10 %.4f", epoch, loss, ndcg)
        if phase2.update(ndcg):
            phase2.best = {
                "valid": metrics,
                "generator": copy.deepcopy(generator.state_dict()),
            }
        if phase2.should_stop:
            break
    best = phase2.best or best
    generator.load_state_dict(best["generator"])
    broadcast_module(generator, dist_ctx)
    generator.eval()
    logger.info("stage D trained in %.0f s", time.perf_counter() - started)
    return GeneratorResult(
        generator=generator,
        router=router,
        item_tokens=hard_tokens,
        n_cf=n_cf,
        alpha=alpha.detach().float().cpu().numpy(),
        layout=layout,
        best_valid=best["valid"],
        curve=curve,
        table=table,
        beam_width=train_config.beam_width,
        features=features_np,
        seconds=time.perf_counter() - started,
    )


# --- artifacts ---------------------------------------------------------------------------


def save_generator(
    result: GeneratorResult,
    dataset: ProcessedDataset,
    train_config: GeneratorTrainConfig,
    out_dir: Path,
    extra: dict | None = None,
) -> None:
    """Write stage D's outputs to out_dir (what `training.export` turns into a bundle):

    generator.safetensors, router.safetensors   weights
    generator.json   configs (generator, router, layout), train config, curve, best
                     validation metrics, `extra` (e.g. the variant and test metrics)
    items.npz        (N + 1)-row arrays, row 0 = padding: external_ids (str),
                     item_tokens (N + 1, L + 1), n_cf, alpha, cf_codes (cold ones
                     imputed), sem_codes (N + 1, L_max), features (N + 1, 4) raw router
                     features, popularity (training counts), warm (bool)
    """
    if result.table is None or result.features is None:
        raise ValueError("save_generator needs a GeneratorResult from train_generator")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}

    save_file(weights(result.generator), out_dir / "generator.safetensors")
    save_file(weights(result.router), out_dir / "router.safetensors")
    counts = dataset.train_counts()
    warm = counts > 0
    warm[0] = False
    np.savez(
        out_dir / "items.npz",
        external_ids=np.asarray(dataset.item_ids, dtype=str),
        item_tokens=result.item_tokens,
        n_cf=result.n_cf,
        alpha=result.alpha,
        cf_codes=result.table.cf_codes,
        sem_codes=result.table.sem_codes,
        features=result.features,
        popularity=counts.astype(np.int64),
        warm=warm,
    )
    meta = {
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint},
        "generator_config": result.generator.config.to_dict(),
        "router_config": result.router.config.to_dict(),
        "layout": result.layout.to_dict(),
        "budget": result.router.config.budget,
        "beam_width": result.beam_width,
        "train_config": asdict(train_config),
        "best_valid": result.best_valid,
        "curve": result.curve,
        "train_seconds": result.seconds,
        **(extra or {}),
    }
    (out_dir / "generator.json").write_text(json.dumps(meta, indent=2))


def load_generator(out_dir: Path, device: torch.device) -> GeneratorResult:
    """The GeneratorResult `save_generator` wrote (modules in eval mode on `device`)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "generator.json").read_text())
    arrays = dict(np.load(out_dir / "items.npz", allow_pickle=False))
    generator = Generator(GeneratorConfig(**meta["generator_config"]))
    generator.load_state_dict(load_file(out_dir / "generator.safetensors"))
    router = Router(RouterConfig.from_dict(meta["router_config"]))
    router.load_state_dict(load_file(out_dir / "router.safetensors"))
    layout = TokenLayout.from_dict(meta["layout"])
    table = ItemTable(arrays["cf_codes"], arrays["sem_codes"], meta["budget"], layout, device)
    return GeneratorResult(
        generator=generator.to(device).eval(),
        router=router.to(device).eval(),
        item_tokens=arrays["item_tokens"],
        n_cf=arrays["n_cf"],
        alpha=arrays["alpha"],
        layout=layout,
        best_valid=meta["best_valid"],
        curve=meta["curve"],
        table=table,
        beam_width=meta["beam_width"],
        features=arrays["features"],
        seconds=meta.get("train_seconds", 0.0),
    )


# --- benchmark runners -------------------------------------------------------------------


def train_variant(
    dataset: ProcessedDataset,
    pipeline_dir: Path,
    variant: str,
    device: torch.device,
    train_config: GeneratorTrainConfig | None = None,
    generator_config: GeneratorConfig | None = None,
    distributed: DistContext | None = None,
) -> GeneratorResult:
    """Stage D for one named variant (VARIANTS) on a run directory holding stages A-C:
    <pipeline_dir>/tokenizer (or tokenizer-no-align) and, for the router's uncertainty
    feature, <pipeline_dir>/sasrec/cf_embeddings.npy. The budget is capped at the
    tokenizer's levels. distributed: see `train_generator`."""
    from training.stages.tokenizer import load_tokenizer  # stage C's artifacts

    if variant not in VARIANTS:
        raise ValueError(f"unknown FlexCode variant {variant!r}; choose from {list(VARIANTS)}")
    spec = VARIANTS[variant]
    tokenizer_dir = Path(pipeline_dir) / spec.tokenizer_dir
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"FlexCode ({variant}) needs a trained tokenizer in {tokenizer_dir}; run "
            f"`flexcode train tokenizer --run-dir {pipeline_dir}` first"
        )
    tokenizer, codes = load_tokenizer(tokenizer_dir, device)
    cf_path = Path(pipeline_dir) / "sasrec" / "cf_embeddings.npy"
    cf_emb = np.load(cf_path) if cf_path.exists() else None
    levels = int(np.asarray(codes["sem_codes"]).shape[1])
    router_config = RouterConfig(budget=min(spec.budget, levels), fixed_alpha=spec.fixed_alpha)
    generator_config = replace(
        generator_config or GeneratorConfig(vocab_size=1, budget=1),
        budget=router_config.budget,
    )
    return train_generator(
        dataset,
        tokenizer,
        codes,
        router_config,
        generator_config,
        train_config or GeneratorTrainConfig(),
        device,
        cf_embeddings=cf_emb,
        distributed=distributed,
    )


def flexcode_runner(variant: str):
    """A benchmark Runner (training.baselines.Runner) for one FlexCode variant (VARIANTS);
    reads stages A-C from context.pipeline_dir (`flexcode train tokenizer --run-dir`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown FlexCode variant {variant!r}; choose from {list(VARIANTS)}")

    def run(dataset: ProcessedDataset, seed: int, context) -> EvalResult:
        if context.pipeline_dir is None:
            raise FileNotFoundError(
                f"FlexCode ({variant}) needs --run-dir: a run of `flexcode train tokenizer`"
            )
        result = train_variant(
            dataset,
            Path(context.pipeline_dir),
            variant,
            context.device,
            replace(context.generator, seed=seed),
        )
        return evaluate_generator(result, dataset, context.device, "test")

    return run
