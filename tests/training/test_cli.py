import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.training.tiny_pipeline import SMALL_SYNTHETIC, tiny_pipeline_args
from training.cli import app
from training.evaluate import NEW_ITEM_SHARES

SMALL = SMALL_SYNTHETIC


@pytest.mark.slow
def test_benchmark_writes_results_in_the_documented_shape(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            *SMALL,
            "--models",
            "pop,sasrec,content-knn,sasrec-content",
            "--seeds",
            "2",
            "--cold-fraction",
            "0.05",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--device",
            "cpu",
            "--sasrec-max-epochs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    assert results["command"].startswith("flexcode benchmark")
    shares = {f"sasrec-content/share-{share:g}" for share in NEW_ITEM_SHARES}
    # sasrec-content can score items without an id: it adds one row per new-item share.
    assert set(results["models"]) == {"pop", "sasrec", "content-knn", "sasrec-content"} | shares
    for groups in results["models"].values():
        assert set(groups) == {"all", "head", "tail", "cold"}
        for metrics in groups.values():
            assert set(metrics) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    pop = results["models"]["pop"]["all"]["ndcg@10"]
    assert pop["std"] == 0.0 and 0.0 < pop["mean"] < 1.0
    assert results["test_users"]["cold"] > 0
    # Text similarity reaches held-out items; an ID model never can.
    assert results["models"]["content-knn"]["cold"]["recall@10"]["mean"] > 0
    assert results["models"]["sasrec"]["cold"]["recall@10"]["mean"] == 0
    # The id + content SASRec trains and is measured on the same users (its text path is
    # checked in tests/models/test_sasrec.py).
    content = results["per_seed"]["sasrec-content"][0]
    assert all(np.isfinite(v) for g in ("all", "cold") for v in content[g].values())
    markdown = (out / "results.md").read_text()
    assert markdown.count("| pop |") == 4 + 4  # 4 group tables + 4 comparison rows
    # Every model is compared with sasrec on the same test users (paired bootstrap).
    assert set(results["comparisons"]) == {"pop", "content-knn", "sasrec-content"} | shares
    # The largest share moves the most mass onto the held-out items: more cold hits.
    cold_recall = {m: results["models"][m]["cold"]["recall@10"]["mean"] for m in results["models"]}
    assert (
        cold_recall[f"sasrec-content/share-{max(NEW_ITEM_SHARES):g}"]
        >= cold_recall["sasrec-content"]
    )
    cell = results["comparisons"]["pop"]["all"]
    assert cell["ci_low"] <= cell["diff"] <= cell["ci_high"]
    assert results["comparisons"]["pop"]["baseline"] == "sasrec"
    assert np.load(out / "ranks.npz")["sasrec"].shape == (2, results["test_users"]["all"])


def test_unknown_model_and_bad_dataset_are_clear_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["benchmark", *SMALL, "--models", "pop,nope"])
    assert result.exit_code == 2
    assert "nope" in result.output and "sasrec" in result.output
    result = runner.invoke(app, ["data", "--dataset", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "missing" in result.output
    # The synthetic world's law on other data: refused before anything trains.
    result = runner.invoke(
        app, ["benchmark", "--dataset", str(tmp_path / "x"), "--models", "sasrec,oracle"]
    )
    assert result.exit_code == 2
    assert "only for --dataset synthetic" in result.output


def test_data_command_prints_summary(tmp_path):
    result = CliRunner().invoke(app, ["data", *SMALL, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["items"] > 0 and summary["users"] > 0


def write_recbole(directory, n_items=200, n_interactions=5000):
    """A small dataset in RecBole atomic format, as a user would bring it."""
    from training.data.synthetic import SyntheticConfig, generate_synthetic

    raw = generate_synthetic(SyntheticConfig(n_items=n_items, n_interactions=n_interactions))
    directory.mkdir()
    inter = raw.interactions.rename(
        columns={
            "user_id": "user_id:token",
            "item_id": "item_id:token",
            "timestamp": "timestamp:float",
        }
    )
    inter.to_csv(directory / "mine.inter", sep="\t", index=False)
    items = raw.items[["item_id", "title", "categories"]].rename(
        columns={
            "item_id": "item_id:token",
            "title": "title:token_seq",
            "categories": "categories:token",
        }
    )
    items.to_csv(directory / "mine.item", sep="\t", index=False)
    return directory


@pytest.mark.slow
def test_tune_on_user_data_writes_ranked_results(tmp_path):
    data_dir = write_recbole(tmp_path / "mine")
    out = tmp_path / "tune.json"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "sasrec",
            "--dataset",
            str(data_dir),
            "--max-len",
            "20",
            "--dropout",
            "0.2,0.5",
            "--lr",
            "2e-3",
            "--max-epochs",
            "2",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "mine"
    assert "--dropout 0.2,0.5" in report["command"]
    scores = [run["valid_ndcg@10"] for run in report["runs"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_train_pipeline_exports_a_bundle_that_loads(tmp_path):
    from models.bundle import load_bundle

    args = tiny_pipeline_args(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "bundles")
    saved = np.load(tmp_path / "run" / "generator" / "items.npz")
    np.testing.assert_array_equal(bundle.external_ids, saved["external_ids"])
    np.testing.assert_array_equal(bundle.item_tokens, saved["item_tokens"])
    generator_json = json.loads((tmp_path / "run" / "generator" / "generator.json").read_text())
    assert generator_json["variant"] == "flexcode"
    assert (tmp_path / "run" / "generator" / "alpha.png").stat().st_size > 0
    # A second call with --if-missing leaves the bundle alone.
    again = CliRunner().invoke(app, [*args, "--if-missing"])
    assert again.exit_code == 0 and "already holds" in again.output
