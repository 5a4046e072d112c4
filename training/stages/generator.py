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
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.beam_search import constrained_beam_search
from models.dual_tokenizer import DualTokenizer
from models.generator import Generator, GeneratorConfig, HistoryItems
from models.prefix_index import DeviceIndex, build_prefix_index
from models.router import Router, RouterConfig, popularity_bands, router_features
from models.tokens import CF, SEM, TokenLayout, code_sequences, item_tokens, max_dedup_needed
from training.data.preprocess import EvalSet, ProcessedDataset, Sequences
from training.device import autocast, seed_everything
from training.early_stopping import EarlyStopping
from training.evaluate import EvalResult, TopKFn, evaluate_topk
from training.stages.sasrec import length_bucketed_batches, training_windows

logger = logging.getLogger(__name__)

VARIANTS = {"full": None, "fix": 0.5, "sid-only": 0.0, "cf-only": 1.0}


@dataclass(frozen=True)
class GeneratorTrainConfig:
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 100  # phase 1 upper bound; early stopping ends runs sooner
    patience: int = 5  # evaluations without a validation NDCG@10 gain before stopping
    eval_every: int = 2  # epochs between validation passes
    finetune_epochs: int = 20  # phase 2: frozen router, hard layout, hard masks
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


@torch.no_grad()
def impute_cold_cf_codes(
    tokenizer: DualTokenizer,
    sem_codes: np.ndarray,
    cf_codes: np.ndarray,
    warm: np.ndarray,
    chunk: int = 4096,
) -> np.ndarray:
    """CF codes for every item, cold ones imputed from their nearest warm neighbour.

    An item with no training interaction has an untrained CF embedding, so its own CF
    codes carry no collaborative signal. For each cold item c (not `warm`, row 0 = padding
    excluded) we take the warm item w maximising the cosine similarity between c's aligned
    semantic projection `project_sem_codes(sem_codes[c])` and w's aligned CF projection
    `project_cf_codes(cf_codes[w])` (the CCA space: where text meets co-consumption), and
    copy w's CF codes. Brute force in chunks of `chunk` cold items (O(cold x warm)); a
    FAISS index replaces this at serving scale. Warm rows and row 0 come back unchanged.

    sem_codes, cf_codes: (N + 1, L_max) int; warm: (N + 1,) bool. Returns a new array.
    """
    sem_codes = np.asarray(sem_codes)
    cf_codes = np.asarray(cf_codes)
    warm = np.asarray(warm, dtype=bool).copy()
    warm[0] = False
    out = cf_codes.copy()
    cold = np.flatnonzero(~warm)
    cold = cold[cold > 0]
    warm_ids = np.flatnonzero(warm)
    if len(cold) == 0:
        return out
    if len(warm_ids) == 0:
        raise ValueError("cannot impute CF codes: there is no warm item")
    device = next(tokenizer.parameters()).device
    was_training = tokenizer.training
    tokenizer.eval()
    cf_points = tokenizer.project_cf_codes(torch.as_tensor(cf_codes[warm_ids], device=device))
    cf_points = torch.nn.functional.normalize(cf_points.float(), dim=1)  # (W, P)
    for start in range(0, len(cold), chunk):
        ids = cold[start : start + chunk]
        sem_points = tokenizer.project_sem_codes(torch.as_tensor(sem_codes[ids], device=device))
        sem_points = torch.nn.functional.normalize(sem_points.float(), dim=1)  # (C, P)
        nearest = (sem_points @ cf_points.T).argmax(dim=1).cpu().numpy()  # (C,)
        out[ids] = cf_codes[warm_ids[nearest]]
    tokenizer.train(was_training)
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


class ItemTable:
    """Per-item code tokens of the first L levels of both codebooks, on one device.

    cf_codes, sem_codes: (N + 1, L_max) codes (row 0 = padding, any value); budget L.
    cf_tokens, sem_tokens: (N + 1, L) int64 tensors via layout.code_token, row 0 = PAD.
    """

    def __init__(
        self,
        cf_codes: np.ndarray,
        sem_codes: np.ndarray,
        budget: int,
        layout: TokenLayout,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cf_codes = np.asarray(cf_codes, dtype=np.int64).copy()
        self.sem_codes = np.asarray(sem_codes, dtype=np.int64).copy()
        self.cf_codes[0] = 0
        self.sem_codes[0] = 0
        self.budget = budget
        self.layout = layout
        self.device = torch.device(device)
        levels = np.arange(budget)[None, :]
        cf_tok = layout.code_token(CF, levels, self.cf_codes[:, :budget])
        sem_tok = layout.code_token(SEM, levels, self.sem_codes[:, :budget])
        cf_tok[0] = sem_tok[0] = 0
        self.cf_tokens = torch.as_tensor(cf_tok, device=self.device)
        self.sem_tokens = torch.as_tensor(sem_tok, device=self.device)

    @property
    def n_rows(self) -> int:
        return self.cf_codes.shape[0]

    def hard_tokens(self, n_cf: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N + 1,) n_cf -> (N + 1, L + 1) int64 item tokens with dedup (row 0 = zeros)."""
        n_cf = np.asarray(n_cf.cpu() if isinstance(n_cf, torch.Tensor) else n_cf, dtype=np.int64)
        out = np.zeros((self.n_rows, self.budget + 1), dtype=np.int64)
        out[1:] = item_tokens(
            self.cf_codes[1:], self.sem_codes[1:], n_cf[1:], self.budget, self.layout
        )
        return out

    def hard_masks(self, n_cf: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N + 1,) n_cf -> (cf_mask, sem_mask) (N + 1, L) float 0/1 (Router.hard_masks)."""
        n_cf = torch.as_tensor(np.asarray(n_cf), device=self.device)[:, None]
        k = torch.arange(1, self.budget + 1, device=self.device)
        return (k <= n_cf).float(), (k <= self.budget - n_cf).float()

    def history(
        self,
        items: torch.Tensor,
        cf_mask: torch.Tensor,
        sem_mask: torch.Tensor,
        dedup_tokens: torch.Tensor,
    ) -> HistoryItems:
        """items: (B, T) item ids (0 = padding); cf_mask, sem_mask: (B, T, L) masks of those
        items; dedup_tokens: (N + 1,) each item's dedup token under the current layout.
        Padding positions get zero masks and token 0."""
        valid = (items != 0)[..., None].to(cf_mask.dtype)
        return HistoryItems(
            cf_tokens=self.cf_tokens[items],
            sem_tokens=self.sem_tokens[items],
            cf_mask=cf_mask * valid,
            sem_mask=sem_mask * valid,
            dedup_tokens=dedup_tokens[items],
        )


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
            states = generator.user_state(hist)

            def step(tokens: torch.Tensor, state):
                return generator.next_token_log_probs(states, tokens[:, :, 1:]), state

            items, _, _ = constrained_beam_search(
                step,
                index_tensors,
                batch_size=len(seq),
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
) -> GeneratorResult:
    """Stage D (module docstring). codes: load_tokenizer's dict (sem_codes, cf_codes,
    warm). generator_config's vocab_size and budget are replaced by the layout's
    vocab_size and router_config.budget. cf_embeddings: optional SASRec table for the
    router's uncertainty feature."""
    del progress  # logging only; kept for the runner interface
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

    def run_epoch(params, optimizer, hard_tokens, hard_masks) -> float:
        generator.train()
        tok = torch.as_tensor(hard_tokens, device=device)
        dedup = tok[:, -1]
        total = 0.0
        for batch in length_bucketed_batches(lengths, train_config.batch_size, rng):
            width = int(lengths[batch].max())
            seq = inputs_t[batch, -width:].to(device)
            tgt = targets_t[batch, -width:].to(device)
            reg = None
            if hard_masks is None:
                alpha = router(features)  # (N + 1,) with gradients (learned router)
                cf_m, sem_m = router.soft_masks(alpha)
                if router.mlp is not None:
                    reg = router.regularisers(alpha, features, bands)["total"]
            else:
                cf_m, sem_m = hard_masks
            hist = table.history(seq, cf_m[seq], sem_m[seq], dedup)
            with autocast(device):
                _, loss = generator(hist, tok[tgt])
            loss = loss / loss_scale
            if reg is not None:
                loss = loss + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train_config.grad_clip)
            optimizer.step()
            total += loss.item()
        return total / n_batches

    def validate(hard_tokens, n_cf) -> EvalResult:
        return _evaluate(
            generator,
            table,
            hard_tokens,
            n_cf,
            validation,
            groups,
            device,
            train_config.beam_width,
            desc="valid",
        )

    curve: list[dict] = []

    # Phase 1: router + generator, soft masks on the history side.
    params = list(generator.parameters())
    if router.mlp is not None:
        params += list(router.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_config.lr, weight_decay=0.0)
    phase1 = EarlyStopping(train_config.patience)
    for epoch in range(1, train_config.max_epochs + 1):
        router.train()
        n_cf, hard_tokens, _ = current_layout()
        loss = run_epoch(params, optimizer, hard_tokens, None)
        if epoch % train_config.eval_every and epoch != train_config.max_epochs:
            continue
        router.eval()
        n_cf, hard_tokens, alpha = current_layout()
        result = validate(hard_tokens, n_cf)
        ndcg = result.metrics["all"]["ndcg@10"]
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
                "valid": result.metrics,
                "generator": copy.deepcopy(generator.state_dict()),
                "router": copy.deepcopy(router.state_dict()),
            }
        if phase1.should_stop:
            break

    # Phase 2: frozen router, fixed hard layout, hard masks.
    best = phase1.best  # the last epoch always evaluates, so phase 1 has a best
    generator.load_state_dict(best["generator"])
    router.load_state_dict(best["router"])
    router.eval()
    for p in router.parameters():
        p.requires_grad_(False)
    n_cf, hard_tokens, alpha = current_layout()
    masks = table.hard_masks(n_cf)
    params = list(generator.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_config.lr, weight_decay=0.0)
    # Phase 2 must beat phase 1's best to replace the generator kept from it.
    phase2 = EarlyStopping(train_config.patience, best_score=phase1.best_score)
    for epoch in range(1, train_config.finetune_epochs + 1):
        loss = run_epoch(params, optimizer, hard_tokens, masks)
        if epoch % train_config.eval_every and epoch != train_config.finetune_epochs:
            continue
        result = validate(hard_tokens, n_cf)
        ndcg = result.metrics["all"]["ndcg@10"]
        curve.append({"phase": 2, "epoch": epoch, "loss": loss, "valid_ndcg@10": ndcg})
        logger.info("generator phase 2 epoch %d: loss %.4f valid NDCG@10 %.4f", epoch, loss, ndcg)
        if phase2.update(ndcg):
            phase2.best = {
                "valid": result.metrics,
                "generator": copy.deepcopy(generator.state_dict()),
            }
        if phase2.should_stop:
            break
    best = phase2.best or best
    generator.load_state_dict(best["generator"])
    generator.eval()
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
    )


# --- benchmark runners -------------------------------------------------------------------


def flexcode_runner(variant: str, budget: int = 5):
    """A benchmark Runner (training.baselines.Runner) for one FlexCode variant:
    "full" (learned router), "fix" (alpha 0.5), "sid-only" (0), "cf-only" (1).

    Needs context.pipeline_dir with a trained tokenizer in <pipeline_dir>/tokenizer (and
    uses <pipeline_dir>/sasrec/cf_embeddings.npy for the uncertainty feature when present).
    The budget is capped at the tokenizer's levels.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown FlexCode variant {variant!r}; choose from {list(VARIANTS)}")

    def run(dataset: ProcessedDataset, seed: int, context) -> EvalResult:
        from training.stages.tokenizer import load_tokenizer

        run_dir = None if context.pipeline_dir is None else Path(context.pipeline_dir)
        if run_dir is None or not (run_dir / "tokenizer" / "tokenizer.json").exists():
            raise FileNotFoundError(
                f"FlexCode ({variant}) needs a trained tokenizer in <run-dir>/tokenizer "
                f"(run-dir={run_dir}); run `flexcode train tokenizer --run-dir ...` first"
            )
        tokenizer, codes = load_tokenizer(run_dir / "tokenizer", context.device)
        cf_path = run_dir / "sasrec" / "cf_embeddings.npy"
        cf_emb = np.load(cf_path) if cf_path.exists() else None
        levels = int(np.asarray(codes["sem_codes"]).shape[1])
        router_config = RouterConfig(budget=min(budget, levels), fixed_alpha=VARIANTS[variant])
        generator_config = GeneratorConfig(vocab_size=1, budget=router_config.budget)
        result = train_generator(
            dataset,
            tokenizer,
            codes,
            router_config,
            generator_config,
            GeneratorTrainConfig(seed=seed),
            context.device,
            context.progress,
            cf_embeddings=cf_emb,
        )
        return evaluate_generator(result, dataset, context.device, "test")

    return run
