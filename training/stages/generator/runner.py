"""Stage D on a run directory (stages A-C done), for one named variant; and the benchmark
runner that trains a variant and measures it on the test split."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.generator import GeneratorConfig
from models.router import RouterConfig
from training.alpha_report import alpha_summary
from training.data.preprocess import ProcessedDataset
from training.distributed import DistContext
from training.evaluate import NEW_ITEM_SHARES, EvalResult, share_row, subsample
from training.stages.generator.evaluate import DENSE_ONLY, evaluate_exact, evaluate_served
from training.stages.generator.inputs import build_item_inputs
from training.stages.generator.train import (
    GeneratorResult,
    GeneratorTrainConfig,
    train_generator,
)
from training.stages.generator.variants import variant as lookup_variant

logger = logging.getLogger(__name__)


def default_generator_config() -> GeneratorConfig:
    """The shipped architecture; the catalogue-dependent fields are set by
    `train_generator` from the item inputs."""
    return GeneratorConfig(vocab_size=1, budget=1, n_ids=1, code_levels=1)


def train_variant(
    dataset: ProcessedDataset,
    pipeline_dir: Path,
    variant: str,
    device: torch.device,
    train_config: GeneratorTrainConfig | None = None,
    generator_config: GeneratorConfig | None = None,
    distributed: DistContext | None = None,
    text_embeddings: np.ndarray | None = None,
    progress: bool = True,
) -> GeneratorResult:
    """Stage D for one named variant (`variants.VARIANTS`) on a run directory holding
    stages A-C: <pipeline_dir>/tokenizer (or tokenizer-no-align). text_embeddings:
    stage B's (N + 1, D) table when the generator reads text (None: codes and ids only)."""
    from training.stages.tokenizer import load_tokenizer  # stage C's artifacts

    spec = lookup_variant(variant)
    tokenizer_dir = Path(pipeline_dir) / spec.tokenizer_dir
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"FlexCode ({variant}) needs a trained tokenizer in {tokenizer_dir}; run "
            f"`flexcode train tokenizer --run-dir {pipeline_dir}` first"
        )
    train_config = train_config or GeneratorTrainConfig()
    if not spec.generative:
        train_config = replace(train_config, generative_weight=0.0, dense_weights=(DENSE_ONLY,))
    if spec.id_dropout_tail is not None:
        train_config = replace(train_config, id_dropout_tail=spec.id_dropout_tail)
    if spec.validation_gap:
        train_config = replace(train_config, validation_gap=spec.validation_gap)
    if spec.history_mask:
        train_config = replace(train_config, history_mask=spec.history_mask)
    if spec.dropout_grid:
        train_config = replace(train_config, dropout_grid=spec.dropout_grid)
    tokenizer, codes = load_tokenizer(tokenizer_dir, device)
    levels = int(np.asarray(codes["sem_codes"]).shape[1])
    budget = min(spec.budget, levels)
    inputs = build_item_inputs(
        dataset, tokenizer, codes, budget, text_embeddings, train_config.dedup_slack
    )
    router_config = RouterConfig(budget=budget, fixed_alpha=spec.fixed_alpha)
    generator_config = generator_config or default_generator_config()
    if spec.new_item_embedding:
        generator_config = replace(generator_config, new_item_embedding=True)
    if spec.id_gate:
        generator_config = replace(generator_config, id_gate=True)
    if spec.dropout is not None:
        generator_config = replace(generator_config, dropout=spec.dropout)
    if spec.n_layers is not None:
        generator_config = replace(generator_config, n_layers=spec.n_layers)
    if spec.decoder_state_dropout:
        generator_config = replace(
            generator_config, decoder_state_dropout=spec.decoder_state_dropout
        )
    if spec.history_profile:
        generator_config = replace(generator_config, history_profile=True)
    id_init = None
    if spec.id_init_from_sasrec:
        id_init = np.load(Path(pipeline_dir) / "sasrec" / "cf_embeddings.npy")
    return train_generator(
        dataset,
        inputs,
        router_config,
        generator_config,
        train_config,
        device,
        progress=progress,
        distributed=distributed,
        id_init=id_init,
    )


def router_report(result: GeneratorResult) -> dict:
    """What the router did: Spearman(alpha, log count) over warm items, a new item's
    alpha, the learned slope, and the share of items per number of CF tokens."""
    counts = result.inputs.counts
    summary = alpha_summary(result.layout.alpha, counts, result.layout.n_cf)
    with torch.no_grad():
        device = result.router.device
        new_alpha = float(result.router(torch.zeros(1, device=device))[0])
    n_cf = result.layout.n_cf[1:]
    return {
        "spearman_alpha_vs_log_count": summary["spearman_alpha_vs_log_count"],
        "new_item_alpha": new_alpha,
        "slope": float(result.router.slope.detach()) if result.router.learned else 0.0,
        "share_by_n_cf": {
            str(k): float((n_cf == k).mean()) for k in range(result.inputs.budget + 1)
        },
    }


def report_on_test_split(
    result: GeneratorResult,
    dataset: ProcessedDataset,
    device: torch.device,
    exact: bool = True,
    test_users: int | None = None,
) -> tuple[dict[str, EvalResult], dict]:
    """The served model on the test split, and each part alone:

    ""            the served mixed score at the dense weight chosen on validation
    "dense"       the dense head alone (w = 1), "generative" the generative head alone (w = 0)
    "exact"       the served mixed score over the WHOLE catalogue, no beam search
    "generative-exact"  the generative head alone over the whole catalogue: against
                  "generative", what the beam search loses (the served score at w = 1
                  runs no beam search, so "exact" alone cannot show it)
    "share-0.1", "share-0.2"  the served score with that new-item share, when some items
                  have no id (the cold-holdout protocol)
    "dropout-0.1", ...  with a dropout grid: the model trained at each rate, served at its
                  own w (one of them is the served model, ""; the others are what the
                  choice passed over)
    test_users: a fixed random sample of that many test users (None: every user, what
    every benchmark uses). Returns (those results, diagnostics: per-w coverage, tail
    share and short lists)."""
    served = result.served(device)
    test, groups = subsample(dataset.test(), test_users, seed=0), dataset.item_groups()
    w = served.decoding.dense_weight
    if not result.generative:  # the dense-only ablation: one head to report
        found = evaluate_served(served, test, groups, (DENSE_ONLY,), desc="test")
        diagnostics = {"dense_weight": w, "served": found.diagnostics[DENSE_ONLY]}
        return {"": found.results[DENSE_ONLY]}, diagnostics
    weights = tuple(sorted({w, 0.0, DENSE_ONLY}))
    found = evaluate_served(served, test, groups, weights, desc="test")
    results = {
        "": found.results[w],
        "dense": found.results[DENSE_ONLY],
        "generative": found.results[0.0],
    }
    diagnostics = {
        "dense_weight": w,
        "served": found.diagnostics[w],
        "dense": found.diagnostics[DENSE_ONLY],
        "generative": found.diagnostics[0.0],
        "router": router_report(result),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
    }
    if result.valid_by_dropout:
        diagnostics["valid_by_dropout"] = result.valid_by_dropout
        diagnostics["dropout"] = result.generator.config.dropout
        results[dropout_row(result)] = results[""]
        for other in result.unchosen:
            w_other = other.decoding.dense_weight
            found = evaluate_served(other.served(device), test, groups, (w_other,), desc="test")
            results[dropout_row(other)] = found.results[w_other]
    if exact:
        by_weight = evaluate_exact(served, test, groups, tuple(sorted({w, 0.0})))
        results["exact"], results["generative-exact"] = by_weight[w], by_weight[0.0]
    if bool(served.catalogue.id_free[1:].any()):  # items without an id: the exposure knob
        for share in NEW_ITEM_SHARES:
            shared = replace(served, decoding=replace(served.decoding, new_item_share=share))
            found = evaluate_served(shared, test, groups, (w,), desc=f"test {share_row(share)}")
            results[share_row(share)] = found.results[w]
            diagnostics[share_row(share)] = found.diagnostics[w]
    return results, diagnostics


def dropout_row(result: GeneratorResult) -> str:
    return f"dropout-{result.generator.config.dropout:g}"


def flexcode_runner(variant: str):
    """A benchmark runner (training.baselines.Runner) for one FlexCode variant; reads
    stages A-C from context.pipeline_dir (`flexcode train tokenizer --run-dir`)."""
    lookup_variant(variant)  # unknown names fail when the plan is made, not mid-run

    def run(dataset: ProcessedDataset, seed: int, context):
        from training.pipeline import ensure_semantic_embeddings

        if context.pipeline_dir is None:
            raise FileNotFoundError(
                f"FlexCode ({variant}) needs --run-dir: a run of `flexcode train tokenizer`"
            )
        train_config = replace(context.generator, seed=seed)
        text = (
            ensure_semantic_embeddings(dataset, context.device) if train_config.use_text else None
        )
        result = train_variant(
            dataset,
            Path(context.pipeline_dir),
            variant,
            context.device,
            train_config,
            text_embeddings=text,
            progress=context.progress,
        )
        return report_on_test_split(result, dataset, context.device, exact=context.exact_rows)

    return run
