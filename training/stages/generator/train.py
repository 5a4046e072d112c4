"""Stage D training: the router (PATA) and the generator (ARG), jointly, with the loop
shared with SASRec (`training.loop.fit`).

Every step:
  - a random share `id_dropout` of the catalogue is written as a NEW item would be: id
    embedding dropped and the router's split of an item without interactions (its
    count read as 0), in the inputs and as targets alike. These are the synthetic cold
    items that teach the model to rank an item it knows only by its codes and text;
  - the router gives every item's alpha, which weights the item's CF and semantic code
    embeddings in its vector (`Router.code_weights`), so the router's slope is trained by
    the next-item losses (dense and generative) of the items it routes, plus its load
    balancing;
  - loss = dense cross-entropy + generative_weight * (-log P_gen(target)), summed over
    target positions; P_gen under the restricted softmax of the current hard layout. The
    dense cross-entropy is over the whole catalogue below 20k items and sampled (in-batch
    + shared negatives, logQ-corrected; `models.sampled_softmax`) from there on, as
    SASRec's (the config's `loss`).

Before every epoch the hard layout (n_cf per item, served tokens, prefix index) is
rebuilt from the router, so generative targets follow the router as it moves. The
snapshot of the best validation epoch keeps weights AND that epoch's layout, so what is
saved is exactly what was measured. Each epoch's validation runs the served decoding
(beam search + dense candidates, `evaluate.evaluate_served`) at a grid of dense weights w
(the candidates do not depend on w) and early stopping follows the best of them; the w of
the best epoch is the one the model ships with.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from models.config import check_positive_ints, check_range
from models.decoding import Catalogue, DecodingConfig
from models.device_index import DeviceIndex
from models.generator import Generator, GeneratorConfig
from models.path_tables import PathTables, build_path_tables
from models.prefix_index import build_prefix_index
from models.router import Router, RouterConfig, popularity_bands
from training.data.preprocess import ProcessedDataset
from training.device import seed_everything
from training.distributed import DistContext, broadcast_module, broadcast_object, single_process
from training.evaluate import subsample
from training.loop import LoopConfig, fit, training_windows
from training.stages.generator.evaluate import ServedModel, evaluate_served
from training.stages.generator.inputs import ItemInputs

logger = logging.getLogger(__name__)

# The dense weight w of the served score, searched on validation. Near 1 the grid is finer:
# there a little generative evidence reorders the dense head's close calls.
DENSE_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class GeneratorTrainConfig(LoopConfig):
    # Share of items written as new items in a step (no id, cold split). 0.1 keeps warm
    # accuracy (ML-100K validation) while giving the id-free path enough targets.
    id_dropout: float = 0.1
    # Popularity-aware id dropout (None = off, every item at id_dropout): the least popular
    # item is dropped at this rate, the most popular at id_dropout, linearly in popularity
    # rank between, so tail items lean on their codes and text, which they share with
    # better-trained neighbours. A variant (`tail-id-dropout`), not the default.
    id_dropout_tail: float | None = None
    generative_weight: float = 1.0  # weight of -log P_gen beside the dense cross-entropy
    beam_width: int = 50  # generative candidates per request (validation and serving)
    dense_candidates: int = 50  # dense-head candidates per request
    dense_weights: tuple[float, ...] = DENSE_WEIGHT_GRID  # w grid searched on validation
    # Validation users per epoch (a fixed random subsample above this; None = all). The
    # served decoding costs ~10 ms per user on a CPU core; ML-100K's 943 are all used.
    eval_users: int | None = 5000
    use_text: bool = True  # item vectors add a projection of the text embedding
    # Spare dedup ids per code prefix beyond what the training catalogue needs, for cold
    # items added at serving time.
    dedup_slack: int = 8
    # Each user's last training items left out of stage D (0 = none): a validation history
    # is otherwise the training sequence verbatim, a context the generative head remembers,
    # which makes validation overrate it (BENCHMARKS.md, "Does the generative head add to
    # the dense one?"). A variant (`val-gap`), not the default.
    validation_gap: int = 0
    # Share of history input positions masked in a training step (a zero item vector in
    # place of the item; targets unchanged), so no training context is seen verbatim
    # twice: a candidate against the generative head remembering contexts. 0 = off; a
    # variant (`history-mask`), not the default.
    history_mask: float = 0.0
    # Candidate values of the generator's dropout (GeneratorConfig.dropout), each trained
    # in full from the same seed and chosen on validation NDCG@10, as w is: which rate
    # generalises changes with the data, the stage A-C run and the seed (0.1 or 0.2 on
    # the synthetic 10k catalogue, 0.005-0.010 NDCG@10 apart; BENCHMARKS.md, "The dropout
    # chosen on validation"). Stage D's cost is multiplied by the grid's length. () =
    # the generator config's own rate (the default; variant `dropout-choice`: 0.1, 0.2).
    dropout_grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "id_dropout", 0.0, 1.0, high_open=True)
        if self.id_dropout_tail is not None:
            check_range(self, "id_dropout_tail", 0.0, 1.0, high_open=True)
        check_range(self, "generative_weight", 0)
        check_positive_ints(self, "beam_width", "dense_candidates")
        check_range(self, "eval_users", 1, optional=True, integer=True, hint="(None = all)")
        check_range(self, "dedup_slack", 0, integer=True)
        check_range(self, "validation_gap", 0, integer=True)
        check_range(self, "history_mask", 0.0, 1.0, high_open=True)
        if not all(0.0 <= p < 1.0 for p in self.dropout_grid):
            raise ValueError(f"dropout_grid values must be in [0, 1), got {self.dropout_grid}")
        if len(set(self.dropout_grid)) != len(self.dropout_grid):
            raise ValueError(f"dropout_grid has a repeated value: {self.dropout_grid}")
        if not self.dense_weights or not all(0.0 <= w <= 1.0 for w in self.dense_weights):
            raise ValueError(
                f"dense_weights must be a non-empty grid in [0, 1], got {self.dense_weights}"
            )


@dataclass
class Layout:
    """A hard layout: the router's split and what follows from it."""

    alpha: np.ndarray  # (N + 1,) float32 CF share
    n_cf: np.ndarray  # (N + 1,) int64
    item_tokens: np.ndarray  # (N + 1, L + 1) int64 served tokens

    def index(self, vocab_size: int, device: torch.device) -> DeviceIndex:
        rows = np.arange(1, len(self.n_cf))
        return build_prefix_index(self.item_tokens[1:], rows, vocab_size).to_tensors(device)

    def paths(self, device: torch.device) -> PathTables:
        return build_path_tables(self.item_tokens, np.arange(1, len(self.n_cf)), device)


@dataclass
class GeneratorResult:
    generator: Generator
    router: Router
    inputs: ItemInputs
    layout: Layout
    decoding: DecodingConfig  # dense weight chosen on validation
    best_valid: dict[str, dict[str, float]]
    valid_by_weight: dict[str, dict[str, dict[str, float]]]  # w -> metrics, best epoch
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = True
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    generative: bool = True  # False: trained without the generative head (an ablation)
    # With GeneratorTrainConfig.dropout_grid: the models trained at the other rates (the
    # chosen one is this result), and validation NDCG@10 by rate.
    unchosen: list[GeneratorResult] = field(default_factory=list)
    valid_by_dropout: dict[str, float] = field(default_factory=dict)

    @property
    def valid_ndcg(self) -> float:
        return float(self.best_valid["all"]["ndcg@10"])

    def served(self, device: torch.device) -> ServedModel:
        return served_model(
            self.generator, self.router, self.inputs, self.layout, self.decoding, device
        )


def hard_layout(router: Router, inputs: ItemInputs, device: torch.device) -> Layout:
    with torch.no_grad():
        alpha = router(torch.as_tensor(inputs.counts, device=device))
    n_cf = router.hard_split(alpha).cpu().numpy()
    return Layout(alpha.float().cpu().numpy(), n_cf, inputs.item_tokens(n_cf))


def served_model(
    generator: Generator,
    router: Router,
    inputs: ItemInputs,
    layout: Layout,
    decoding: DecodingConfig,
    device: torch.device,
) -> ServedModel:
    with torch.no_grad():
        features = inputs.features(device).weighted(
            router.code_weights(torch.as_tensor(layout.alpha, device=device))
        )
        vectors = generator.item_vectors(features)
    catalogue = Catalogue(
        item_vectors=vectors,
        item_tokens=torch.as_tensor(layout.item_tokens, device=device),
        index=layout.index(inputs.layout.vocab_size, device),
        id_free=torch.as_tensor(~inputs.warm, device=device),
    )
    return ServedModel(generator, catalogue, decoding, layout.paths(device))


def id_drop_rates(counts: np.ndarray, config: GeneratorTrainConfig) -> np.ndarray:
    """(N + 1,) float32 per-item id dropout rate: config.id_dropout for every item, or
    with id_dropout_tail from that rate for the least popular item down to id_dropout for
    the most popular, linear in popularity rank (ties share their mean rank)."""
    n = len(counts)
    if config.id_dropout_tail is None or n < 2:
        return np.full(n, config.id_dropout, dtype=np.float32)
    _, inverse, size = np.unique(counts, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(size) - size + (size - 1) / 2  # of each distinct count
    rank = mean_rank[inverse] / (n - 1)  # 0 = least popular, 1 = most
    rate = config.id_dropout_tail + (config.id_dropout - config.id_dropout_tail) * rank
    return rate.astype(np.float32)


class GeneratorStep(torch.nn.Module):
    """One training step's loss (module docstring) with the router and the generator
    inside, so DDP averages both's gradients. `set_layout` installs an epoch's layout."""

    def __init__(
        self,
        generator: Generator,
        router: Router,
        inputs: ItemInputs,
        config: GeneratorTrainConfig,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.router = router
        self.config = config
        self.features = inputs.features(device)
        self.counts = torch.as_tensor(inputs.counts, dtype=torch.float32, device=device)
        self.bands = torch.as_tensor(popularity_bands(inputs.counts, router.config.n_bands))
        self.bands = self.bands.to(device)
        drop_rate = id_drop_rates(inputs.counts, config)
        self.drop_rate = torch.as_tensor(drop_rate, device=device)
        self.drops_ids = bool((drop_rate > 0).any())  # decided once, not per step
        self.paths: PathTables | None = None
        # The dense head's loss: None (full softmax) below the config's catalogue line.
        self.dense_loss = config.sampled_softmax(inputs.counts, device)

    def set_layout(self, layout: Layout) -> None:
        self.paths = layout.paths(self.counts.device)

    def forward(
        self, seq: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed next-item loss, router regulariser as a per-target mean)."""
        counts, keep = self.counts, None
        if self.training and self.drops_ids:
            keep = (torch.rand(counts.shape, device=counts.device) >= self.drop_rate).float()
            counts = counts * keep  # a dropped item gets the split of a new item
        alpha = self.router(counts)
        features = self.features.weighted(self.router.code_weights(alpha))
        generative = self.config.generative_weight > 0
        history_keep = None
        if self.training and self.config.history_mask > 0:
            history_keep = torch.rand(seq.shape, device=seq.device) >= self.config.history_mask
            history_keep = history_keep.float()
        losses = self.generator(
            seq,
            targets,
            features,
            self.paths if generative else None,
            keep,
            self.dense_loss,
            history_keep,
        )
        total = losses["dense"]
        if generative:
            total = total + self.config.generative_weight * losses["generative"]
        full_alpha = alpha if keep is None else self.router(self.counts)
        return total, self.router.load_balance(full_alpha[1:], self.bands[1:])


def train_generator(
    dataset: ProcessedDataset,
    inputs: ItemInputs,
    router_config: RouterConfig,
    generator_config: GeneratorConfig,
    train_config: GeneratorTrainConfig,
    device: torch.device,
    progress: bool = True,
    distributed: DistContext | None = None,
    id_init: np.ndarray | None = None,
) -> GeneratorResult:
    """Train stage D (module docstring); returns the best validation epoch's model with its
    layout and the dense weight chosen on validation; with a dropout grid, the model of
    the rate whose best validation NDCG@10 is highest (ties: the first in the grid), the
    others kept in `unchosen`. distributed: see `training.loop.fit` (every rank trains;
    rank 0 validates; all return the same result). id_init: an (N + 1, hidden) table the
    id embeddings start from (stage A's item table), instead of the random
    initialisation."""
    if train_config.dropout_grid:
        single = replace(train_config, dropout_grid=())
        results = []
        for rate in train_config.dropout_grid:
            logger.info("generator: dropout %.2f of the grid %s", rate, train_config.dropout_grid)
            config = replace(generator_config, dropout=rate)
            results.append(
                train_generator(
                    dataset,
                    inputs,
                    router_config,
                    config,
                    single,
                    device,
                    progress,
                    distributed,
                    id_init,
                )
            )
        return _chosen_on_validation(results, train_config.dropout_grid)

    dist_ctx = distributed or single_process(device)
    seed_everything(train_config.seed)
    if router_config.budget != inputs.budget:
        raise ValueError(f"router budget {router_config.budget} != inputs budget {inputs.budget}")
    generator_config = replace(
        generator_config,
        vocab_size=inputs.layout.vocab_size,
        budget=inputs.budget,
        n_ids=inputs.n_rows,
        code_levels=inputs.budget,
        text_dim=0 if inputs.text is None else int(inputs.text.shape[1]),
    )
    router = Router(router_config).to(device)
    if router.learned:
        router.init_slope(inputs.counts)
    generator = Generator(generator_config).to(device)
    if id_init is not None:
        generator.init_id_embeddings(id_init)
    step = GeneratorStep(generator, router, inputs, train_config, device)
    if dist_ctx.distributed:
        torch.manual_seed(train_config.seed + dist_ctx.rank)  # same init, own dropout masks
    windows = training_windows(
        dataset.train_sequences(train_config.validation_gap), generator_config.max_len
    )
    validation = subsample(dataset.validation(), train_config.eval_users, train_config.seed)
    groups = dataset.item_groups()
    decoding = DecodingConfig(
        beam_width=train_config.beam_width,
        dense_candidates=train_config.dense_candidates,
        dense_weight=train_config.dense_weights[0],
    )
    current: dict = {}

    def before_epoch(epoch: int) -> None:
        current["layout"] = hard_layout(router, inputs, device)
        step.set_layout(current["layout"])

    def validate() -> dict:
        # The served decoding itself, at every w of the grid (one candidate search).
        layout = hard_layout(router, inputs, device)  # the router may have moved this epoch
        served = served_model(generator, router, inputs, layout, decoding, device)
        found = evaluate_served(
            served, validation, groups, train_config.dense_weights, desc="valid"
        )
        current["weight"] = found.chosen_weight()
        current["valid_by_weight"] = {str(w): r.metrics for w, r in found.results.items()}
        return found.results[found.schedule_weight()].metrics

    def snapshot() -> dict:
        # Called on every rank; validation (hence the chosen w) happened on rank 0 only.
        weight, by_weight = broadcast_object(
            (current.get("weight"), current.get("valid_by_weight")), dist_ctx
        )
        return {
            "generator": copy.deepcopy(generator.state_dict()),
            "router": copy.deepcopy(router.state_dict()),
            "layout": hard_layout(router, inputs, device),  # what validation measured
            "weight": weight,
            "valid_by_weight": by_weight,
        }

    run = fit(
        step,
        windows,
        train_config,
        validate,
        snapshot,
        device,
        desc="generator",
        progress=progress,
        distributed=dist_ctx,
        before_epoch=before_epoch,
    )
    best = run.best
    generator.load_state_dict(best["generator"])
    router.load_state_dict(best["router"])
    broadcast_module(step, dist_ctx)
    generator.eval()
    router.eval()
    w, by_weight = best["weight"], best["valid_by_weight"]
    logger.info(
        "generator: dense weight %.2f chosen on validation (NDCG@10 by weight: %s)",
        w,
        {k: round(v["all"]["ndcg@10"], 4) for k, v in by_weight.items()},
    )
    return GeneratorResult(
        generator=generator,
        router=router,
        inputs=inputs,
        layout=best["layout"],
        decoding=replace(decoding, dense_weight=float(w)),
        best_valid=by_weight[str(w)],
        valid_by_weight=by_weight,
        best_epoch=run.best_epoch,
        epochs_run=run.epochs_run,
        stopped_early=run.stopped_early,
        curve=run.curve,
        seconds=run.seconds,
        generative=train_config.generative_weight > 0,
    )


def _chosen_on_validation(
    results: list[GeneratorResult], grid: tuple[float, ...]
) -> GeneratorResult:
    """The model, one per dropout of the grid, whose validation NDCG@10 at its shipped w
    is highest (the first of equal maxima); the others kept in `unchosen`."""
    scores = [r.valid_ndcg for r in results]  # the same on every rank (broadcast in fit)
    best = int(np.argmax(scores))
    chosen = results[best]
    chosen.unchosen = [r for i, r in enumerate(results) if i != best]
    chosen.valid_by_dropout = {str(rate): score for rate, score in zip(grid, scores, strict=True)}
    logger.info(
        "generator: dropout %.2f chosen on validation (NDCG@10 by dropout: %s)",
        grid[best],
        {k: round(v, 4) for k, v in chosen.valid_by_dropout.items()},
    )
    return chosen
