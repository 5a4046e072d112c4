"""The smallest `flexcode train pipeline` run that still exercises every stage: shared by
the single-process CLI test and the torchrun test, so both train the same thing."""

from __future__ import annotations

from pathlib import Path

SMALL_SYNTHETIC = [
    "--dataset",
    "synthetic",
    "--synthetic-items",
    "300",
    "--synthetic-interactions",
    "6000",
]


def tiny_pipeline_args(tmp_path: Path) -> list[str]:
    """`train pipeline ...` arguments writing to tmp_path/{run,bundles,cache}."""
    return [
        "train",
        "pipeline",
        *SMALL_SYNTHETIC,
        "--run-dir",
        str(tmp_path / "run"),
        "--bundle-root",
        str(tmp_path / "bundles"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--sasrec-max-epochs",
        "2",
        "--tokenizer-epochs",
        "5",
        "--generator-max-epochs",
        "2",
    ]
