import numpy as np
import pytest
import torch

from models.generator import GeneratorConfig
from models.item_table import ItemTable
from models.router import RouterConfig
from models.tokens import CF, KIND_CODE, KIND_DEDUP, SEM
from training.baselines import RunContext
from training.data import PreprocessConfig, SyntheticConfig, load_dataset
from training.stages.generator import (
    GeneratorTrainConfig,
    build_index,
    evaluate_generator,
    flexcode_runner,
    generator_topk_fn,
    impute_cold_cf_codes,
    item_features,
    layout_for,
    load_generator,
    save_generator,
    train_generator,
)
from training.stages.tokenizer import (
    TokenizerSpec,
    TokenizerTrainConfig,
    build_config,
    train_tokenizer,
)

CPU = torch.device("cpu")


def tiny_tokenizer(n_items, warm, seed=0, epochs=5):
    rng = np.random.default_rng(seed)
    sem = rng.normal(size=(n_items + 1, 16)).astype(np.float32)
    cf = rng.normal(size=(n_items + 1, 8)).astype(np.float32)
    spec = TokenizerSpec(latent_dim=8, hidden_dims=(32,), n_levels=3, codebook_size=16)
    config = build_config(spec, 16, 8, n_items)
    train_config = TokenizerTrainConfig(epochs=epochs, batch_size=128, restart_every=5)
    result = train_tokenizer(sem, cf, warm, config, train_config, CPU, progress=False)
    codes = {"sem_codes": result.sem_codes, "cf_codes": result.cf_codes, "warm": result.warm}
    return result.model, codes, cf


def test_impute_cold_cf_codes_copies_a_warm_items_codes():
    n = 120
    warm = np.ones(n + 1, dtype=bool)
    warm[0] = False
    warm[100:] = False  # items 100..120 are cold
    tokenizer, codes, _ = tiny_tokenizer(n, warm)
    sem, cf = codes["sem_codes"].copy(), codes["cf_codes"].copy()
    sem[0] = cf[0] = 0
    out = impute_cold_cf_codes(tokenizer, sem, cf, warm)
    assert out.shape == cf.shape
    np.testing.assert_array_equal(out[warm], cf[warm])
    np.testing.assert_array_equal(out[0], cf[0])
    # Brute force in the aligned space: each cold item copies its nearest warm item.
    with torch.no_grad():
        unit = torch.nn.functional.normalize
        sem_pts = unit(tokenizer.project_sem_codes(torch.as_tensor(sem[100:])), dim=1)
        cf_pts = unit(tokenizer.project_cf_codes(torch.as_tensor(cf[warm])), dim=1)
    nearest = np.flatnonzero(warm)[(sem_pts @ cf_pts.T).argmax(dim=1).numpy()]
    np.testing.assert_array_equal(out[100:], cf[nearest])


def test_item_table_hard_tokens():
    rng = np.random.default_rng(0)
    n, budget = 200, 3
    cf = rng.integers(0, 4, size=(n + 1, 4))  # small K: many collisions, dedup needed
    sem = rng.integers(0, 4, size=(n + 1, 4))
    layout = layout_for(sem[1:], cf[1:], budget, codebook_size=4, slack=0)
    table = ItemTable(cf, sem, budget, layout)
    n_cf = rng.integers(0, budget + 1, size=n + 1)
    tokens = table.hard_tokens(n_cf)
    assert tokens.shape == (n + 1, budget + 1)
    assert (tokens[0] == 0).all()
    assert len({tuple(r) for r in tokens[1:]}) == n
    info = layout.describe(tokens[1:])
    assert (info["kind"][:, :budget] == KIND_CODE).all()
    assert (info["kind"][:, budget] == KIND_DEDUP).all()
    pos = np.arange(budget)[None, :]
    expect = np.where(pos < n_cf[1:, None], CF, SEM)
    np.testing.assert_array_equal(info["codebook"][:, :budget], expect)
    # Every split fits the dedup block (layout_for bounds all splits).
    for split in range(budget + 1):
        table.hard_tokens(np.full(n + 1, split))
    cf_mask, sem_mask = table.hard_masks(n_cf)
    np.testing.assert_array_equal(cf_mask.sum(1).numpy(), n_cf)
    np.testing.assert_array_equal((cf_mask + sem_mask).sum(1).numpy(), budget)


def test_flexcode_runner_rejects_unknown_variant_and_missing_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        flexcode_runner("nope")

    context = RunContext(device=CPU, pipeline_dir=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="flexcode train tokenizer"):
        flexcode_runner("full")(None, 0, context)


@pytest.mark.slow
def test_train_generator_end_to_end(tmp_path):
    dataset = load_dataset(
        "synthetic",
        PreprocessConfig(),
        SyntheticConfig(n_items=300, n_interactions=8000),
        tmp_path / "cache",
    )
    warm = dataset.train_counts() > 0
    tokenizer, codes, cf_emb = tiny_tokenizer(dataset.n_items, warm)
    features = item_features(dataset, tokenizer, codes, cf_emb)
    assert features.shape == (dataset.n_items + 1, 4) and np.isfinite(features).all()

    train_config = GeneratorTrainConfig(
        max_epochs=2, eval_every=2, finetune_epochs=1, eval_users=50, beam_width=20
    )
    gen_config = GeneratorConfig(vocab_size=1, budget=3, max_len=20, hidden=32, n_layers=1)
    test = dataset.test()
    for fixed in (None, 0.0):
        router_config = RouterConfig(budget=3, fixed_alpha=fixed)
        result = train_generator(
            dataset, tokenizer, codes, router_config, gen_config, train_config, CPU, False, cf_emb
        )
        assert result.item_tokens.shape == (dataset.n_items + 1, 4)
        assert [c["phase"] for c in result.curve] == [1, 2]
        if fixed is None:
            assert np.abs(result.alpha[1:] - 0.5).max() > 1e-6  # gradient reached the router
        else:
            assert (result.n_cf == 0).all()
            assert np.allclose(result.alpha, 0.0)

        evaluation = evaluate_generator(result, dataset, CPU, "test")
        assert all(np.isfinite(v) for v in evaluation.metrics["all"].values())
        assert evaluation.counts["all"] == len(test.users)

        # What stage D saves is what export reads: the reloaded model ranks identically.
        save_generator(result, dataset, train_config, tmp_path / f"gen-{fixed}")
        loaded = load_generator(tmp_path / f"gen-{fixed}", CPU)
        np.testing.assert_array_equal(loaded.item_tokens, result.item_tokens)
        np.testing.assert_array_equal(loaded.table.cf_codes, result.table.cf_codes)
        reloaded = evaluate_generator(loaded, dataset, CPU, "test")
        np.testing.assert_equal(reloaded.metrics, evaluation.metrics)  # NaN = empty group

        # The top-k lists themselves: real items, never a history item.
        index = build_index(result.item_tokens, result.layout, CPU)
        fn = generator_topk_fn(
            result.generator, result.table, result.item_tokens, result.n_cf, index, CPU, 20
        )
        idx = np.arange(40)
        history = test.history.select(idx)
        topk = fn(test.users[idx], history)
        assert topk.shape == (40, 20)
        assert (topk[:, :10] >= 1).all()  # a wide enough beam fills the top 10
        assert (((topk >= 1) & (topk <= dataset.n_items)) | (topk == -1)).all()
        for row in range(40):
            got = topk[row][topk[row] > 0]
            assert len(set(got)) == len(got)
            assert not set(got) & set(history[row].tolist())
