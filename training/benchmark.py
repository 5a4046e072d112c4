"""`flexcode benchmark`: train and evaluate several models over several seeds in one run.

Writes into the output directory:

    results.json   {"dataset", "seeds", "command", "models": {ROW: {GROUP: {METRIC: {"mean",
                   "std"}}}}, "per_seed", "diagnostics": {ROW: {NAME: {"mean", "std"}}},
                   "comparisons": {ROW: {GROUP: paired bootstrap vs the baseline}}, ...}
    results.md     the same as tables
    ranks.npz      per-user test ranks, one (S, U) array per row (the bootstrap's input)
    cells/         one file per finished (model, seed) cell: rerunning the same command
                   reuses them, so a long benchmark can be interrupted and resumed

A ROW is a model name, or "model/part" for the parts a runner reports beside its own
figure (FlexCode: "/dense", "/generative", "/exact", "/generative-exact"). GROUP is
all/head/tail/cold and METRIC one of recall@5, ndcg@5, recall@10, ndcg@10; a group with
no test user has null figures. std is the sample standard deviation over seeds (0 for one seed).
Comparisons: every row against the baseline model (default sasrec), per-user NDCG@10
differences on the same test users averaged over seeds, with a bootstrap interval
(`training.stats.paired_bootstrap`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from models.generator import GeneratorConfig
from training.baselines import MODEL_RUNNERS, RunContext
from training.data.preprocess import GROUPS, ProcessedDataset
from training.evaluate import METRICS, EvalResult, summarise
from training.loop import LoopConfig
from training.stages.generator import VARIANTS
from training.stages.generator.runner import default_generator_config
from training.stats import paired_bootstrap, per_user_ndcg

logger = logging.getLogger(__name__)

GROUP_KEYS = ("all", *GROUPS)


@dataclass(frozen=True)
class BenchmarkPlan:
    models: tuple[str, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_RUNNERS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(MODEL_RUNNERS)}")
        if not self.models or not self.seeds:
            raise ValueError("a benchmark needs at least one model and one seed")


def _row(model: str, part: str) -> str:
    return model if not part else f"{model}/{part}"


def _ranks_key(row: str) -> str:
    """A row's array name in ranks.npz (npz names cannot hold "/")."""
    return row.replace("/", "__")


# Settings (of the training loops and of the generator's architecture) added after
# cells were first kept: at their defaults they are left out of a cell's key, so those
# cells stay reusable. (SASRec's eval_users is not among them: its
# default changed from every user to 5,000, so older cells must not match.)
_ADDED_LATER = (
    "loss",
    "sampled_negatives",
    "negative_sampler",
    "ema_epochs",
    "id_dropout_tail",
    "dropout_grid",
    "history_profile",
)


def _settings(config: LoopConfig | GeneratorConfig) -> dict:
    settings = config.to_dict()
    for name in _ADDED_LATER:
        if name in settings and settings[name] == getattr(type(config), name):
            del settings[name]
    return settings


def _cell_key(model: str, seed: int, dataset: ProcessedDataset, context: RunContext) -> str:
    """What a cell's result depends on: the model, the seed, the data and every setting
    the runners read (not the device, the progress bars or where models are saved)."""
    settings = {
        "model": model,
        "seed": seed,
        "dataset": dataset.fingerprint,
        "sasrec": _settings(context.sasrec),
        "sasrec_model": context.sasrec_model,
        "generator": _settings(context.generator),
        "pipeline_dir": str(context.pipeline_dir),
    }
    if not context.exact_rows:  # a cell without the /exact rows (kept out at the default)
        settings["exact_rows"] = False
    if model in VARIANTS:
        # The generator's architecture defaults: a changed default (a third encoder block
        # since the fifth session) must not reuse cells trained with the old one.
        settings["generator_model"] = _settings(default_generator_config())
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return f"{model}-seed{seed}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _save_cell(path: Path, rows: dict[str, EvalResult], diagnostics: dict, seconds: float) -> None:
    """One finished cell, written atomically (a killed run leaves no half file)."""
    arrays = {}
    for i, result in enumerate(rows.values()):
        arrays[f"ranks_{i}"] = result.ranks
        arrays[f"groups_{i}"] = result.target_groups
    meta = {"rows": list(rows), "diagnostics": diagnostics, "seconds": seconds}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def _load_cell(path: Path) -> tuple[dict[str, EvalResult], dict, float]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        rows = {
            row: summarise(data[f"ranks_{i}"], data[f"groups_{i}"])
            for i, row in enumerate(meta["rows"])
        }
    return rows, meta["diagnostics"], float(meta["seconds"])


def _run_job(
    model: str,
    seed: int,
    dataset: ProcessedDataset,
    context: RunContext,
    threads: int,
    cell_path: Path | None = None,
) -> tuple[dict[str, EvalResult], dict, float]:
    """One (model, seed) cell: (results by row, diagnostics, seconds). Top-level so a
    worker process can run it. With cell_path, a cell finished by an earlier run is read
    back instead of trained again, and a new one is saved there."""
    if cell_path is not None and cell_path.exists():
        logger.info("benchmark: %s seed %d from %s", model, seed, cell_path)
        return _load_cell(cell_path)
    if threads:  # a spawned worker: its own thread budget and log handler
        torch.set_num_threads(threads)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logger.info("benchmark: %s seed %d", model, seed)
    start = time.perf_counter()
    out = MODEL_RUNNERS[model](dataset, seed, context)
    results, diagnostics = ({"": out}, {}) if isinstance(out, EvalResult) else out
    rows = {_row(model, part): result for part, result in results.items()}
    seconds = time.perf_counter() - start
    if cell_path is not None:
        _save_cell(cell_path, rows, diagnostics, seconds)
    return rows, diagnostics, seconds


def run_benchmark(
    dataset: ProcessedDataset,
    plan: BenchmarkPlan,
    context: RunContext,
    command: str,
    workers: int = 1,
    baseline: str | None = "sasrec",
    cells_dir: Path | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Every (model, seed) of the plan; returns (results, per-row (S, U) rank arrays).

    workers > 1 runs that many cells at once in spawned processes with one torch thread
    each: on a small CPU box, independent single-threaded runs use the cores better than
    one run's intra-op threads. Each cell is seeded on its own, so the figures do not
    depend on `workers`. cells_dir: every finished cell is kept there, keyed by what it
    depends on, and a rerun of the same command reads them back: an interrupted
    benchmark resumes where it stopped."""
    jobs = [(model, seed) for model in plan.models for seed in plan.seeds]
    paths: list[Path | None] = [None] * len(jobs)
    if cells_dir is not None:
        Path(cells_dir).mkdir(parents=True, exist_ok=True)
        paths = [Path(cells_dir) / f"{_cell_key(m, s, dataset, context)}.npz" for m, s in jobs]
    if workers <= 1:
        outputs = [
            _run_job(m, s, dataset, context, 0, p) for (m, s), p in zip(jobs, paths, strict=True)
        ]
    else:
        spawn = multiprocessing.get_context("spawn")  # fork after torch threads can hang
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            futures = [
                pool.submit(_run_job, m, s, dataset, context, 1, p)
                for (m, s), p in zip(jobs, paths, strict=True)
            ]
            outputs = [f.result() for f in futures]
    per_seed: dict[str, list[dict]] = {}
    ranks: dict[str, list[np.ndarray]] = {}
    diagnostics: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    counts = None
    for (model, _), (rows, diag, elapsed) in zip(jobs, outputs, strict=True):
        for row, result in rows.items():
            per_seed.setdefault(row, []).append(result.metrics)
            ranks.setdefault(row, []).append(result.ranks)
            counts = result.counts  # the same test users for every model
        if diag:
            diagnostics.setdefault(model, []).append(diag)
        seconds.setdefault(model, []).append(elapsed)
    rank_arrays = {row: np.stack(r) for row, r in ranks.items()}
    groups = outputs[-1][0][next(iter(outputs[-1][0]))].target_groups
    machine = machine_info(context.device)
    machine["benchmark_workers"] = workers
    results = {
        "dataset": dataset.name,
        "seeds": list(plan.seeds),
        "command": command,
        "models": {row: aggregate(runs) for row, runs in per_seed.items()},
        "per_seed": {row: [_json_safe(r) for r in runs] for row, runs in per_seed.items()},
        "diagnostics": {m: aggregate_flat(d) for m, d in diagnostics.items()},
        "comparisons": compare(rank_arrays, groups, baseline),
        "seconds_per_seed": {m: [round(s, 1) for s in v] for m, v in seconds.items()},
        "test_users": counts,
        "dataset_summary": dataset.summary(),
        "machine": machine,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return results, rank_arrays


def compare(
    rank_arrays: dict[str, np.ndarray], target_groups: np.ndarray, baseline: str | None
) -> dict:
    """Every row against `baseline`: paired bootstrap of per-user NDCG@10, by group."""
    if baseline is None or baseline not in rank_arrays:
        return {}
    base = per_user_ndcg(rank_arrays[baseline])
    out: dict[str, dict] = {}
    for row, ranks in rank_arrays.items():
        if row == baseline:
            continue
        ndcg = per_user_ndcg(ranks)
        seeds = min(len(ndcg), len(base))  # pair seed s with seed s
        out[row] = {"baseline": baseline}
        for index, group in enumerate(("all", *GROUPS)):
            users = np.ones(base.shape[1], bool) if group == "all" else target_groups == index - 1
            if not users.any():
                out[row][group] = None
                continue
            out[row][group] = paired_bootstrap(ndcg[:seeds, users], base[:seeds, users])
    return out


def compare_runs(run_a: Path, row_a: str, run_b: Path, row_b: str) -> dict:
    """Row A of one benchmark output directory against row B of another: the paired
    bootstrap of per-user NDCG@10 over all test users, seeds paired by index. For a
    baseline trained in its own run (another configuration of the same model, say); the
    two runs must have evaluated the same dataset split."""
    found = []
    for run, row in ((run_a, row_a), (run_b, row_b)):
        results = json.loads((Path(run) / "results.json").read_text())
        with np.load(Path(run) / "ranks.npz") as ranks:
            key = _ranks_key(row)
            if key not in ranks:
                raise ValueError(f"{run}/ranks.npz has no row {row!r}; it has {sorted(ranks)}")
            found.append((results, ranks[key]))
    (results_a, ranks_a), (results_b, ranks_b) = found
    for field in ("dataset_summary", "test_users"):
        if results_a.get(field) != results_b.get(field):
            raise ValueError(f"the two runs evaluated different data ({field} differs)")
    seeds = min(len(ranks_a), len(ranks_b))
    a, b = per_user_ndcg(ranks_a[:seeds]), per_user_ndcg(ranks_b[:seeds])
    return {
        "a": {"run": str(run_a), "row": row_a, "ndcg@10": float(a.mean())},
        "b": {"run": str(run_b), "row": row_b, "ndcg@10": float(b.mean())},
        "seeds": seeds,
        "all": paired_bootstrap(a, b),
    }


def aggregate(runs: list[dict[str, dict[str, float]]]) -> dict:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for group in GROUP_KEYS:
        out[group] = {}
        for metric in METRICS:
            values = np.array([run[group][metric] for run in runs], dtype=np.float64)
            if np.isnan(values).any():
                out[group][metric] = {"mean": None, "std": None}
                continue
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out[group][metric] = {"mean": float(values.mean()), "std": std}
    return out


def _flatten(prefix: str, value: object, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)


def aggregate_flat(runs: list[dict]) -> dict:
    """Nested numeric diagnostics of several seeds -> {"a.b": {"mean", "std"}}."""
    flat = []
    for run in runs:
        values: dict[str, float] = {}
        _flatten("", run, values)
        flat.append(values)
    keys = sorted(set().union(*flat))
    out = {}
    for key in keys:
        values = np.array([f[key] for f in flat if key in f])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": std}
    return out


def _json_safe(metrics: dict) -> dict:
    return {
        g: {m: (None if math.isnan(v) else v) for m, v in values.items()}
        for g, values in metrics.items()
    }


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cell(figure: dict) -> str:
    return "n/a" if figure["mean"] is None else f"{figure['mean']:.4f} ± {figure['std']:.4f}"


def results_markdown(results: dict) -> str:
    lines = [
        f"Dataset `{results['dataset']}`, seeds {results['seeds']}, "
        f"test users per group {results['test_users']}.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    for group in GROUP_KEYS:
        lines += [f"**{group}**", "", "| model | " + " | ".join(METRICS) + " |"]
        lines.append("|---" * (len(METRICS) + 1) + "|")
        for model, groups in results["models"].items():
            cells = [_cell(groups[group][metric]) for metric in METRICS]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    comparisons = results.get("comparisons") or {}
    if comparisons:
        base = next(iter(comparisons.values()))["baseline"]
        lines += [
            f"**NDCG@10 against {base}** (per-user differences on the same test users, "
            "averaged over seeds; 95% paired bootstrap interval)",
            "",
            "| model | group | difference | 95% interval | ratio |",
            "|---|---|---|---|---|",
        ]
        for row, by_group in comparisons.items():
            for group in GROUP_KEYS:
                c = by_group.get(group)
                if not c:
                    continue
                ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.3f}"
                lines.append(
                    f"| {row} | {group} | {c['diff']:+.4f} | "
                    f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {ratio} |"
                )
        lines.append("")
    diagnostics = results.get("diagnostics") or {}
    if diagnostics:
        lines += ["**Diagnostics** (mean ± std over seeds)", ""]
        for model, values in diagnostics.items():
            lines.append(f"- {model}: " + ", ".join(f"{k} {_cell(v)}" for k, v in values.items()))
        lines.append("")
    return "\n".join(lines)


def write_results(
    results: dict, out_dir: Path, rank_arrays: dict[str, np.ndarray] | None = None
) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, allow_nan=False))
    md_path.write_text(results_markdown(results))
    if rank_arrays:
        np.savez(out_dir / "ranks.npz", **{_ranks_key(k): v for k, v in rank_arrays.items()})
    return json_path, md_path
