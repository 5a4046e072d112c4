"""The synthetic world's true next-item law: the ceiling any recommender can reach there.

`generate_synthetic` draws every next item from a law it knows (training.data.synthetic's
docstring): after an item of topic c, the next topic is c with probability s (topic
stickiness), otherwise a topic drawn by weight (probability e, explore) or one of the
user's 1-3 preferred topics; within the topic the item is drawn by popularity among the
topic's items introduced by then, the previous item excluded. So, for user u after item p
at time t:

    P(c) = s [c = topic(p)] + (1 - s) (e W_c / W + (1 - e) m_uc / n_u)
    P(i) = P(topic(i)) w_i / (mass of topic(i)'s items introduced by t, p's weight removed)

where m_uc counts c among the user's preferred topics. Ranking by P(i) maximises the
expected DCG of one held-out item, so this law's NDCG@10 on the test split bounds what any
model reading only the history can reach (up to the noise of the test users): it knows
the user's latent topics and the test time, which a model must infer. The benchmark's
`oracle` row scores it through the same evaluation as every model.

The law replays the generator's random draws (the world, the sequence lengths, the users'
topics, in the generator's order) from the same `SyntheticConfig`, so it matches the
generated data exactly without storing anything next to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.synthetic import (
    SyntheticConfig,
    build_world,
    sequence_lengths,
    user_topics,
)


@dataclass(frozen=True)
class SyntheticLaw:
    """What the next item of a synthetic user depends on. Ids are the generator's
    (the external ids of the generated data)."""

    config: SyntheticConfig
    topic: np.ndarray  # (n_items,) int64, topic of each item
    weight: np.ndarray  # (n_items,) float64, popularity
    introduced: np.ndarray  # (n_items,) int64, seconds from the start of the log
    jump_topic: np.ndarray  # (n_topics,) float64, P(topic) on an explore jump (sums to 1)
    user_topic_share: np.ndarray  # (n_users, n_topics) float32, m_uc / n_u

    @property
    def n_topics(self) -> int:
        return len(self.jump_topic)

    def next_item_probabilities(
        self, topic_share: np.ndarray, previous: np.ndarray, when: np.ndarray
    ) -> np.ndarray:
        """(B, n_items) float64 P(next item) after `previous` at `when`.

        topic_share: (B, n_topics) the users' m_uc / n_u (`user_topic_share[users]`, the
        truth, or `topic_share_posterior`, inferred); previous: (B,) generator item ids;
        when: (B,) seconds from the start of the log. A topic whose only item by then is
        `previous` gives it its whole share (as the generator does); items not yet
        introduced get 0.
        """
        stay = self.config.topic_stickiness
        explore = self.config.explore_prob
        topic_prob = (1.0 - stay) * (
            explore * self.jump_topic[None, :]
            + (1.0 - explore) * np.asarray(topic_share, dtype=np.float64)
        )
        rows = np.arange(len(previous))
        topic_prob[rows, self.topic[previous]] += stay

        available = self.introduced[None, :] <= np.asarray(when)[:, None]
        weight = np.where(available, self.weight[None, :], 0.0)
        kept = weight[rows, previous].copy()
        weight[rows, previous] = 0.0
        mass = _per_topic_sum(weight, self.topic, self.n_topics)  # (B, n_topics)
        alone = mass[rows, self.topic[previous]] == 0.0
        weight[rows[alone], previous[alone]] = kept[alone]
        mass[rows[alone], self.topic[previous[alone]]] = kept[alone]
        share = np.divide(
            weight,
            mass[:, self.topic],
            out=np.zeros_like(weight),
            where=mass[:, self.topic] > 0,
        )
        return topic_prob[:, self.topic] * share

    def topic_share_posterior(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, n_topics) E[m_uc / n_u | the topics of the user's items so far], by Bayes'
        rule under the generator's prior (1-3 topics, each drawn by weight): what the
        best model reading only the history can know of the user's topics.

        histories: B arrays of generator item ids, oldest first (the whole sequence from
        the user's first item: the first topic is always a preferred one). The cost grows
        as the cube of the topics a history visits (every 1-3-tuple of them is weighed):
        milliseconds for the 10k catalogue's users, who visit a handful.
        """
        out = np.zeros((len(histories), self.n_topics))
        for row, items in enumerate(histories):
            out[row] = self._posterior_share(self.topic[np.asarray(items, dtype=np.int64)])
        return out

    def _posterior_share(self, topics: np.ndarray) -> np.ndarray:
        # Every topic the history never visited has the same likelihood, so the unvisited
        # ones are one symbol ("other", last) whose prior is their summed weight; the
        # preferred-topic tuples are enumerated over the visited topics and that symbol.
        stay = self.config.topic_stickiness
        explore = self.config.explore_prob
        visited, symbol = np.unique(topics, return_inverse=True)
        n_symbols = len(visited) + 1
        prior_symbol = np.append(self.jump_topic[visited], 0.0)
        prior_symbol[-1] = max(1.0 - prior_symbol[:-1].sum(), 0.0)
        # Transitions counted by (destination symbol, stayed): the likelihood's factors.
        stayed = symbol[1:] == symbol[:-1]
        counts = np.zeros((n_symbols, 2))
        np.add.at(counts, (symbol[1:], stayed.astype(np.int64)), 1.0)

        log_post, shares = [], []
        for n in (1, 2, 3):
            tuples = np.stack(
                np.meshgrid(*[np.arange(n_symbols)] * n, indexing="ij"), axis=-1
            ).reshape(-1, n)
            share = np.zeros((len(tuples), n_symbols))
            for slot in range(n):
                share[np.arange(len(tuples)), tuples[:, slot]] += 1.0 / n
            with np.errstate(divide="ignore"):
                log_prior = np.log(prior_symbol)[tuples].sum(axis=1) - np.log(3.0)
                log_like = np.log(share[:, symbol[0]])  # the first topic is a preferred one
                jump = (1.0 - stay) * (explore * prior_symbol[None, :] + (1.0 - explore) * share)
                log_like += (counts[None, :, 0] * np.log(jump)).sum(axis=1, where=counts[:, 0] > 0)
                log_like += (counts[None, :, 1] * np.log(stay + jump)).sum(
                    axis=1, where=counts[:, 1] > 0
                )
            log_post.append(log_prior + log_like)
            shares.append(share)
        log_post_all = np.concatenate(log_post)
        weights = np.exp(log_post_all - log_post_all.max())
        mean_share = (weights / weights.sum()) @ np.concatenate(shares)  # (n_symbols,)

        out = np.zeros(self.n_topics)
        out[visited] = mean_share[:-1]
        unvisited = np.ones(self.n_topics, dtype=bool)
        unvisited[visited] = False
        if prior_symbol[-1] > 0:
            out[unvisited] = mean_share[-1] * self.jump_topic[unvisited] / prior_symbol[-1]
        return out


def _per_topic_sum(values: np.ndarray, topic: np.ndarray, n_topics: int) -> np.ndarray:
    """(B, n_topics): each row's values summed per topic."""
    out = np.zeros((values.shape[0], n_topics))
    for row in range(values.shape[0]):
        out[row] = np.bincount(topic, weights=values[row], minlength=n_topics)
    return out


def synthetic_law(config: SyntheticConfig) -> SyntheticLaw:
    """Replay `generate_synthetic(config)`'s draws up to the users' topics."""
    rng = np.random.default_rng(config.seed)
    n_topics = config.resolved_n_topics()
    n_users = config.resolved_n_users()
    world = build_world(config, n_topics, int(config.time_span_seconds), rng)
    lengths = sequence_lengths(config, n_users, rng)
    n_pref, prefs = user_topics(world, n_users, n_topics, rng)
    # The generator draws users' topics in order of decreasing length; back to user ids.
    order = np.argsort(-lengths, kind="stable")
    share = np.zeros((n_users, n_topics), dtype=np.float32)
    for slot in range(prefs.shape[1]):
        used = slot < n_pref
        np.add.at(share, (order[used], prefs[used, slot]), 1.0 / n_pref[used])
    topic_weight = np.diff(world.topic_cum, prepend=0.0)  # the world's own topic weights
    return SyntheticLaw(
        config=config,
        topic=world.topic.astype(np.int64),
        weight=world.weight,
        introduced=world.introduced,
        jump_topic=topic_weight / topic_weight.sum(),
        user_topic_share=share,
    )
