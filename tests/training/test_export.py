"""Export of a tiny trained run to a bundle, and what the bundle then serves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.bundle import load_bundle, resolve_bundle_path
from models.decoding import recommend_top_k
from models.generator import GeneratorConfig
from models.item_attributes import split_categories
from models.item_table import ItemTable
from models.onnx_generator import OnnxGenerator
from models.router import RouterConfig
from training.data import PreprocessConfig, SyntheticConfig, load_dataset
from training.data.preprocess import warm_mask
from training.export import ExportError, export_bundle
from training.stages.generator import (
    GeneratorTrainConfig,
    build_item_inputs,
    save_generator,
    train_generator,
)
from training.stages.tokenizer import (
    TokenizerSpec,
    TokenizerTrainConfig,
    build_config,
    save_tokenizer,
    train_tokenizer,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the pipeline leaves it: run.json, tokenizer/, generator/."""
    root = tmp_path_factory.mktemp("export")
    dataset = load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=120, n_interactions=2500),
        root / "cache",
    )
    run = root / "run"
    run.mkdir()
    info = {"dataset": dataset.name, "fingerprint": dataset.fingerprint, "items": dataset.n_items}
    (run / "run.json").write_text(json.dumps(info))

    rng = np.random.default_rng(0)
    sem = rng.normal(size=(dataset.n_items + 1, 16)).astype(np.float32)
    cf = rng.normal(size=(dataset.n_items + 1, 8)).astype(np.float32)
    warm = dataset.train_counts() > 0
    spec = TokenizerSpec(latent_dim=8, hidden_dims=(16,), n_levels=3, codebook_size=8)
    tok_train = TokenizerTrainConfig(epochs=2, batch_size=128, restart_every=5)
    tok = train_tokenizer(
        sem, cf, warm, build_config(spec, 16, 8, dataset.n_items), tok_train, CPU, progress=False
    )
    save_tokenizer(tok, tok_train, run / "tokenizer", None)
    codes = {"sem_codes": tok.sem_codes, "cf_codes": tok.cf_codes, "warm": tok.warm}

    gen_train = GeneratorTrainConfig(max_epochs=1, eval_users=20, beam_width=10)
    text = sem  # the bundle's text embeddings: any (N + 1, D) table works here
    inputs = build_item_inputs(dataset, tok.model, codes, 3, text)
    config = GeneratorConfig(
        vocab_size=1, budget=3, n_ids=1, code_levels=1, max_len=10, hidden=16, n_layers=1
    )
    result = train_generator(
        dataset, inputs, RouterConfig(budget=3), config, gen_train, CPU, progress=False
    )
    save_generator(result, dataset, gen_train, run / "generator", {"variant": "flexcode"})
    return run, dataset, result


def test_export_writes_a_verified_bundle_that_serves_like_the_run(run_dir, tmp_path):
    run, dataset, result = run_dir
    bundle_dir = export_bundle(run, tmp_path / "bundles")
    assert resolve_bundle_path(tmp_path / "bundles") == bundle_dir

    b = load_bundle(tmp_path / "bundles")
    m = b.manifest
    assert m.dataset["fingerprint"] == dataset.fingerprint
    assert m.dataset["n_items"] == b.n_items == dataset.n_items
    assert m.metrics["variant"] == "flexcode"
    for group, values in result.best_valid.items():  # NaN (an empty group) -> null
        want = {k: (v if np.isfinite(v) else None) for k, v in values.items()}
        assert m.metrics["valid"][group] == want
    assert m.metrics["onnx_max_abs_diff"] <= 1e-4
    assert m.config["text_model_id"].startswith("all-MiniLM-L6-v2@")
    assert b.decoding == result.decoding
    np.testing.assert_array_equal(b.external_ids, dataset.item_ids)
    np.testing.assert_array_equal(b.item_tokens, result.layout.item_tokens)
    np.testing.assert_array_equal(b.popularity, dataset.train_counts())
    warm = warm_mask(dataset.train_counts())
    np.testing.assert_array_equal(b.imputation_ids, np.flatnonzero(warm))
    # Each item's categories, from the dataset's categories column (for filters).
    names, ptr, ids = b.category_names, b.category_ptr, b.category_ids
    for row in (1, b.n_items // 2, b.n_items):
        want = split_categories(dataset.items["categories"].iloc[row])
        assert sorted(names[ids[ptr[row] : ptr[row + 1]]]) == sorted(want)
    assert len(ids) > 0

    # The bundle's item table, and both its torch and ONNX generators, rank as the
    # trained model does.
    served = result.served(CPU)
    np.testing.assert_allclose(b.item_vectors, served.catalogue.item_vectors.numpy(), atol=1e-6)
    table = ItemTable(b.item_vectors, b.item_tokens, b.prefix_index)
    seq = torch.as_tensor(dataset.test().history.select(np.arange(8)).last(10))
    exclude = torch.where(seq > 0, seq, -1)
    want, want_scores = recommend_top_k(
        result.generator, seq, served.catalogue, 10, result.decoding, exclude
    )
    onnx = OnnxGenerator.from_files(b.generator.config, b.onnx_paths)
    for model in (b.generator, onnx):
        got, scores = recommend_top_k(model, seq, table.catalogue(), 10, b.decoding, exclude)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(scores, want_scores, atol=1e-4, rtol=1e-4)


def test_export_refuses_a_run_without_stage_d(run_dir, tmp_path):
    run, _, _ = run_dir
    with pytest.raises(ExportError, match=r"generator\.json"):
        export_bundle(run, tmp_path / "bundles", generator_dir=tmp_path / "nothing")
    assert not (tmp_path / "bundles").exists()


def test_export_refuses_a_generator_trained_on_another_tokenizer(run_dir, tmp_path):
    import shutil

    run, _, _ = run_dir
    other = tmp_path / "run"
    shutil.copytree(run, other)
    codes = dict(np.load(other / "tokenizer" / "codes.npz"))
    codes["sem_codes"][1:] = (codes["sem_codes"][1:] + 1) % 8
    np.savez(other / "tokenizer" / "codes.npz", **codes)
    with pytest.raises(ExportError, match="another tokenizer"):
        export_bundle(other, tmp_path / "bundles")
    assert not (tmp_path / "bundles").exists()
