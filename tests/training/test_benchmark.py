from dataclasses import replace

import pytest
import torch

from training.baselines import RunContext
from training.benchmark import BenchmarkPlan, run_benchmark
from training.data import PreprocessConfig, SyntheticConfig, load_dataset
from training.stages.sasrec import SASRecTrainConfig


@pytest.mark.slow
def test_parallel_workers_give_the_same_figures(tmp_path):
    dataset = load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=200, n_interactions=4000),
        tmp_path / "cache",
    )
    context = RunContext(
        device=torch.device("cpu"),
        sasrec=replace(SASRecTrainConfig(), max_epochs=2),
        progress=False,
    )
    plan = BenchmarkPlan(models=("pop", "sasrec"), seeds=(0, 1))
    serial = run_benchmark(dataset, plan, context, "test", workers=1)
    parallel = run_benchmark(dataset, plan, context, "test", workers=2)
    assert parallel["per_seed"] == serial["per_seed"]
    assert parallel["machine"]["benchmark_workers"] == 2
    # Seeds change SASRec's figures, so the comparison above is not trivially equal.
    assert serial["per_seed"]["sasrec"][0] != serial["per_seed"]["sasrec"][1]
