"""`flexcode`: the one command-line entry point (data, train, evaluate, tune, benchmark).

Each command parses its options into the config dataclasses and hands them to the
stage that does the work; nothing here trains or scores by itself.
"""

from __future__ import annotations

import itertools
import json
import logging
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from training.data import DEFAULT_CACHE_DIR, PreprocessConfig, SyntheticConfig, load_dataset
from training.data.preprocess import ProcessedDataset
from training.data.schema import DataFormatError

if TYPE_CHECKING:  # imported lazily below: torch.distributed is slow to import
    from training.distributed import DistContext

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
train_app = typer.Typer(no_args_is_help=True, help="Train one stage of the pipeline.")
tune_app = typer.Typer(no_args_is_help=True, help="Hyperparameter searches.")
app.add_typer(train_app, name="train")
app.add_typer(tune_app, name="tune")
logger = logging.getLogger("flexcode")

DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        "-d",
        help="ml-100k, synthetic, or a path to RecBole atomic files / Amazon JSON lines",
    ),
]
KCoreOpt = Annotated[int, typer.Option(help="k-core filter on users and items")]
ColdOpt = Annotated[
    float, typer.Option(help="fraction of newest items held out of training (cold-start eval)")
]
SynItemsOpt = Annotated[int, typer.Option(help="synthetic: catalog size")]
SynInterOpt = Annotated[int, typer.Option(help="synthetic: number of interactions")]
SynSeedOpt = Annotated[int, typer.Option(help="synthetic: generator seed")]
CacheOpt = Annotated[Path, typer.Option(help="processed-data cache directory")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda, cuda:1 ...")]
VariantOpt = Annotated[
    str,
    typer.Option(
        help="flexcode (what ships), or an ablation: full, fix, sid-only, cf-only, no-align, "
        "dense-only, full-L2, full-L4, full-L5"
    ),
]


def _load(ctx: typer.Context) -> ProcessedDataset:
    """The dataset named by the command's shared data options (see DatasetOpt & co.)."""
    params = ctx.params
    try:
        return load_dataset(
            params["dataset"],
            PreprocessConfig(
                k_core=params.get("k_core", 5),
                cold_item_fraction=params.get("cold_fraction", 0.0),
            ),
            SyntheticConfig(
                n_items=params.get("synthetic_items", 10_000),
                n_interactions=params.get("synthetic_interactions", 200_000),
                seed=params.get("synthetic_seed", 0),
            ),
            params.get("cache_dir", DEFAULT_CACHE_DIR),
        )
    except (DataFormatError, ValueError, RuntimeError, FileNotFoundError) as error:
        # Data problems are the user's to fix: say what, without a traceback.
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error


def _start_distributed(device: str) -> DistContext:
    """This process's `training.distributed.DistContext` for a training command: under
    torchrun it joins the process group, prefixes log lines with the rank and, unless -v,
    keeps the other ranks' logs to warnings (rank 0 reports for the group)."""
    from training.distributed import init_distributed

    try:
        dist_ctx = init_distributed(device)
    except ValueError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    if dist_ctx.distributed:
        tag = f"[rank {dist_ctx.rank}/{dist_ctx.world_size}]"
        fmt = f"%(asctime)s %(levelname)s {tag} %(name)s: %(message)s"
        root = logging.getLogger()
        for handler in root.handlers:
            handler.setFormatter(logging.Formatter(fmt))
        if not dist_ctx.is_main and root.level > logging.DEBUG:
            root.setLevel(logging.WARNING)
    return dist_ctx


def _load_ranked(ctx: typer.Context, dist_ctx: DistContext) -> ProcessedDataset:
    """`_load`, rank 0 first: it may write the processed-data cache the others then read."""
    from training.distributed import barrier

    if dist_ctx.is_main:
        ds = _load(ctx)
    barrier(dist_ctx)
    if not dist_ctx.is_main:
        ds = _load(ctx)
    return ds


def _command_line(ctx: typer.Context) -> str:
    """The command with every option spelled out (defaults included), so the figures a
    run writes can be reproduced from the results file alone."""
    words = ["flexcode", *ctx.command_path.split()[1:]]
    for name, value in ctx.params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def data(
    ctx: typer.Context,
    dataset: DatasetOpt = "ml-100k",
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
) -> None:
    """Read, filter and split a dataset (cached), then print its summary."""
    ds = _load(ctx)
    typer.echo(json.dumps(ds.summary(), indent=2))


@train_app.command("sasrec")
def train_sasrec_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="where the model and CF embeddings go")] = Path(
        "runs/ml-100k"
    ),
    dataset: DatasetOpt = "ml-100k",
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    seed: int = 0,
    max_len: int = 100,
    hidden: int = 64,
    layers: int = 2,
    dropout: float = 0.2,
    lr: float = 2e-3,
    max_epochs: int = 300,
) -> None:
    """Stage A: train SASRec; saves weights and the CF item embeddings to RUN_DIR/sasrec.
    Under torchrun every process trains a DDP replica; rank 0 evaluates and saves."""
    from models.sasrec import SASRecConfig
    from training.distributed import barrier, cleanup
    from training.stages.sasrec import (
        SASRecTrainConfig,
        evaluate_sasrec,
        save_sasrec,
        train_sasrec,
    )

    dist_ctx = _start_distributed(device)
    try:
        ds = _load_ranked(ctx, dist_ctx)
        model_config = SASRecConfig(
            n_items=ds.n_items, max_len=max_len, hidden=hidden, n_layers=layers, dropout=dropout
        )
        train_config = SASRecTrainConfig(lr=lr, max_epochs=max_epochs, seed=seed)
        torch_device = dist_ctx.device
        result = train_sasrec(ds, model_config, train_config, torch_device, distributed=dist_ctx)
        if dist_ctx.is_main:
            save_sasrec(result, train_config, run_dir / "sasrec")
            test = evaluate_sasrec(result.model, ds, torch_device)
            metrics_path = run_dir / "sasrec" / "test_metrics.json"
            metrics_path.write_text(json.dumps(test.metrics, indent=2))
            typer.echo(json.dumps({"valid": result.best_valid["all"], "test": test.metrics["all"]}))
        barrier(dist_ctx)
    finally:
        cleanup(dist_ctx)


@train_app.command("tokenizer")
def train_tokenizer_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="run directory (reuses its SASRec stage)")] = Path(
        "runs/ml-100k"
    ),
    dataset: DatasetOpt = "ml-100k",
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    seed: int = 0,
    codebook_size: Annotated[
        int, typer.Option(help="K codes per level; 0 = sized to the catalog")
    ] = 0,
    levels: Annotated[int, typer.Option(help="L_max levels per codebook")] = 6,
    latent_dim: Annotated[int, typer.Option(help="RQ-VAE latent size d")] = 32,
    lambda_cca: Annotated[float, typer.Option(help="alignment weight; 0 = no-align")] = 0.1,
    epochs: int = 300,
    compare_no_align: Annotated[
        bool, typer.Option(help="also train the lambda_CCA = 0 twin for the report")
    ] = True,
) -> None:
    """Stages A-C: SASRec (reused if the run has it), text embeddings (cached), then the
    dual-codebook tokenizer; writes RUN_DIR/tokenizer/ with codes and report.{json,md}."""
    from training.device import resolve_device
    from training.pipeline import run_tokenizer_stage
    from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

    ds = _load(ctx)
    spec = TokenizerSpec(
        latent_dim=latent_dim,
        n_levels=levels,
        codebook_size=codebook_size or None,
        lambda_cca=lambda_cca,
    )
    try:
        run_tokenizer_stage(
            ds,
            run_dir,
            resolve_device(device),
            spec,
            TokenizerTrainConfig(epochs=epochs, seed=seed),
            compare_no_align=compare_no_align,
            cache_dir=cache_dir,
        )
    except ValueError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    typer.echo((run_dir / "tokenizer" / "report.md").read_text())


@app.command()
def evaluate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `train sasrec`")],
    dataset: DatasetOpt = "ml-100k",
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
) -> None:
    """Evaluate a trained model on the test split (full ranking, by group)."""
    from training.device import resolve_device
    from training.stages.sasrec import evaluate_sasrec, load_sasrec

    ds = _load(ctx)
    torch_device = resolve_device(device)
    model = load_sasrec(run_dir / "sasrec", torch_device)
    if model.config.n_items != ds.n_items:
        typer.secho(
            f"error: {run_dir} was trained on {model.config.n_items} items, the dataset has "
            f"{ds.n_items}; pass the same --dataset and filters as for training",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=2)
    result = evaluate_sasrec(model, ds, torch_device)
    typer.echo(json.dumps({"metrics": result.metrics, "users": result.counts}, indent=2))


@app.command()
def benchmark(
    ctx: typer.Context,
    dataset: DatasetOpt = "ml-100k",
    models: Annotated[str, typer.Option(help="comma-separated model names")] = "pop,sasrec",
    seeds: Annotated[int, typer.Option(help="number of seeds (0..n-1)")] = 3,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    save_models: Annotated[bool, typer.Option(help="keep trained models under OUT")] = False,
    sasrec_max_epochs: Annotated[int, typer.Option(help="SASRec epoch cap")] = 300,
    sasrec_max_len: Annotated[int, typer.Option(help="SASRec history window")] = 100,
    sasrec_dropout: Annotated[
        float | None, typer.Option(help="SASRec dropout (default: SASRecConfig's)")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="a `train tokenizer` run, needed by the FlexCode variants")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="(model, seed) runs at once, one torch thread each")
    ] = 1,
    baseline: Annotated[
        str, typer.Option(help="model every other is compared with (paired bootstrap)")
    ] = "sasrec",
    seed_offset: Annotated[int, typer.Option(help="first seed (seeds run offset..offset+n-1)")] = 0,
    generator_eval_users: Annotated[
        int, typer.Option(help="FlexCode: validation users per epoch (0 = all)")
    ] = 5000,
    resume: Annotated[
        bool, typer.Option(help="reuse (model, seed) cells an earlier run left in OUT/cells")
    ] = True,
) -> None:
    """Train and evaluate MODELS over SEEDS; write results.json, results.md and ranks.npz
    (per-user test ranks) to OUT."""
    from training.baselines import RunContext
    from training.benchmark import BenchmarkPlan, results_markdown, run_benchmark, write_results
    from training.device import resolve_device
    from training.stages.generator import GeneratorTrainConfig
    from training.stages.sasrec import SASRecTrainConfig

    try:
        plan = BenchmarkPlan(
            models=tuple(m.strip() for m in models.split(",") if m.strip()),
            seeds=tuple(range(seed_offset, seed_offset + seeds)),
        )
    except ValueError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    ds = _load(ctx)
    out = out or Path("reports") / f"benchmark-{ds.name}"
    context = RunContext(
        device=resolve_device(device),
        sasrec=SASRecTrainConfig(max_epochs=sasrec_max_epochs),
        # Only the settings given: a cell's key hashes this dict, so unchanged defaults
        # keep earlier runs' cells reusable.
        sasrec_model={"max_len": sasrec_max_len}
        | ({} if sasrec_dropout is None else {"dropout": sasrec_dropout}),
        run_dir=out / "models" if save_models else None,
        pipeline_dir=run_dir,
        generator=GeneratorTrainConfig(eval_users=generator_eval_users or None),
    )
    results, ranks = run_benchmark(
        ds,
        plan,
        context,
        _command_line(ctx),
        workers=workers,
        baseline=baseline,
        cells_dir=out / "cells" if resume else None,
    )
    json_path, md_path = write_results(results, out, ranks)
    typer.echo(results_markdown(results))
    typer.echo(f"wrote {json_path} and {md_path}")


@tune_app.command("sasrec")
def tune_sasrec(
    ctx: typer.Context,
    dataset: DatasetOpt = "ml-100k",
    max_len: Annotated[str, typer.Option(help="comma-separated grid")] = "50,200",
    dropout: Annotated[str, typer.Option(help="comma-separated grid")] = "0.2,0.5",
    lr: Annotated[str, typer.Option(help="comma-separated grid")] = "1e-3,2e-3",
    hidden: Annotated[str, typer.Option(help="comma-separated grid")] = "64",
    max_epochs: Annotated[int, typer.Option(help="epoch cap per configuration")] = 200,
    out: Annotated[Path, typer.Option(help="results file")] = Path("reports/tune-sasrec.json"),
    k_core: KCoreOpt = 5,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    seed: int = 0,
) -> None:
    """Grid search over SASRec's main hyperparameters, chosen on VALIDATION NDCG@10."""
    from models.sasrec import SASRecConfig
    from training.device import resolve_device
    from training.stages.sasrec import SASRecTrainConfig, train_sasrec

    ds = _load(ctx)
    torch_device = resolve_device(device)
    grid = list(
        itertools.product(
            [int(v) for v in max_len.split(",")],
            [float(v) for v in dropout.split(",")],
            [float(v) for v in lr.split(",")],
            [int(v) for v in hidden.split(",")],
        )
    )
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for length, drop, rate, size in grid:
        model_config = SASRecConfig(n_items=ds.n_items, max_len=length, dropout=drop, hidden=size)
        train_config = SASRecTrainConfig(lr=rate, seed=seed, max_epochs=max_epochs)
        result = train_sasrec(ds, model_config, train_config, torch_device)
        rows.append(
            {
                "model": asdict(model_config),
                "train": asdict(train_config),
                "valid_ndcg@10": result.best_valid["all"]["ndcg@10"],
                "valid_recall@10": result.best_valid["all"]["recall@10"],
                "best_epoch": result.best_epoch,
            }
        )
        typer.echo(json.dumps(rows[-1]))
        # Rewritten after every configuration, so an interrupted search keeps its results.
        ranked = sorted(rows, key=lambda r: -r["valid_ndcg@10"])
        report = {"command": _command_line(ctx), "dataset": ds.name, "runs": ranked}
        out.write_text(json.dumps(report, indent=2))
    typer.echo(f"best: {json.dumps(ranked[0])}\nwrote {out}")


@train_app.command("generator")
def train_generator_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="run directory (reuses stages A-C)")] = Path(
        "runs/ml-100k"
    ),
    dataset: DatasetOpt = "ml-100k",
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    seed: int = 0,
    variant: VariantOpt = "flexcode",
    max_epochs: Annotated[int, typer.Option(help="epoch cap (early stopping ends sooner)")] = 300,
    patience: Annotated[int, typer.Option(help="evaluations without gain before stopping")] = 10,
    eval_users: Annotated[
        int, typer.Option(help="validation users per evaluation; 0 = all")
    ] = 5000,
) -> None:
    """Stages A-D: the router and generator on RUN_DIR's tokenizer (stages A-C are trained
    first when missing); writes RUN_DIR/generator/ and prints validation and test figures.
    Under torchrun stages A and D train on every process (DDP), B and C on rank 0."""
    from training.distributed import cleanup
    from training.pipeline import run_generator_stage
    from training.stages.generator import GeneratorTrainConfig

    dist_ctx = _start_distributed(device)
    try:
        ds = _load_ranked(ctx, dist_ctx)
        train_config = GeneratorTrainConfig(
            seed=seed, max_epochs=max_epochs, patience=patience, eval_users=eval_users or None
        )
        result, test = run_generator_stage(
            ds,
            run_dir,
            dist_ctx.device,
            variant,
            train_config,
            cache_dir=cache_dir,
            distributed=dist_ctx,
        )
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    finally:
        cleanup(dist_ctx)
    if test is None:  # not rank 0: rank 0 prints the figures
        return
    summary = {
        "variant": variant,
        "dense_weight": result.decoding.dense_weight,
        "valid": result.best_valid["all"],
        "test": test.metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
    }
    typer.echo(json.dumps(summary, indent=2))


@train_app.command("pipeline")
def train_pipeline_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="run directory for stages A-D")] = Path(
        "runs/ml-100k"
    ),
    bundle_root: Annotated[
        Path, typer.Option(help="bundles go to BUNDLE_ROOT/<version>/, LATEST names the newest")
    ] = Path("bundles"),
    if_missing: Annotated[
        bool, typer.Option(help="do nothing when BUNDLE_ROOT already holds a bundle")
    ] = False,
    dataset: DatasetOpt = "ml-100k",
    k_core: KCoreOpt = 5,
    cold_fraction: ColdOpt = 0.0,
    synthetic_items: SynItemsOpt = 10_000,
    synthetic_interactions: SynInterOpt = 200_000,
    synthetic_seed: SynSeedOpt = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    seed: int = 0,
    variant: VariantOpt = "flexcode",
    sasrec_max_epochs: Annotated[int, typer.Option(help="stage A epoch cap")] = 300,
    tokenizer_epochs: Annotated[int, typer.Option(help="stage C epochs")] = 300,
    generator_max_epochs: Annotated[int, typer.Option(help="stage D epoch cap")] = 300,
) -> None:
    """Everything: stages A-D on DATASET, then export a serving bundle to BUNDLE_ROOT.
    Stages the run directory already holds are reused. Under torchrun (`torchrun
    --nproc_per_node=N -m training.cli train pipeline ...`) stages A and D train on every
    process (DDP: NCCL on GPUs, gloo on CPU); stages B, C and the export run on rank 0."""
    from models.bundle import BundleError
    from training.distributed import cleanup
    from training.pipeline import run_pipeline
    from training.stages.generator import GeneratorTrainConfig
    from training.stages.sasrec import SASRecTrainConfig
    from training.stages.tokenizer import TokenizerTrainConfig

    if if_missing and (bundle_root / "LATEST").exists():
        typer.echo(f"{bundle_root} already holds bundle {(bundle_root / 'LATEST').read_text()}")
        return
    dist_ctx = _start_distributed(device)
    path = None
    try:
        ds = _load_ranked(ctx, dist_ctx)
        torch_device = dist_ctx.device
        path = run_pipeline(
            ds,
            run_dir,
            bundle_root,
            torch_device,
            variant,
            GeneratorTrainConfig(seed=seed, max_epochs=generator_max_epochs),
            tokenizer_train_config=TokenizerTrainConfig(epochs=tokenizer_epochs, seed=seed),
            sasrec_train_config=SASRecTrainConfig(max_epochs=sasrec_max_epochs, seed=seed),
            cache_dir=cache_dir,
            distributed=dist_ctx,
        )
    except (ValueError, FileNotFoundError, BundleError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    finally:
        cleanup(dist_ctx)
    if path is not None:
        typer.echo(f"bundle: {path}")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="a `flexcode benchmark` output directory")],
    row_a: Annotated[str, typer.Argument(help="a model row of RUN_A, e.g. flexcode")],
    run_b: Annotated[Path, typer.Argument(help="another output directory, same dataset")],
    row_b: Annotated[str, typer.Argument(help="a model row of RUN_B, e.g. sasrec")],
) -> None:
    """Paired bootstrap of per-user NDCG@10, ROW_A of RUN_A against ROW_B of RUN_B (for a
    baseline benchmarked in a run of its own)."""
    from training.benchmark import compare_runs

    try:
        found = compare_runs(run_a, row_a, run_b, row_b)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    c = found["all"]
    typer.echo(
        f"{row_a} {found['a']['ndcg@10']:.4f} vs {row_b} {found['b']['ndcg@10']:.4f} "
        f"over {found['seeds']} seeds x {c['users']} users: difference {c['diff']:+.4f}, "
        f"95% interval [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], ratio {c['ratio']:.3f}"
    )
    typer.echo(json.dumps(found, indent=2))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run with stages A-D (`train generator`)")],
    out_dir: Annotated[Path, typer.Argument(help="bundle root: writes OUT_DIR/<version>/")],
    device: DeviceOpt = "cpu",
) -> None:
    """Export a trained run as an immutable, versioned serving bundle."""
    from models.bundle import BundleError
    from training.device import resolve_device
    from training.export import export_bundle

    try:
        path = export_bundle(run_dir, out_dir, resolve_device(device))
    except (ValueError, FileNotFoundError, BundleError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"bundle: {path}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    train_if_missing: Annotated[
        bool,
        typer.Option(
            help="when FLEXCODE_BUNDLE_PATH holds no bundle, first train one on MovieLens-100K "
            "(`train pipeline`, about 5 min on 2 CPU cores) and export it there"
        ),
    ] = False,
    run_dir: Annotated[Path, typer.Option(help="run directory for --train-if-missing")] = Path(
        "runs/ml-100k"
    ),
) -> None:
    """Serve the bundle at FLEXCODE_BUNDLE_PATH over HTTP (settings: FLEXCODE_* env vars)."""
    from service.server import serve as serve_http
    from service.settings import Settings

    settings = Settings()
    bundle_path = Path(settings.bundle_path)
    has_bundle = (bundle_path / "manifest.json").exists() or (bundle_path / "LATEST").exists()
    if not has_bundle and train_if_missing:
        from training.data import PreprocessConfig, load_dataset
        from training.device import resolve_device
        from training.pipeline import run_pipeline

        typer.echo(f"no bundle at {bundle_path}: training one on ml-100k into {run_dir}")
        device = resolve_device(settings.device)
        run_pipeline(load_dataset("ml-100k", PreprocessConfig()), run_dir, bundle_path, device)
    serve_http(settings, host=host, port=port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
