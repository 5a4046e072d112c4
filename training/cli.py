"""`flexcode`: train, evaluate and benchmark models, export serving bundles, serve them.

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

from models.sampled_softmax import DEFAULT_SAMPLED_NEGATIVES
from training.cli_options import (
    CommandSettings,
    ConfigOpt,
    DataOptions,
    DeviceOpt,
    LossOpt,
    NegativesOpt,
    VariantOpt,
    data_options,
    fail,
)
from training.data.preprocess import ProcessedDataset

if TYPE_CHECKING:  # imported lazily below: torch.distributed is slow to import
    from training.distributed import DistContext

# Every command but `serve`, which the service provides: `flexcode` (flexcode_cli.py)
# composes both, so training never imports the service. `python -m training.cli`, what
# torchrun launches, is `flexcode` without `serve`.
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
train_app = typer.Typer(no_args_is_help=True, help="Train one stage of the pipeline.")
tune_app = typer.Typer(no_args_is_help=True, help="Hyperparameter searches.")
app.add_typer(train_app, name="train")
app.add_typer(tune_app, name="tune")
logger = logging.getLogger("flexcode")


def _start_distributed(device: str) -> DistContext:
    """This process's `training.distributed.DistContext` for a training command: under
    torchrun it joins the process group, prefixes log lines with the rank and, unless -v,
    keeps the other ranks' logs to warnings (rank 0 reports for the group)."""
    from training.distributed import init_distributed

    try:
        dist_ctx = init_distributed(device)
    except ValueError as error:
        fail(str(error))
    if dist_ctx.distributed:
        tag = f"[rank {dist_ctx.rank}/{dist_ctx.world_size}]"
        fmt = f"%(asctime)s %(levelname)s {tag} %(name)s: %(message)s"
        root = logging.getLogger()
        for handler in root.handlers:
            handler.setFormatter(logging.Formatter(fmt))
        if not dist_ctx.is_main and root.level > logging.DEBUG:
            root.setLevel(logging.WARNING)
    return dist_ctx


def _load_ranked(data: DataOptions, dist_ctx: DistContext) -> ProcessedDataset:
    """`data.load()`, rank 0 first: it may write the processed-data cache the others read."""
    from training.distributed import barrier

    if dist_ctx.is_main:
        ds = data.load()
    barrier(dist_ctx)
    if not dist_ctx.is_main:
        ds = data.load()
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


@app.command("data")
@data_options()
def data_cmd(
    ctx: typer.Context, config: ConfigOpt = None, data: DataOptions = DataOptions()
) -> None:
    """Read, filter and split a dataset (cached), then print its summary."""
    ds = CommandSettings(ctx, config).data(data).load()
    typer.echo(json.dumps(ds.summary(), indent=2))


@train_app.command("sasrec")
@data_options()
def train_sasrec_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="where the model and CF embeddings go")] = Path(
        "runs/ml-100k"
    ),
    config: ConfigOpt = None,
    data: DataOptions = DataOptions(),
    device: DeviceOpt = "auto",
    seed: int = 0,
    max_len: int = 100,
    hidden: int = 64,
    layers: int = 2,
    dropout: float = 0.2,
    lr: float = 2e-3,
    max_epochs: int = 300,
    loss: LossOpt = "auto",
    sampled_negatives: NegativesOpt = DEFAULT_SAMPLED_NEGATIVES,
    eval_users: Annotated[
        int, typer.Option(help="validation users per epoch (fixed subsample); 0 = all")
    ] = 5000,
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

    settings = CommandSettings(ctx, config)
    data = settings.data(data)
    train_config = settings.build(
        SASRecTrainConfig,
        "sasrec_train",
        lr=settings.flag("lr"),
        max_epochs=settings.flag("max_epochs"),
        seed=settings.flag("seed"),
        loss=settings.flag("loss"),
        sampled_negatives=settings.flag("sampled_negatives"),
        eval_users=settings.flag("eval_users", lambda n: n or None),
    )
    dist_ctx = _start_distributed(device)
    try:
        ds = _load_ranked(data, dist_ctx)
        model_config = settings.build(
            SASRecConfig,
            "sasrec",
            n_items=ds.n_items,
            max_len=settings.flag("max_len"),
            hidden=settings.flag("hidden"),
            n_layers=settings.flag("layers"),
            dropout=settings.flag("dropout"),
        )
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
@data_options()
def train_tokenizer_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="run directory (reuses its SASRec stage)")] = Path(
        "runs/ml-100k"
    ),
    config: ConfigOpt = None,
    data: DataOptions = DataOptions(),
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
    from models.sasrec import SASRecConfig
    from training.device import resolve_device
    from training.pipeline import run_tokenizer_stage
    from training.stages.sasrec import SASRecTrainConfig
    from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

    settings = CommandSettings(ctx, config)
    data = settings.data(data)
    spec = settings.build(
        TokenizerSpec,
        "tokenizer",
        latent_dim=settings.flag("latent_dim"),
        n_levels=settings.flag("levels"),
        codebook_size=settings.flag("codebook_size", lambda k: k or None),
        lambda_cca=settings.flag("lambda_cca"),
    )
    train_config = settings.build(
        TokenizerTrainConfig,
        "tokenizer_train",
        epochs=settings.flag("epochs"),
        seed=settings.flag("seed"),
    )
    # --seed is this stage's: stage A, trained first when the run lacks it, keeps its own.
    sasrec_train = settings.build(SASRecTrainConfig, "sasrec_train")
    ds = data.load()
    try:
        run_tokenizer_stage(
            ds,
            run_dir,
            resolve_device(device),
            spec,
            train_config,
            compare_no_align=compare_no_align,
            cache_dir=data.cache_dir,
            sasrec_train_config=sasrec_train,
            sasrec_config=settings.build(SASRecConfig, "sasrec", n_items=ds.n_items),
        )
    except ValueError as error:
        fail(str(error))
    typer.echo((run_dir / "tokenizer" / "report.md").read_text())


@app.command()
@data_options()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `train sasrec`")],
    data: DataOptions = DataOptions(),
    device: DeviceOpt = "auto",
) -> None:
    """Evaluate a trained model on the test split (full ranking, by group)."""
    from training.device import resolve_device
    from training.stages.sasrec import evaluate_sasrec, load_sasrec

    ds = data.load()
    torch_device = resolve_device(device)
    model = load_sasrec(run_dir / "sasrec", torch_device)
    if model.config.n_items != ds.n_items:
        fail(
            f"{run_dir} was trained on {model.config.n_items} items, the dataset has "
            f"{ds.n_items}; pass the same --dataset and filters as for training"
        )
    result = evaluate_sasrec(model, ds, torch_device)
    typer.echo(json.dumps({"metrics": result.metrics, "users": result.counts}, indent=2))


@app.command()
@data_options()
def benchmark(
    ctx: typer.Context,
    data: DataOptions = DataOptions(),
    models: Annotated[str, typer.Option(help="comma-separated model names")] = "pop,sasrec",
    seeds: Annotated[int, typer.Option(help="number of seeds (0..n-1)")] = 3,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    device: DeviceOpt = "auto",
    save_models: Annotated[bool, typer.Option(help="keep trained models under OUT")] = False,
    sasrec_max_epochs: Annotated[int, typer.Option(help="SASRec epoch cap")] = 300,
    sasrec_max_len: Annotated[int, typer.Option(help="SASRec history window")] = 100,
    sasrec_dropout: Annotated[
        float | None, typer.Option(help="SASRec dropout (default: SASRecConfig's)")
    ] = None,
    sasrec_ffn: Annotated[
        str | None, typer.Option(help="SASRec feed-forward: gelu or swiglu (default: gelu)")
    ] = None,
    sasrec_layers: Annotated[
        int | None, typer.Option(help="SASRec blocks (default: SASRecConfig's, 2)")
    ] = None,
    sasrec_loss: LossOpt = "auto",
    sasrec_sampled_negatives: NegativesOpt = DEFAULT_SAMPLED_NEGATIVES,
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
    ema_epochs: Annotated[
        float,
        typer.Option(help="weight averaging horizon in epochs, for SASRec and FlexCode alike"),
    ] = 0.0,
    exact_rows: Annotated[
        bool,
        typer.Option(
            help="FlexCode: also score the whole catalogue without beam search (the /exact "
            "rows; most of an hour at 10k items on one core)"
        ),
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
        fail(str(error))
    if "oracle" in plan.models and data.synthetic_config() is None:
        # Checked before any cell trains: the law is the synthetic generator's own.
        fail("model oracle (the true next-item law) exists only for --dataset synthetic")
    ds = data.load()
    out = out or Path("reports") / f"benchmark-{ds.name}"
    context = RunContext(
        device=resolve_device(device),
        sasrec=SASRecTrainConfig(
            max_epochs=sasrec_max_epochs,
            loss=sasrec_loss,
            sampled_negatives=sasrec_sampled_negatives,
            ema_epochs=ema_epochs,
        ),
        # Only the settings given: a cell's key hashes this dict, so unchanged defaults
        # keep earlier runs' cells reusable.
        sasrec_model={"max_len": sasrec_max_len}
        | ({} if sasrec_dropout is None else {"dropout": sasrec_dropout})
        | ({} if sasrec_ffn is None else {"ffn": sasrec_ffn})
        | ({} if sasrec_layers is None else {"n_layers": sasrec_layers}),
        run_dir=out / "models" if save_models else None,
        pipeline_dir=run_dir,
        generator=GeneratorTrainConfig(
            eval_users=generator_eval_users or None, ema_epochs=ema_epochs
        ),
        exact_rows=exact_rows,
        synthetic=data.synthetic_config(),
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
@data_options("dataset", "k_core", "cache_dir")
def tune_sasrec(
    ctx: typer.Context,
    data: DataOptions = DataOptions(),
    max_len: Annotated[str, typer.Option(help="comma-separated grid")] = "50,200",
    dropout: Annotated[str, typer.Option(help="comma-separated grid")] = "0.2,0.5",
    lr: Annotated[str, typer.Option(help="comma-separated grid")] = "1e-3,2e-3",
    hidden: Annotated[str, typer.Option(help="comma-separated grid")] = "64",
    max_epochs: Annotated[int, typer.Option(help="epoch cap per configuration")] = 200,
    out: Annotated[Path, typer.Option(help="results file")] = Path("reports/tune-sasrec.json"),
    device: DeviceOpt = "auto",
    seed: int = 0,
) -> None:
    """Grid search over SASRec's main hyperparameters, chosen on VALIDATION NDCG@10."""
    from models.sasrec import SASRecConfig
    from training.device import resolve_device
    from training.stages.sasrec import SASRecTrainConfig, train_sasrec

    ds = data.load()
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
@data_options()
def train_generator_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option(help="run directory (reuses stages A-C)")] = Path(
        "runs/ml-100k"
    ),
    config: ConfigOpt = None,
    data: DataOptions = DataOptions(),
    device: DeviceOpt = "auto",
    seed: int = 0,
    variant: VariantOpt = "flexcode",
    max_epochs: Annotated[int, typer.Option(help="epoch cap (early stopping ends sooner)")] = 300,
    patience: Annotated[int, typer.Option(help="evaluations without gain before stopping")] = 10,
    eval_users: Annotated[
        int, typer.Option(help="validation users per evaluation; 0 = all")
    ] = 5000,
    test_users: Annotated[
        int, typer.Option(help="stage D's test report on a fixed sample of users; 0 = all")
    ] = 10_000,
) -> None:
    """Stages A-D: the router and generator on RUN_DIR's tokenizer (stages A-C are trained
    first when missing); writes RUN_DIR/generator/ and prints validation and test figures.
    Under torchrun stages A and D train on every process (DDP), B and C on rank 0."""
    from models.sasrec import SASRecConfig
    from training.distributed import cleanup
    from training.pipeline import run_generator_stage
    from training.stages.generator import GeneratorTrainConfig
    from training.stages.sasrec import SASRecTrainConfig
    from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

    settings = CommandSettings(ctx, config)
    data = settings.data(data)
    train_config = settings.build(
        GeneratorTrainConfig,
        "generator_train",
        seed=settings.flag("seed"),
        max_epochs=settings.flag("max_epochs"),
        patience=settings.flag("patience"),
        eval_users=settings.flag("eval_users", lambda n: n or None),
    )
    # Stages A-C train first when the run lacks them: the recipe's settings apply there
    # (--seed is stage D's, as before recipes).
    earlier = {
        "tokenizer_spec": settings.build(TokenizerSpec, "tokenizer"),
        "tokenizer_train_config": settings.build(TokenizerTrainConfig, "tokenizer_train"),
        "sasrec_train_config": settings.build(SASRecTrainConfig, "sasrec_train"),
    }
    dist_ctx = _start_distributed(device)
    try:
        ds = _load_ranked(data, dist_ctx)
        result, test = run_generator_stage(
            ds,
            run_dir,
            dist_ctx.device,
            variant,
            train_config,
            cache_dir=data.cache_dir,
            distributed=dist_ctx,
            sasrec_config=settings.build(SASRecConfig, "sasrec", n_items=ds.n_items),
            test_users=test_users or None,
            **earlier,
        )
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
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
@data_options()
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
    config: ConfigOpt = None,
    data: DataOptions = DataOptions(),
    device: DeviceOpt = "auto",
    seed: int = 0,
    variant: VariantOpt = "flexcode",
    sasrec_max_epochs: Annotated[int, typer.Option(help="stage A epoch cap")] = 300,
    tokenizer_epochs: Annotated[int, typer.Option(help="stage C epochs")] = 300,
    generator_max_epochs: Annotated[int, typer.Option(help="stage D epoch cap")] = 300,
    test_users: Annotated[
        int, typer.Option(help="stage D's test report on a fixed sample of users; 0 = all")
    ] = 10_000,
) -> None:
    """Everything: stages A-D on DATASET, then export a serving bundle to BUNDLE_ROOT.
    Stages the run directory already holds are reused. Under torchrun (`torchrun
    --nproc_per_node=N -m training.cli train pipeline ...`) stages A and D train on every
    process (DDP: NCCL on GPUs, gloo on CPU); stages B, C and the export run on rank 0."""
    from models.bundle import BundleError
    from models.sasrec import SASRecConfig
    from training.distributed import cleanup
    from training.pipeline import run_pipeline
    from training.stages.generator import GeneratorTrainConfig
    from training.stages.sasrec import SASRecTrainConfig
    from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

    if if_missing and (bundle_root / "LATEST").exists():
        typer.echo(f"{bundle_root} already holds bundle {(bundle_root / 'LATEST').read_text()}")
        return
    settings = CommandSettings(ctx, config)
    data = settings.data(data)
    seed_flag = settings.flag("seed")  # one seed for every stage when given
    generator_train = settings.build(
        GeneratorTrainConfig,
        "generator_train",
        seed=seed_flag,
        max_epochs=settings.flag("generator_max_epochs"),
    )
    tokenizer_train = settings.build(
        TokenizerTrainConfig,
        "tokenizer_train",
        seed=seed_flag,
        epochs=settings.flag("tokenizer_epochs"),
    )
    sasrec_train = settings.build(
        SASRecTrainConfig,
        "sasrec_train",
        seed=seed_flag,
        max_epochs=settings.flag("sasrec_max_epochs"),
    )
    tokenizer_spec = settings.build(TokenizerSpec, "tokenizer")
    dist_ctx = _start_distributed(device)
    path = None
    try:
        ds = _load_ranked(data, dist_ctx)
        torch_device = dist_ctx.device
        path = run_pipeline(
            ds,
            run_dir,
            bundle_root,
            torch_device,
            variant,
            generator_train,
            tokenizer_train_config=tokenizer_train,
            sasrec_train_config=sasrec_train,
            cache_dir=data.cache_dir,
            distributed=dist_ctx,
            sasrec_config=settings.build(SASRecConfig, "sasrec", n_items=ds.n_items),
            tokenizer_spec=tokenizer_spec,
            test_users=test_users or None,
        )
    except (ValueError, FileNotFoundError, BundleError) as error:
        fail(str(error))
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
        fail(str(error))
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
        fail(str(error))
    typer.echo(f"bundle: {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
