"""The training pipeline as stages over one run directory.

    data -> A: SASRec (CF embeddings) -> B: text encoder (semantic embeddings)
         -> C: dual tokenizer (codes) -> D: router + generator -> export (bundle)

`run_pipeline` at the bottom is the whole way, top to bottom. Each stage reuses what an
earlier run left in the run directory (or the cache) and computes only what is missing,
so a pipeline run is resumable stage by stage.

Under torchrun (a `training.distributed.DistContext` passed as `distributed`), stages A
and D train on every rank (DDP); stages B and C are small and run on rank 0 alone. Rank 0
writes every artifact; the other ranks wait at a barrier and read them back. The run
directory must be a filesystem every rank sees (one node: any local path).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.sasrec import SASRecConfig
from models.text_encoder import TextEncoder, TextEncoderConfig
from training.alpha_report import alpha_summary, plot_alpha
from training.data import DEFAULT_CACHE_DIR
from training.data.preprocess import ProcessedDataset, warm_mask
from training.distributed import DistContext, barrier, single_process
from training.evaluate import EvalResult
from training.stages.generator import (
    SHIPPED,
    GeneratorResult,
    GeneratorTrainConfig,
    report_on_test_split,
    save_generator,
    train_variant,
)
from training.stages.sasrec import SASRecTrainConfig, save_sasrec, train_sasrec
from training.stages.semantic_embeddings import semantic_embeddings
from training.stages.tokenizer import (
    TokenizerSpec,
    TokenizerTrainConfig,
    build_config,
    report_markdown,
    save_tokenizer,
    tokenizer_report,
    train_tokenizer,
)

logger = logging.getLogger(__name__)

# Stage D's test report in `train pipeline`: a fixed sample of this many test users (at
# w < 1 the served decoding costs milliseconds per user on a CPU core, and it runs at
# three dense weights: at 100k users the full report took longer than a training epoch).
# Its standard error of NDCG@10 is about 0.003. Benchmarks use every user.
DEFAULT_TEST_USERS = 10_000


def _run_info_ok(
    run_dir: Path, dataset: ProcessedDataset, distributed: DistContext | None = None
) -> None:
    """Refuse to mix artifacts of different datasets in one run directory. Under torchrun
    rank 0 checks (and writes run.json) first, then the others check."""
    if distributed is not None and distributed.distributed:
        if distributed.is_main:
            _run_info_ok(run_dir, dataset)
        barrier(distributed)
        if not distributed.is_main:
            _run_info_ok(run_dir, dataset)
        return
    info_path = run_dir / "run.json"
    info = {"dataset": dataset.name, "fingerprint": dataset.fingerprint, "items": dataset.n_items}
    info["preprocess"] = dataset.config.to_dict()
    if info_path.exists():
        seen = json.loads(info_path.read_text())
        if seen != info:
            raise ValueError(
                f"{run_dir} holds a run on {seen.get('dataset')} ({seen}); this dataset is "
                f"{info}. Use another --run-dir."
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        info_path.write_text(json.dumps(info, indent=2))


def ensure_cf_embeddings(
    dataset: ProcessedDataset,
    run_dir: Path,
    device: torch.device,
    model_config: SASRecConfig | None = None,
    train_config: SASRecTrainConfig | None = None,
    distributed: DistContext | None = None,
) -> np.ndarray:
    """Stage A: (N + 1, hidden) SASRec item table, trained unless the run has it
    (on every rank under torchrun; rank 0 saves it)."""
    dist_ctx = distributed or single_process(device)
    run_dir = Path(run_dir)
    _run_info_ok(run_dir, dataset, dist_ctx)
    path = run_dir / "sasrec" / "cf_embeddings.npy"
    if path.exists():
        logger.info("stage A: reusing %s", path)
        return np.load(path)
    model_config = model_config or SASRecConfig(n_items=dataset.n_items)
    train_config = train_config or SASRecTrainConfig()
    result = train_sasrec(dataset, model_config, train_config, device, distributed=dist_ctx)
    if dist_ctx.is_main:
        save_sasrec(result, train_config, run_dir / "sasrec")
    barrier(dist_ctx)
    return np.load(path)


def stage_b_encoder_config(device: torch.device) -> TextEncoderConfig:
    """The service's encoder settings (TextEncoderConfig()), so a new item gets the vector
    it would have got here, with two speed choices that do not change the vectors (same
    model id): every torch thread for onnxruntime (training owns the machine; the service
    keeps one), and torch on a GPU (far faster than onnxruntime on the CPU)."""
    if device.type == "cuda":
        return TextEncoderConfig(backend="torch", batch_size=128)
    return TextEncoderConfig(threads=torch.get_num_threads())


def ensure_semantic_embeddings(
    dataset: ProcessedDataset, device: torch.device, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> np.ndarray:
    """Stage B: (N + 1, 384) text embeddings, from the cache when the texts are unchanged."""
    encoder = TextEncoder(stage_b_encoder_config(device), device=device, lazy=True)  # hits skip it
    return semantic_embeddings(dataset.items, encoder, cache_dir)


def run_tokenizer_stage(
    dataset: ProcessedDataset,
    run_dir: Path,
    device: torch.device,
    spec: TokenizerSpec,
    train_config: TokenizerTrainConfig,
    compare_no_align: bool = True,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    sasrec_train_config: SASRecTrainConfig | None = None,
    distributed: DistContext | None = None,
    sasrec_config: SASRecConfig | None = None,
) -> dict:
    """Stage C, plus the no-align twin for the report when asked. Returns the report.

    Under torchrun stage A trains on every rank, stages B and C on rank 0 alone; the
    other ranks wait for them and return the report rank 0 wrote."""
    dist_ctx = distributed or single_process(device)
    run_dir = Path(run_dir)
    cf_emb = ensure_cf_embeddings(
        dataset, run_dir, device, sasrec_config, sasrec_train_config, distributed=dist_ctx
    )
    if dist_ctx.is_main:
        report = _train_tokenizers(
            dataset, run_dir, device, spec, train_config, compare_no_align, cache_dir, cf_emb
        )
    barrier(dist_ctx)
    if not dist_ctx.is_main:
        report = json.loads((run_dir / "tokenizer" / "report.json").read_text())
    return report


def _train_tokenizers(
    dataset: ProcessedDataset,
    run_dir: Path,
    device: torch.device,
    spec: TokenizerSpec,
    train_config: TokenizerTrainConfig,
    compare_no_align: bool,
    cache_dir: Path | None,
    cf_emb: np.ndarray,
) -> dict:
    """Stages B and C on the (N + 1, D_cf) CF table: writes run_dir/tokenizer (and the
    no-align twin when asked); returns the report."""
    sem_emb = ensure_semantic_embeddings(dataset, device, cache_dir)
    warm = warm_mask(dataset.train_counts())
    config = build_config(spec, sem_emb.shape[1], cf_emb.shape[1], dataset.n_items)

    result = train_tokenizer(sem_emb, cf_emb, warm, config, train_config, device)
    report = tokenizer_report(result, sem_emb, cf_emb, train_config)
    save_tokenizer(result, train_config, run_dir / "tokenizer", report)

    baseline = None
    if compare_no_align and spec.lambda_cca > 0:
        twin_config = build_config(
            replace(spec, lambda_cca=0.0), sem_emb.shape[1], cf_emb.shape[1], dataset.n_items
        )
        twin = train_tokenizer(sem_emb, cf_emb, warm, twin_config, train_config, device)
        baseline = tokenizer_report(twin, sem_emb, cf_emb, train_config)
        save_tokenizer(twin, train_config, run_dir / "tokenizer-no-align", baseline)

    markdown = report_markdown(report, baseline)
    (run_dir / "tokenizer" / "report.md").write_text(markdown + "\n")
    if baseline is not None:
        report = {**report, "no_align": baseline}
        (run_dir / "tokenizer" / "report.json").write_text(json.dumps(report, indent=2))
    return report


def run_generator_stage(
    dataset: ProcessedDataset,
    run_dir: Path,
    device: torch.device,
    variant: str = SHIPPED,
    train_config: GeneratorTrainConfig | None = None,
    tokenizer_spec: TokenizerSpec | None = None,
    tokenizer_train_config: TokenizerTrainConfig | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    sasrec_train_config: SASRecTrainConfig | None = None,
    distributed: DistContext | None = None,
    sasrec_config: SASRecConfig | None = None,
    test_users: int | None = DEFAULT_TEST_USERS,
) -> tuple[GeneratorResult, EvalResult | None]:
    """Stage D on run_dir (stages A-C first when the run lacks them): trains the variant,
    saves it to run_dir/generator with its test metrics (on a fixed sample of test_users
    test users; None = every user), returns (result, test).

    Under torchrun every rank trains (DDP) and returns the same result; rank 0 alone
    evaluates on the test split and saves, and the other ranks get None for `test`."""
    dist_ctx = distributed or single_process(device)
    run_dir = Path(run_dir)
    needs_twin = variant == "no-align"
    tokenizer_dir = run_dir / ("tokenizer-no-align" if needs_twin else "tokenizer")
    if not (tokenizer_dir / "tokenizer.json").exists():
        run_tokenizer_stage(
            dataset,
            run_dir,
            device,
            tokenizer_spec or TokenizerSpec(),
            tokenizer_train_config or TokenizerTrainConfig(),
            compare_no_align=needs_twin,
            cache_dir=cache_dir,
            sasrec_train_config=sasrec_train_config,
            distributed=dist_ctx,
            sasrec_config=sasrec_config,
        )
    _run_info_ok(run_dir, dataset, dist_ctx)
    train_config = train_config or GeneratorTrainConfig()
    text = None
    if train_config.use_text:
        # Rank 0 computed (and cached) them in stage B; the others read the cache.
        text = ensure_semantic_embeddings(dataset, device, cache_dir)
    result = train_variant(
        dataset,
        run_dir,
        variant,
        device,
        train_config,
        distributed=dist_ctx,
        text_embeddings=text,
    )
    if dist_ctx.is_main:
        test = _test_and_save(dataset, run_dir, variant, device, train_config, result, test_users)
    else:
        test = None
    barrier(dist_ctx)
    return result, test


def _test_and_save(
    dataset: ProcessedDataset,
    run_dir: Path,
    variant: str,
    device: torch.device,
    train_config: GeneratorTrainConfig,
    result: GeneratorResult,
    test_users: int | None,
) -> EvalResult:
    """Stage D's test metrics (the served model and each head alone), artifacts
    (run_dir/generator) and alpha plot."""
    results, diagnostics = report_on_test_split(
        result, dataset, device, exact=False, test_users=test_users
    )
    test = results[""]
    extra = {
        "variant": variant,
        "test": test.metrics,
        "test_dense_only": results["dense"].metrics,
        "test_generative_only": results["generative"].metrics,
        "test_diagnostics": diagnostics,
        "test_users": test.counts,
    }
    counts = dataset.train_counts()
    extra["alpha"] = alpha_summary(result.layout.alpha, counts, result.layout.n_cf)
    with torch.no_grad():
        extra["alpha"]["new_item_alpha"] = float(result.router(torch.zeros(1, device=device))[0])
    save_generator(result, dataset, train_config, run_dir / "generator", extra)
    plot_alpha(
        result.layout.alpha,
        counts,
        run_dir / "generator" / "alpha.png",
        f"{dataset.name}, {variant}",
    )
    logger.info(
        "stage D: saved %s (test NDCG@10 %.4f at dense weight %.2f; dense only %.4f, "
        "generative only %.4f)",
        run_dir / "generator",
        test.metrics["all"]["ndcg@10"],
        result.decoding.dense_weight,
        results["dense"].metrics["all"]["ndcg@10"],
        results["generative"].metrics["all"]["ndcg@10"],
    )
    return test


def run_pipeline(
    dataset: ProcessedDataset,
    run_dir: Path,
    bundle_root: Path,
    device: torch.device,
    variant: str = SHIPPED,
    train_config: GeneratorTrainConfig | None = None,
    tokenizer_train_config: TokenizerTrainConfig | None = None,
    sasrec_train_config: SASRecTrainConfig | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    distributed: DistContext | None = None,
    sasrec_config: SASRecConfig | None = None,
    tokenizer_spec: TokenizerSpec | None = None,
    test_users: int | None = DEFAULT_TEST_USERS,
) -> Path | None:
    """A -> B -> C -> D -> export: data to a verified serving bundle under bundle_root.

    Stages A-C run inside `run_generator_stage` when the run directory lacks them, D
    trains the variant and measures it on the test split, and rank 0 exports the bundle.
    Returns the bundle directory (None on ranks other than 0)."""
    from training.export import export_bundle  # the bundle writer: only the last step

    dist_ctx = distributed or single_process(device)
    run_generator_stage(
        dataset,
        run_dir,
        device,
        variant,
        train_config,
        tokenizer_spec=tokenizer_spec,
        tokenizer_train_config=tokenizer_train_config,
        cache_dir=cache_dir,
        sasrec_train_config=sasrec_train_config,
        distributed=dist_ctx,
        sasrec_config=sasrec_config,
        test_users=test_users,
    )
    path = export_bundle(run_dir, bundle_root, device) if dist_ctx.is_main else None
    barrier(dist_ctx)
    return path
