import json

import numpy as np
import pytest
import torch

from training.data import PreprocessConfig, SyntheticConfig, load_dataset
from training.pipeline import ensure_cf_embeddings, run_tokenizer_stage
from training.stages.sasrec import SASRecTrainConfig
from training.stages.tokenizer import (
    TokenizerSpec,
    TokenizerTrainConfig,
    build_config,
    level_usage,
    load_tokenizer,
    tokenizer_report,
    train_tokenizer,
)


def clustered(n, dim, clusters, rng):
    centres = rng.normal(size=(clusters, dim)) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.normal(size=(n, dim)) * 0.3).astype(np.float32), labels


def test_level_usage_by_hand():
    codes = np.array([[0, 1], [0, 2], [1, 2], [1, 2]])
    usage = level_usage(codes, codebook_size=4)
    assert usage[0]["used"] == 2 and usage[0]["perplexity"] == pytest.approx(2.0)
    assert usage[1]["used"] == 2 and usage[1]["used_fraction"] == 0.5


def test_cca_aligns_better_than_no_align_on_shared_structure():
    # Both views are driven by the same latent clusters, as text and co-consumption are.
    rng = np.random.default_rng(0)
    n = 400
    sem, labels = clustered(n + 1, 24, 12, rng)
    centres_cf = rng.normal(size=(12, 8)) * 3
    cf = (centres_cf[labels] + rng.normal(size=(n + 1, 8)) * 0.3).astype(np.float32)
    warm = np.ones(n + 1, dtype=bool)
    train_config = TokenizerTrainConfig(epochs=40, batch_size=128, restart_every=5)
    reports = {}
    for weight in (0.0, 0.5):
        spec = TokenizerSpec(
            latent_dim=8, hidden_dims=(32,), n_levels=3, codebook_size=16, lambda_cca=weight
        )
        config = build_config(spec, 24, 8, n)
        result = train_tokenizer(sem, cf, warm, config, train_config, torch.device("cpu"), False)
        assert result.sem_codes.shape == (n + 1, 3) and (result.sem_codes[0] == -1).all()
        reports[weight] = tokenizer_report(result, sem, cf, train_config, probe=False)
    aligned, unaligned = (
        reports[0.5]["alignment"]["held_out"],
        reports[0.0]["alignment"]["held_out"],
    )
    assert aligned["items"] == 40
    assert aligned["mean_rank"] < 0.5 * unaligned["mean_rank"]
    for name in ("sem", "cf"):
        assert all(u["used"] >= 8 for u in reports[0.5]["usage"][name])
    assert set(reports[0.5]["collision_rate"]["by_n_cf"]) == {"0", "1", "2", "3"}


@pytest.mark.slow
def test_tokenizer_stage_end_to_end(tmp_path):
    dataset = load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=300, n_interactions=8000),
        tmp_path / "cache",
    )
    run_dir = tmp_path / "run"
    device = torch.device("cpu")
    ensure_cf_embeddings(dataset, run_dir, device, train_config=SASRecTrainConfig(max_epochs=2))
    spec = TokenizerSpec(latent_dim=8, n_levels=3, codebook_size=16)
    report = run_tokenizer_stage(
        dataset,
        run_dir,
        device,
        spec,
        TokenizerTrainConfig(epochs=10),
        cache_dir=tmp_path / "cache",
    )
    assert "no_align" in report and "alignment_probe" in report
    saved = json.loads((run_dir / "tokenizer" / "report.json").read_text())
    assert saved["warm_items"] == report["warm_items"]
    assert "| sem |" in (run_dir / "tokenizer" / "report.md").read_text()
    model, codes = load_tokenizer(run_dir / "tokenizer", device)
    warm = codes["warm"]
    assert codes["sem_codes"].shape == (dataset.n_items + 1, 3)
    # the saved weights re-encode to the saved codes
    cf_emb = np.load(run_dir / "sasrec" / "cf_embeddings.npy")
    again = model.encode_cf(torch.as_tensor(cf_emb[warm])).numpy()
    assert np.array_equal(again, codes["cf_codes"][warm])
    # a second dataset in the same run directory is refused
    other = load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=200, n_interactions=6000),
        tmp_path / "cache",
    )
    with pytest.raises(ValueError, match="another --run-dir"):
        ensure_cf_embeddings(other, run_dir, device)
