"""The synthetic world's true next-item law: it replays the generator, it is a
distribution, the data follows it, and its Bayes posterior finds a user's topics."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import RunContext, run_oracle
from training.data.preprocess import PreprocessConfig, preprocess
from training.data.synthetic import SyntheticConfig, generate_synthetic
from training.data.synthetic_law import synthetic_law

CONFIG = SyntheticConfig(n_items=600, n_interactions=12_000, seed=4)


@pytest.fixture(scope="module")
def raw():
    return generate_synthetic(CONFIG)


@pytest.fixture(scope="module")
def law():
    return synthetic_law(CONFIG)


def transitions(raw, count: int):
    """(users, previous items, items, times) of the first `count` within-user steps."""
    inter = raw.interactions
    user = inter["user_id"].to_numpy()
    item = inter["item_id"].to_numpy()
    when = inter["timestamp"].to_numpy() - CONFIG.start_timestamp
    step = np.flatnonzero(np.r_[False, user[1:] == user[:-1]])[:count]
    return user[step], item[step - 1], item[step], when[step]


def test_every_users_first_item_is_from_a_preferred_topic(raw, law):
    first = raw.interactions.groupby("user_id").head(1)
    users, items = first["user_id"].to_numpy(), first["item_id"].to_numpy()
    assert (law.user_topic_share[users, law.topic[items]] > 0).all()
    np.testing.assert_allclose(law.user_topic_share.sum(axis=1), 1.0, rtol=1e-6)


def test_the_law_is_a_distribution_that_the_data_follows(raw, law):
    users, previous, items, when = transitions(raw, 400)
    probs = law.next_item_probabilities(law.user_topic_share[users], previous, when)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    rows = np.arange(len(users))
    assert (probs[rows, items] > 0).all()  # every drawn item was possible
    assert (probs[rows, previous] == 0).all() or law.n_topics == CONFIG.n_items
    # The true users' topics explain the data better than another user's.
    other = (users + 1) % law.user_topic_share.shape[0]
    wrong = law.next_item_probabilities(law.user_topic_share[other], previous, when)
    assert np.log(probs[rows, items]).mean() > np.log(wrong[rows, items] + 1e-12).mean() + 0.1


def test_the_posterior_finds_a_users_topics(raw, law):
    inter = raw.interactions
    lengths = inter.groupby("user_id").size()
    long_users = lengths[lengths >= 30].index.to_numpy()[:20]
    histories = [inter.loc[inter["user_id"] == u, "item_id"].to_numpy() for u in long_users]
    posterior = law.topic_share_posterior(histories)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0, rtol=1e-6)
    truth = law.user_topic_share[long_users]
    prior_error = np.abs(truth - law.jump_topic[None, :]).sum(axis=1).mean()
    assert np.abs(truth - posterior).sum(axis=1).mean() < 0.5 * prior_error


def test_oracle_rows_rank_above_popularity_and_need_synthetic_data(raw):
    dataset = preprocess(raw, PreprocessConfig())
    context = RunContext(device="cpu", synthetic=CONFIG, progress=False)
    rows, _ = run_oracle(dataset, 0, context)
    assert set(rows) == {"", "history"}
    known, inferred = (rows[k].metrics["all"]["ndcg@10"] for k in ("", "history"))
    assert known >= inferred > 0.05
    with pytest.raises(ValueError, match="only for --dataset synthetic"):
        run_oracle(dataset, 0, RunContext(device="cpu", progress=False))
