import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from training.baselines import RunContext
from training.benchmark import BenchmarkPlan, compare, compare_runs, run_benchmark, write_results
from training.data import PreprocessConfig, SyntheticConfig, load_dataset
from training.evaluate import MISS
from training.stages.generator import GeneratorTrainConfig
from training.stages.sasrec import SASRecTrainConfig
from training.stats import paired_bootstrap, per_user_ndcg


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
    serial, serial_ranks = run_benchmark(dataset, plan, context, "test", workers=1)
    parallel, _ = run_benchmark(dataset, plan, context, "test", workers=2)
    assert parallel["per_seed"] == serial["per_seed"]
    assert parallel["machine"]["benchmark_workers"] == 2
    # Seeds change SASRec's figures, so the comparison above is not trivially equal.
    assert serial["per_seed"]["sasrec"][0] != serial["per_seed"]["sasrec"][1]
    # Per-user ranks of every (model, seed) are kept, and pop is compared with sasrec.
    assert serial_ranks["pop"].shape == (2, len(dataset.test().users))
    assert set(serial["comparisons"]) == {"pop"}
    assert serial["comparisons"]["pop"]["baseline"] == "sasrec"
    write_results(serial, tmp_path / "out", serial_ranks)
    saved = np.load(tmp_path / "out" / "ranks.npz")
    np.testing.assert_array_equal(saved["sasrec"], serial_ranks["sasrec"])


def test_per_user_ndcg():
    ranks = np.array([0, 1, 9, 10, MISS])
    np.testing.assert_allclose(
        per_user_ndcg(ranks), [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0]
    )


def test_paired_bootstrap_finds_a_real_gain_and_no_gain_in_noise():
    rng = np.random.default_rng(0)
    base = rng.random((3, 900))
    better = base + 0.05 + rng.normal(0, 0.05, size=base.shape)
    out = paired_bootstrap(better, base, n_resamples=2000)
    assert out["ci_low"] > 0.04 and out["ci_high"] < 0.06
    assert out["diff"] == pytest.approx(0.05, abs=0.005)
    assert out["p_not_better"] == 0.0
    same = paired_bootstrap(base + rng.normal(0, 0.05, size=base.shape), base, n_resamples=2000)
    assert same["ci_low"] < 0 < same["ci_high"]
    # Pairing matters: a constant shift on noisy per-user values is found exactly.
    shifted = paired_bootstrap(base + 0.001, base, n_resamples=500)
    assert shifted["ci_low"] == pytest.approx(0.001) and shifted["ci_high"] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="different users"):
        paired_bootstrap(base, base[:, :10])


def test_compare_by_group():
    rng = np.random.default_rng(1)
    groups = np.array([0] * 50 + [1] * 50)
    sasrec = rng.integers(0, 20, size=(2, 100))
    model = sasrec.copy()
    model[:, 50:] = 0  # better on the tail only
    out = compare({"sasrec": sasrec, "m": model}, groups, "sasrec")
    assert set(out) == {"m"}
    assert out["m"]["tail"]["ci_low"] > 0
    assert out["m"]["head"]["diff"] == 0.0
    assert out["m"]["cold"] is None  # no cold target users
    assert compare({"m": model}, groups, "sasrec") == {}


def test_an_interrupted_benchmark_resumes_from_its_cells(tmp_path, monkeypatch):
    dataset = load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=120, n_interactions=2000),
        tmp_path / "cache",
    )
    context = RunContext(device=torch.device("cpu"), progress=False)
    plan = BenchmarkPlan(models=("pop",), seeds=(0, 1))
    first, _ = run_benchmark(dataset, plan, context, "test", cells_dir=tmp_path / "cells")
    assert len(list((tmp_path / "cells").glob("pop-seed*.npz"))) == 2

    # A rerun trains nothing: every cell is read back, with the same figures.
    import training.benchmark as bench

    def no_training(*args):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setitem(bench.MODEL_RUNNERS, "pop", no_training)
    again, _ = run_benchmark(dataset, plan, context, "test", cells_dir=tmp_path / "cells")
    assert again["per_seed"] == first["per_seed"]
    # Another setting is another cell.
    other = RunContext(device=torch.device("cpu"), progress=False, sasrec_model={"max_len": 7})
    with pytest.raises(AssertionError, match="trained again"):
        run_benchmark(dataset, plan, other, "test", cells_dir=tmp_path / "cells")
    # A cell without FlexCode's whole-catalogue rows is not one with them.
    no_exact = RunContext(device=torch.device("cpu"), progress=False, exact_rows=False)
    with pytest.raises(AssertionError, match="trained again"):
        run_benchmark(dataset, plan, no_exact, "test", cells_dir=tmp_path / "cells")


def _fake_run(path, rows: dict[str, np.ndarray], summary: dict) -> None:
    # The two files compare_runs reads, as write_results lays them out.
    path.mkdir()
    results = {"dataset_summary": summary, "test_users": {"all": 50}}
    (path / "results.json").write_text(json.dumps(results))
    np.savez(path / "ranks.npz", **{k.replace("/", "__"): v for k, v in rows.items()})


def test_compare_runs_pairs_users_across_two_output_directories(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 30, size=(2, 50))
    better = np.maximum(base - 3, 0)  # every user's target ranked 3 places higher
    summary = {"dataset": "toy", "users": 50}
    _fake_run(tmp_path / "a", {"flexcode": better, "flexcode/dense": base}, summary)
    _fake_run(tmp_path / "b", {"sasrec": base}, summary)
    found = compare_runs(tmp_path / "a", "flexcode", tmp_path / "b", "sasrec")
    assert found["seeds"] == 2
    assert found["all"]["ci_low"] > 0
    same = compare_runs(tmp_path / "a", "flexcode/dense", tmp_path / "b", "sasrec")
    assert same["all"]["diff"] == 0.0
    with pytest.raises(ValueError, match="no row"):
        compare_runs(tmp_path / "a", "sasrec", tmp_path / "b", "sasrec")
    _fake_run(tmp_path / "c", {"sasrec": base}, {"dataset": "other", "users": 50})
    with pytest.raises(ValueError, match="different data"):
        compare_runs(tmp_path / "a", "flexcode", tmp_path / "c", "sasrec")


@pytest.fixture(scope="module")
def small_dataset():
    """A small synthetic catalogue: what the cell-key tests hash."""
    return load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=300, n_interactions=3000),
        cache_dir=None,
    )


def test_default_softmax_settings_keep_earlier_cells_keys(small_dataset):
    from training.benchmark import _cell_key

    dataset = small_dataset
    context = RunContext(device=torch.device("cpu"))
    key = _cell_key("sasrec", 0, dataset, context)
    explicit = replace(context, sasrec=SASRecTrainConfig(loss="auto"))
    assert _cell_key("sasrec", 0, dataset, explicit) == key
    forced = replace(context, sasrec=SASRecTrainConfig(loss="sampled"))
    assert _cell_key("sasrec", 0, dataset, forced) != key
    # A stage D setting added later: at its default the key stays, set it moves.
    flexcode = _cell_key("flexcode", 0, dataset, context)
    tail_drop = replace(context, generator=GeneratorTrainConfig(id_dropout_tail=0.4))
    assert _cell_key("flexcode", 0, dataset, tail_drop) != flexcode
    default = replace(context, generator=GeneratorTrainConfig(id_dropout_tail=None))
    assert _cell_key("flexcode", 0, dataset, default) == flexcode


def test_a_changed_generator_default_does_not_reuse_flexcode_cells(small_dataset, monkeypatch):
    """The key holds the generator's architecture defaults (GeneratorConfig), so cells
    trained before a default changed (2 encoder blocks, then 3) are not read back as the
    new configuration's; SASRec's keys do not move."""
    import training.benchmark as benchmark
    from training.stages.generator.runner import default_generator_config

    dataset = small_dataset
    context = RunContext(device=torch.device("cpu"))
    flexcode = benchmark._cell_key("flexcode", 0, dataset, context)
    sasrec = benchmark._cell_key("sasrec", 0, dataset, context)
    two_blocks = replace(default_generator_config(), n_layers=2)
    monkeypatch.setattr(benchmark, "default_generator_config", lambda: two_blocks)
    assert benchmark._cell_key("flexcode", 0, dataset, context) != flexcode
    assert benchmark._cell_key("sasrec", 0, dataset, context) == sasrec
    # An architecture switch added later (the history profile) moves the key when on,
    # and at its default leaves the key the cells had before it existed.
    profiled = replace(default_generator_config(), history_profile=True)
    monkeypatch.setattr(benchmark, "default_generator_config", lambda: profiled)
    assert benchmark._cell_key("flexcode", 0, dataset, context) != flexcode
    monkeypatch.setattr(benchmark, "default_generator_config", default_generator_config)
    before = {k: v for k, v in asdict(default_generator_config()).items() if k != "history_profile"}
    settings = benchmark._settings(default_generator_config())
    assert settings == before
