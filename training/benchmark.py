"""`flexcode benchmark`: train and evaluate several models over several seeds in one run.

Writes results.json (shape below, read by later tooling) and results.md into the
output directory, and prints the tables.

    {"dataset": str, "seeds": [int], "command": str,
     "models": {MODEL: {GROUP: {METRIC: {"mean": x, "std": y}}}}, ...}

GROUP is all/head/tail/cold and METRIC one of recall@5, ndcg@5, recall@10, ndcg@10;
a group with no test user has null figures. std is the sample standard deviation over
seeds (0 for a single seed).
"""

from __future__ import annotations

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

from training.baselines import MODEL_RUNNERS, RunContext
from training.data.preprocess import GROUPS, ProcessedDataset
from training.evaluate import METRICS

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


def _run_job(
    model: str, seed: int, dataset: ProcessedDataset, context: RunContext, threads: int
) -> tuple[dict, dict, float]:
    """One (model, seed) cell: (metrics, test user counts, seconds). Top-level so a
    worker process can run it."""
    if threads:  # a spawned worker: its own thread budget and log handler
        torch.set_num_threads(threads)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logger.info("benchmark: %s seed %d", model, seed)
    start = time.perf_counter()
    result = MODEL_RUNNERS[model](dataset, seed, context)
    return result.metrics, result.counts, time.perf_counter() - start


def run_benchmark(
    dataset: ProcessedDataset,
    plan: BenchmarkPlan,
    context: RunContext,
    command: str,
    workers: int = 1,
) -> dict:
    """Every (model, seed) of the plan. workers > 1 runs that many cells at once in
    spawned processes with one torch thread each: on a small CPU box, independent
    single-threaded runs use the cores better than one run's intra-op threads. Each
    cell is seeded on its own, so the figures do not depend on `workers`."""
    jobs = [(model, seed) for model in plan.models for seed in plan.seeds]
    if workers <= 1:
        outputs = [_run_job(m, s, dataset, context, 0) for m, s in jobs]
    else:
        spawn = multiprocessing.get_context("spawn")  # fork after torch threads can hang
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            futures = [pool.submit(_run_job, m, s, dataset, context, 1) for m, s in jobs]
            outputs = [f.result() for f in futures]
    per_seed: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    for (model, _), (metrics, _, elapsed) in zip(jobs, outputs, strict=True):
        per_seed.setdefault(model, []).append(metrics)
        seconds.setdefault(model, []).append(elapsed)
    counts = outputs[-1][1]  # the same test users for every model
    machine = machine_info(context.device)
    machine["benchmark_workers"] = workers
    return {
        "dataset": dataset.name,
        "seeds": list(plan.seeds),
        "command": command,
        "models": {m: aggregate(runs) for m, runs in per_seed.items()},
        "per_seed": {m: [_json_safe(r) for r in runs] for m, runs in per_seed.items()},
        "seconds_per_seed": {m: [round(s, 1) for s in v] for m, v in seconds.items()},
        "test_users": counts,
        "dataset_summary": dataset.summary(),
        "machine": machine,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
            cells = []
            for metric in METRICS:
                figure = groups[group][metric]
                cells.append(
                    "n/a"
                    if figure["mean"] is None
                    else f"{figure['mean']:.4f} ± {figure['std']:.4f}"
                )
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, allow_nan=False))
    md_path.write_text(results_markdown(results))
    return json_path, md_path
