import json

import pytest
from typer.testing import CliRunner

from training.cli import app

SMALL = [
    "--dataset",
    "synthetic",
    "--synthetic-items",
    "300",
    "--synthetic-interactions",
    "6000",
]


@pytest.mark.slow
def test_benchmark_writes_results_in_the_documented_shape(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            *SMALL,
            "--models",
            "pop,sasrec",
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
    assert set(results["models"]) == {"pop", "sasrec"}
    for groups in results["models"].values():
        assert set(groups) == {"all", "head", "tail", "cold"}
        for metrics in groups.values():
            assert set(metrics) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    pop = results["models"]["pop"]["all"]["ndcg@10"]
    assert pop["std"] == 0.0 and 0.0 < pop["mean"] < 1.0
    assert results["test_users"]["cold"] > 0
    assert (out / "results.md").read_text().count("| pop |") == 4


def test_unknown_model_and_bad_dataset_are_clear_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["benchmark", *SMALL, "--models", "pop,nope"])
    assert result.exit_code == 2
    assert "nope" in result.output and "sasrec" in result.output
    result = runner.invoke(app, ["data", "--dataset", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "missing" in result.output


def test_data_command_prints_summary(tmp_path):
    result = CliRunner().invoke(app, ["data", *SMALL, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["items"] > 0 and summary["users"] > 0
