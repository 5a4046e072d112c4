"""Stage D: inputs, training, evaluation, save/load, and a new item that must be found."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from models.cold_start import ColdStart, aligned_cf_vectors, build_imputation_index
from models.decoding import recommend_top_k
from models.generator import GeneratorConfig
from models.item_table import ItemTable
from models.prefix_index import build_prefix_index
from models.router import Router, RouterConfig
from models.tokens import CF, KIND_CODE, KIND_DEDUP, SEM, cf_first
from training.baselines import RunContext
from training.data import PreprocessConfig, SyntheticConfig, load_dataset
from training.data.preprocess import preprocess
from training.data.schema import RawDataset
from training.evaluate import subsample
from training.stages.generator import (
    GeneratorTrainConfig,
    build_item_inputs,
    flexcode_runner,
    load_generator,
    report_on_test_split,
    save_generator,
    train_generator,
)
from training.stages.generator.evaluate import evaluate_exact, evaluate_served
from training.stages.generator.inputs import impute_cold_cf_codes, layout_for
from training.stages.generator.runner import default_generator_config
from training.stages.generator.train import id_drop_rates
from training.stages.tokenizer import (
    TokenizerSpec,
    TokenizerTrainConfig,
    build_config,
    train_tokenizer,
)

CPU = torch.device("cpu")


def tiny_tokenizer(n_items, warm, seed=0, epochs=5, sem=None, levels=3, k=16):
    rng = np.random.default_rng(seed)
    sem = rng.normal(size=(n_items + 1, 16)).astype(np.float32) if sem is None else sem
    cf = rng.normal(size=(n_items + 1, 8)).astype(np.float32)
    spec = TokenizerSpec(latent_dim=8, hidden_dims=(32,), n_levels=levels, codebook_size=k)
    config = build_config(spec, sem.shape[1], 8, n_items)
    train_config = TokenizerTrainConfig(epochs=epochs, batch_size=128, restart_every=5)
    result = train_tokenizer(sem, cf, warm, config, train_config, CPU, progress=False)
    codes = {"sem_codes": result.sem_codes, "cf_codes": result.cf_codes, "warm": result.warm}
    return result.model, codes


def small_config(**overrides) -> GeneratorConfig:
    fields = {**default_generator_config().to_dict(), "max_len": 20, "hidden": 32, "n_layers": 1}
    return GeneratorConfig(**{**fields, **overrides})


def test_impute_cold_cf_codes_copies_a_warm_items_codes():
    n = 120
    warm = np.ones(n + 1, dtype=bool)
    warm[0] = False
    warm[100:] = False  # items 100..120 are cold
    tokenizer, codes = tiny_tokenizer(n, warm)
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


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset(
        "synthetic", PreprocessConfig(), SyntheticConfig(n_items=300, n_interactions=8000), None
    )


def test_item_inputs_tokens_follow_the_split_and_popularity(synthetic):
    warm = synthetic.train_counts() > 0
    tokenizer, codes = tiny_tokenizer(synthetic.n_items, warm, levels=4, k=4)  # collisions
    inputs = build_item_inputs(synthetic, tokenizer, codes, budget=3, dedup_slack=0)
    rng = np.random.default_rng(0)
    n_cf = rng.integers(0, 4, size=inputs.n_rows)
    tokens = inputs.item_tokens(n_cf)
    assert tokens.shape == (synthetic.n_items + 1, 4) and (tokens[0] == 0).all()
    assert len({tuple(r) for r in tokens[1:]}) == synthetic.n_items  # unique rows
    info = inputs.layout.describe(tokens[1:])
    assert (info["kind"][:, :3] == KIND_CODE).all() and (info["kind"][:, 3] == KIND_DEDUP).all()
    # The dominant codebook comes first, so the split reaches the first token.
    first = np.where(cf_first(n_cf[1:], 3), CF, SEM)
    np.testing.assert_array_equal(info["codebook"][:, 0], first)
    np.testing.assert_array_equal((info["codebook"][:, :3] == CF).sum(1), n_cf[1:])
    # Within a group of colliding items, dedup ids go by popularity.
    counts = inputs.counts[1:]
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for row, dedup, count in zip(
        map(tuple, tokens[1:, :3]), info["dedup"][:, 3], counts, strict=True
    ):
        groups.setdefault(row, []).append((int(dedup), int(count)))
    collided = [g for g in groups.values() if len(g) > 1]
    assert collided, "the test needs colliding items"
    for group in collided:
        by_dedup = [c for _, c in sorted(group)]
        assert by_dedup == sorted(by_dedup, reverse=True)
    # layout_for fits every split of these items.
    for split in range(4):
        inputs.item_tokens(np.full(inputs.n_rows, split))
    assert inputs.layout == layout_for(
        inputs.sem_codes[1:], inputs.cf_codes[1:], 3, inputs.layout.codebook_size, 0
    )
    # Cold items have no id of their own.
    np.testing.assert_array_equal(inputs.ids() == 0, ~inputs.warm)


@pytest.mark.slow
def test_train_generator_end_to_end(synthetic, tmp_path):
    warm = synthetic.train_counts() > 0
    tokenizer, codes = tiny_tokenizer(synthetic.n_items, warm)
    text = np.random.default_rng(1).normal(size=(synthetic.n_items + 1, 16)).astype(np.float32)
    text[0] = 0
    inputs = build_item_inputs(synthetic, tokenizer, codes, 3, text)
    train_config = GeneratorTrainConfig(max_epochs=3, eval_users=60, beam_width=20)
    test = synthetic.test()
    for fixed in (None, 0.0):
        router_config = RouterConfig(budget=3, fixed_alpha=fixed)
        result = train_generator(
            synthetic, inputs, router_config, small_config(), train_config, CPU, False
        )
        assert result.layout.item_tokens.shape == (synthetic.n_items + 1, 4)
        assert [c["epoch"] for c in result.curve] == [1, 2, 3]
        assert result.decoding.dense_weight in train_config.dense_weights
        assert set(result.valid_by_weight) == {str(w) for w in train_config.dense_weights}
        if fixed is None:
            slope = result.router.slope.item()
            init = Router(RouterConfig(budget=3)).init_slope(inputs.counts).slope.item()
            assert slope != pytest.approx(init, abs=1e-7)  # gradient reached the router
            alpha = result.layout.alpha
            order = np.argsort(inputs.counts[1:], kind="stable")
            assert (np.diff(alpha[1:][order]) >= -1e-6).all()  # monotone (up to float32 ulps)
        else:
            assert (result.layout.n_cf[1:] == 0).all() and np.allclose(result.layout.alpha, 0.0)

        results, diagnostics = report_on_test_split(result, synthetic, CPU, exact=True)
        assert set(results) == {"", "dense", "generative", "exact", "generative-exact"}
        for part in results.values():
            assert part.counts["all"] == len(test.users)
            assert all(np.isfinite(v) for v in part.metrics["all"].values())
        assert diagnostics["served"]["short_lists"] == 0.0  # every request got k results

        # What stage D saves is what export reads: the reloaded model ranks identically.
        save_generator(result, synthetic, train_config, tmp_path / f"gen-{fixed}")
        loaded = load_generator(tmp_path / f"gen-{fixed}", CPU)
        np.testing.assert_array_equal(loaded.layout.item_tokens, result.layout.item_tokens)
        assert loaded.decoding == result.decoding
        again, _ = report_on_test_split(loaded, synthetic, CPU, exact=False)
        np.testing.assert_array_equal(again[""].ranks, results[""].ranks)
        # The pipeline's sampled test report: the same ranks for the users it samples.
        sample = subsample(test, 7, seed=0)
        sampled, _ = report_on_test_split(loaded, synthetic, CPU, exact=False, test_users=7)
        assert sampled[""].counts["all"] == 7
        position = {int(u): i for i, u in enumerate(test.users)}
        picked = [position[int(u)] for u in sample.users]
        np.testing.assert_array_equal(sampled[""].ranks, results[""].ranks[picked])

    # The top-k lists themselves: real items, k of them, never a history item.
    served = result.served(CPU)
    found = evaluate_served(served, test, synthetic.item_groups(), (0.0, 0.5, 1.0))
    for diag in found.diagnostics.values():
        assert diag["short_lists"] == 0.0
    exact = evaluate_exact(served, test, synthetic.item_groups(), (1.0,))[1.0]
    # w = 1 is the dense head alone, which the candidates rank exactly.
    np.testing.assert_array_equal(
        np.minimum(exact.ranks, 10), np.minimum(found.results[1.0].ranks, 10)
    )


def test_flexcode_runner_rejects_unknown_variant_and_missing_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        flexcode_runner("nope")
    context = RunContext(
        device=CPU,
        pipeline_dir=tmp_path,
        progress=False,
        generator=GeneratorTrainConfig(use_text=False),
    )
    with pytest.raises(FileNotFoundError, match="flexcode train tokenizer"):
        flexcode_runner("flexcode")(None, 0, context)


def chain_world(n_topics=4, per_topic=10, n_users=400, seed=0):
    """Users walk a fixed cycle inside one topic: after item t_k comes t_(k+1). Item text
    is the topic's centroid plus the item's own offset, so an item's text identifies it."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(n_topics, 16)) * 3
    text = np.repeat(centroids, per_topic, axis=0) + rng.normal(size=(n_topics * per_topic, 16))
    rows = []
    for user in range(n_users):
        topic = rng.integers(n_topics)
        start = rng.integers(per_topic)
        length = rng.integers(8, 14)
        for step in range(length):
            item = topic * per_topic + (start + step) % per_topic
            rows.append((user, item, 1_000 * user + step))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(n_topics * per_topic)})
    raw = RawDataset("chains", inter, items, fingerprint=f"chains-{seed}")
    return preprocess(raw, PreprocessConfig()), text.astype(np.float32)


@pytest.mark.slow
def test_a_new_item_is_recommended_where_it_is_the_right_answer():
    """The cold-start path end to end on a toy world: an item added after training, with
    the text (hence codes) of the item that comes next, is ranked near the top for users
    whose history makes that item the answer, though the model never saw its id."""
    torch.manual_seed(0)
    dataset, raw_text = chain_world()
    # Dataset rows follow the sorted item ids; row i holds raw item i - 1.
    ids = dataset.item_ids[1:].astype(int)
    text = np.zeros((dataset.n_items + 1, 16), dtype=np.float32)
    text[1:] = raw_text[ids]
    warm = dataset.train_counts() > 0
    tokenizer, codes = tiny_tokenizer(dataset.n_items, warm, sem=text, epochs=30, k=8)
    inputs = build_item_inputs(dataset, tokenizer, codes, 3, text, dedup_slack=4)
    config = GeneratorTrainConfig(max_epochs=25, patience=25, id_dropout=0.3, beam_width=20)
    result = train_generator(
        dataset, inputs, RouterConfig(budget=3), small_config(), config, CPU, False
    )
    served = result.served(CPU)
    table = ItemTable(
        served.catalogue.item_vectors,
        result.layout.item_tokens,
        build_prefix_index(
            result.layout.item_tokens[1:], np.arange(1, inputs.n_rows), inputs.layout.vocab_size
        ),
    )
    warm_ids = np.flatnonzero(inputs.warm)
    cold_start = ColdStart(
        tokenizer=tokenizer,
        router=result.router,
        generator=result.generator,
        layout=inputs.layout,
        budget=3,
        imputation_index=build_imputation_index(
            aligned_cf_vectors(tokenizer, inputs.cf_codes[warm_ids])
        ),
        imputation_ids=warm_ids,
        cf_codes_table=inputs.cf_codes,
    )
    # A twin of item "target": the same text. It is new: count 0, the cold split.
    predecessor, target = 3, 4  # rows; raw items 2 -> 3 in topic 0
    codes_new = cold_start.tokenize(text[target][None])
    assert codes_new.alpha[0] == pytest.approx(RouterConfig().cold_alpha)
    prefix = codes_new.prefixes[0]
    taken = {int(t) for t in result.layout.item_tokens[1:, -1]}
    dedup = next(
        d for d in range(inputs.layout.dedup_size) if d + inputs.layout.dedup_offset not in taken
    )
    row = table.add(codes_new.vectors, np.array([[*prefix, inputs.layout.dedup_offset + dedup]]))[0]
    history = torch.tensor([[predecessor - 2, predecessor - 1, predecessor]])
    exclude = history.clone()
    rows, _ = recommend_top_k(
        result.generator, history, table.catalogue(), 5, served.decoding, exclude
    )
    top = rows[0].tolist()
    assert target in top  # the trained model knows the answer ...
    assert row in top  # ... and finds its new twin beside it
    # An unrelated user (another topic) does not get the new item.
    other = torch.tensor([[23, 24, 25]])
    rows, _ = recommend_top_k(result.generator, other, table.catalogue(), 5, served.decoding, other)
    assert row not in rows[0].tolist()


@pytest.mark.slow
def test_dense_only_ablation_trains_and_reports_one_head(synthetic):
    warm = synthetic.train_counts() > 0
    tokenizer, codes = tiny_tokenizer(synthetic.n_items, warm)
    inputs = build_item_inputs(synthetic, tokenizer, codes, 3)
    config = GeneratorTrainConfig(
        max_epochs=1, eval_users=40, generative_weight=0.0, dense_weights=(1.0,)
    )
    result = train_generator(
        synthetic, inputs, RouterConfig(budget=3), small_config(), config, CPU, False
    )
    assert not result.generative and result.decoding.dense_weight == 1.0
    results, diagnostics = report_on_test_split(result, synthetic, CPU)
    assert set(results) == {""} and diagnostics["served"]["short_lists"] == 0.0


def test_tail_id_dropout_rates_fall_with_popularity():
    counts = np.array([0, 5, 1, 1, 100, 3])
    rates = id_drop_rates(counts, GeneratorTrainConfig(id_dropout=0.1, id_dropout_tail=0.4))
    assert rates[4] == pytest.approx(0.1) and rates[0] == pytest.approx(0.4)  # extremes
    assert rates[2] == rates[3]  # tied counts share their rank
    assert (np.diff(rates[np.argsort(counts, kind="stable")]) <= 1e-7).all()  # monotone
    flat = id_drop_rates(counts, GeneratorTrainConfig(id_dropout=0.1))
    assert (flat == np.float32(0.1)).all()


@pytest.mark.slow
def test_dropout_grid_trains_every_rate_and_serves_the_best_on_validation(synthetic):
    warm = synthetic.train_counts() > 0
    tokenizer, codes = tiny_tokenizer(synthetic.n_items, warm)
    inputs = build_item_inputs(synthetic, tokenizer, codes, 3)
    config = GeneratorTrainConfig(max_epochs=2, eval_users=60, beam_width=20)
    args = (synthetic, inputs, RouterConfig(budget=3))
    grid = (0.0, 0.5)
    chosen = train_generator(*args, small_config(), replace(config, dropout_grid=grid), CPU, False)
    # Each rate trained exactly as a run at that rate alone (same seed, same data order).
    alone = {
        rate: train_generator(*args, small_config(dropout=rate), config, CPU, False)
        for rate in grid
    }
    scores = {str(rate): result.valid_ndcg for rate, result in alone.items()}
    assert chosen.valid_by_dropout == scores
    best = max(grid, key=lambda rate: (scores[str(rate)], -grid.index(rate)))
    assert chosen.generator.config.dropout == best
    assert [r.generator.config.dropout for r in chosen.unchosen] == [r for r in grid if r != best]
    np.testing.assert_array_equal(chosen.layout.item_tokens, alone[best].layout.item_tokens)
    assert chosen.decoding == alone[best].decoding

    results, diagnostics = report_on_test_split(chosen, synthetic, CPU, exact=False)
    assert {"dropout-0", "dropout-0.5"} <= set(results)
    assert results[f"dropout-{best:g}"] is results[""]
    other = next(r for r in grid if r != best)
    plain, _ = report_on_test_split(alone[other], synthetic, CPU, exact=False)
    np.testing.assert_array_equal(results[f"dropout-{other:g}"].ranks, plain[""].ranks)
    assert diagnostics["dropout"] == best and diagnostics["valid_by_dropout"] == scores


@pytest.mark.parametrize("grid", [(0.1, 0.1), (1.0,), (-0.1, 0.2)])
def test_dropout_grid_rejects_repeats_and_rates_outside_0_1(grid):
    with pytest.raises(ValueError, match="dropout_grid"):
        GeneratorTrainConfig(dropout_grid=grid)
