"""Synthetic interaction data with real structure, for scale tests (10k to 1M items).

The generator produces a `RawDataset` that looks like a product catalogue plus purchase
logs, fast enough to make tens of millions of interactions in minutes and deterministic
(the same `SyntheticConfig` gives byte-identical frames).

Model of the world
------------------
* **Latent topics** drive both item text and user behaviour. Each topic gets, from the
  seed, a vocabulary of pseudo-words built from syllables, a category name, a few
  sub-category names and a few brand names (all unique across topics). An item belongs to
  one topic (topic sizes vary, every topic has at least one item). Its text is drawn from
  its topic:

  - ``title``: 2-4 distinct capitalised words, each from the topic vocabulary with probability
    ``1 - GENERIC_WORD_PROB``, otherwise a generic word ("Deluxe", "Pack", ...);
  - ``categories``: ``"<topic category>, <sub-category>"``;
  - ``brand``: one of the topic's brands;
  - ``year``: the year the item was introduced (catalogue items present at the start get
    a year up to ten years earlier);
  - ``description``: a short sentence from topic words, sub-category and brand.

  ``brand``, ``year`` and ``description`` are each "" (unknown) with probability
  ``missing_text_fraction``. Since users move within topics, text similarity reflects
  co-consumption: a text encoder has real signal to find.
* **Item popularity** is Zipf (``zipf_exponent``) over a random permutation of the items,
  mixed with a uniform share ``popularity_floor`` so the tail stays consumable. Topic
  weight is the sum of its items' weights. A long tail and a thin catalogue trade off: with
  the defaults, 75% of items get >= 5 interactions at 20 interactions per item (10k/200k)
  but only ~29% at 10 per item (1M/10M); raise ``n_interactions`` or ``popularity_floor``
  when a scale test needs most of the catalogue to survive 5-core filtering.
* **Item introduction**: a fraction ``new_item_fraction`` of items is introduced at a time
  uniform over the time span, the rest exist from the start (each topic's most popular item
  always exists from the start, so every topic can be consumed at any time). An item is
  never consumed before its introduction; the item table exposes the introduction time as
  the extra int64 column ``introduced_at`` (Unix seconds, same clock as the timestamps).
* **Users** have a preference over 1-3 topics (drawn by topic weight, with replacement),
  a sequence length ``min_seq_len`` + a lognormal excess (capped at ``max_seq_len``,
  rescaled so the lengths sum exactly to ``n_interactions``), a mean gap between
  interactions (lognormal around ``mean_gap_seconds``) and a start time chosen so the
  expected sequence fits in the time span.
* **Transitions** are a Markov chain over topics: the first topic is one of the user's
  preferred topics; afterwards the user stays in the current topic with probability
  ``topic_stickiness``, else jumps to a random topic (by topic weight) with probability
  ``explore_prob`` or to one of their preferred topics otherwise. Within the topic the item
  is drawn by popularity among the topic's items introduced by then, excluding the previous
  item (consecutive repeats are rare in real logs and make next-item prediction trivial;
  one happens only when the topic has a single item available). Timestamps increase along a
  sequence by exponential gaps, floored to whole seconds (equal timestamps happen) and
  clipped to the end of the time span.

Implementation: nothing loops over interactions or items in Python. The generator steps
over sequence positions (at most ``max_seq_len`` steps), updating all users still active
at once (users are processed in order of decreasing length, so the active ones are a
prefix). "Item within topic, by popularity, introduced before t" is one `searchsorted`
over global arrays: items sorted by (topic, introduction time) with a key
``topic * span + introduced``, and a cumulative popularity array over that order.

Output: ``interactions`` (user_id, item_id, timestamp; all int64) ordered by user, then
sequence position, so row order is the source order; ``items`` (item_id int64, title,
categories, brand, year, description as str, introduced_at int64) ordered by item id.
User ids are 0..n_users-1 and item ids 0..n_items-1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.config import Config, check_positive_ints, check_range
from training.data.schema import RawDataset

logger = logging.getLogger(__name__)

# Bump whenever the generated data changes for a given config: it is part of the
# fingerprint, so the preprocessing cache is invalidated.
GENERATOR_VERSION = "1"

# Words of pseudo-vocabulary per topic: enough that titles vary, few enough that titles of
# one topic share words often. Prime, so an item's words (a + j * stride) are distinct.
WORDS_PER_TOPIC = 23
# Sub-categories per topic (second part of `categories`).
SUBCATEGORIES_PER_TOPIC = 4
# Brands per topic.
BRANDS_PER_TOPIC = 6
# Probability that a title word is a generic word rather than a topic word.
GENERIC_WORD_PROB = 0.12
# Words shared by every topic: noise that a text encoder must learn to ignore.
GENERIC_WORDS = (
    "classic", "deluxe", "edition", "pack", "set", "mini", "pro", "plus", "series",
    "original", "collection", "bundle", "premium", "essential", "new", "special",
    "ultimate", "basic", "max", "select",
)  # fmt: skip
_ONSETS = (
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "br", "kr", "st", "tr", "pl", "sh",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s")
_SYLLABLES = tuple(o + v + c for o in _ONSETS for v in _VOWELS for c in dict.fromkeys(_CODAS))


@dataclass(frozen=True)
class SyntheticConfig(Config):
    """Knobs of the synthetic world; see the module docstring for the model."""

    # Catalogue size; 10k is a small-but-realistic catalogue, scale tests go to 1M.
    n_items: int = 10_000
    # Total interactions (exact); 20 per item on average at the default catalogue size.
    n_interactions: int = 200_000
    # Users; None derives round(n_interactions / mean_seq_len).
    n_users: int | None = None
    # Latent topics; None derives max(8, round(sqrt(n_items) / 2)): 50 at 10k, 500 at 1M.
    n_topics: int | None = None
    # Zipf exponent of item popularity; ~1.1 matches e-commerce long tails.
    zipf_exponent: float = 1.1
    # Share of popularity spread uniformly; keeps the far tail consumable (5-core).
    popularity_floor: float = 0.2
    # Probability the next interaction stays in the current topic (session coherence).
    topic_stickiness: float = 0.7
    # When leaving the topic, probability of a random topic rather than a preferred one.
    explore_prob: float = 0.1
    # Fraction of items introduced during the time span rather than at its start.
    new_item_fraction: float = 0.3
    # Mean sequence length per user; between Amazon 5-core (~10) and MovieLens (~100).
    mean_seq_len: float = 20.0
    # Minimum sequence length; >= 5 so 5-core filtering keeps (almost) every user.
    min_seq_len: int = 5
    # Cap on the heavy tail of lengths; also bounds the generator's step loop.
    max_seq_len: int = 500
    # Lognormal sigma of the excess length over min_seq_len: a moderately heavy tail.
    seq_len_sigma: float = 1.0
    # Time span of the log in seconds: three years, like typical public datasets.
    time_span_seconds: int = 3 * 365 * 86_400
    # Mean gap between a user's consecutive interactions (per-user lognormal around it).
    mean_gap_seconds: float = 3 * 86_400.0
    # Unix time of the start of the log (2020-01-01 UTC): realistic dates and years.
    start_timestamp: int = 1_577_836_800
    # Probability each of brand, year, description is "" (unknown), as in real catalogues.
    missing_text_fraction: float = 0.05
    # Seed of the numpy Generator: the same config gives byte-identical output.
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(self, "n_items", "n_interactions")
        check_range(self, "n_users", 1, optional=True, integer=True, hint="(None = derived)")
        check_range(self, "n_topics", 1, optional=True, integer=True, hint="(None = derived)")
        if not 1 <= self.min_seq_len <= self.max_seq_len:
            raise ValueError("need 1 <= min_seq_len <= max_seq_len")
        if not self.min_seq_len <= self.mean_seq_len <= self.max_seq_len:
            raise ValueError("need min_seq_len <= mean_seq_len <= max_seq_len")
        users = self.resolved_n_users()
        if not users * self.min_seq_len <= self.n_interactions <= users * self.max_seq_len:
            raise ValueError(
                f"{self.n_interactions} interactions cannot be split over {users} users "
                f"with lengths in [{self.min_seq_len}, {self.max_seq_len}]"
            )
        if not 1 <= self.resolved_n_topics() <= self.n_items:
            raise ValueError("need 1 <= n_topics <= n_items")
        for name in (
            "popularity_floor",
            "topic_stickiness",
            "explore_prob",
            "new_item_fraction",
            "missing_text_fraction",
        ):
            check_range(self, name, 0.0, 1.0)
        for name in ("zipf_exponent", "seq_len_sigma", "mean_gap_seconds"):
            check_range(self, name, 0)
        check_positive_ints(self, "time_span_seconds")

    def resolved_n_users(self) -> int:
        """Number of users: `n_users`, or derived from n_interactions / mean_seq_len."""
        if self.n_users is not None:
            return self.n_users
        return max(1, round(self.n_interactions / self.mean_seq_len))

    def resolved_n_topics(self) -> int:
        """Number of topics: `n_topics`, or max(8, round(sqrt(n_items) / 2)) capped at n_items."""
        if self.n_topics is not None:
            return self.n_topics
        return min(self.n_items, max(8, round(math.sqrt(self.n_items) / 2)))


def config_fingerprint(config: SyntheticConfig) -> str:
    """sha256 of the config's fields and GENERATOR_VERSION."""
    payload = json.dumps(
        {"generator_version": GENERATOR_VERSION, "config": dataclasses.asdict(config)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def generate_synthetic(config: SyntheticConfig | None = None) -> RawDataset:
    """Generate the synthetic dataset described in the module docstring."""
    config = config or SyntheticConfig()
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    n_topics = config.resolved_n_topics()
    n_users = config.resolved_n_users()
    span = int(config.time_span_seconds)

    world = build_world(config, n_topics, span, rng)
    logger.info(
        "synthetic: %d items in %d topics built in %.1fs",
        config.n_items,
        n_topics,
        time.perf_counter() - started,
    )
    user_ids, item_ids, offsets = _simulate(config, world, n_users, n_topics, span, rng)
    logger.info(
        "synthetic: %d interactions of %d users simulated in %.1fs",
        len(item_ids),
        n_users,
        time.perf_counter() - started,
    )
    timestamps = offsets.astype(np.int64)
    del offsets
    timestamps += config.start_timestamp
    interactions = pd.DataFrame(
        {
            "user_id": user_ids.astype(np.int64, copy=False),
            "item_id": item_ids.astype(np.int64),
            "timestamp": timestamps,
        },
        copy=False,
    )
    del user_ids, item_ids, timestamps
    items = _item_table(config, world, n_topics, rng)
    logger.info("synthetic: done in %.1fs", time.perf_counter() - started)
    return RawDataset(
        name=f"synthetic-{config.n_items}",
        interactions=interactions,
        items=items,
        fingerprint=config_fingerprint(config),
    )


@dataclass
class World:
    """The latent world items and users are drawn from (training.data.synthetic_law
    replays it to score the true next-item law)."""

    topic: np.ndarray  # (n_items,) int32, topic of each item
    weight: np.ndarray  # (n_items,) float64, popularity of each item (sums to 1)
    introduced: np.ndarray  # (n_items,) int64, seconds from the start of the log
    topic_cum: np.ndarray  # (n_topics,) float64, cumulative topic weights
    sorted_items: np.ndarray  # (n_items,) int32, items by (topic, introduced)
    keys: np.ndarray  # (n_items,) int64, topic * span + introduced, in that order
    cum: np.ndarray  # (n_items + 1,) float64, cumulative weights in that order, from 0
    topic_start: np.ndarray  # (n_topics,) int64, first position of each topic
    position: np.ndarray  # (n_items,) int64, position of each item in that order


def build_world(config: SyntheticConfig, n_topics: int, span: int, rng: np.random.Generator):
    n = config.n_items
    # Popularity: Zipf over a random permutation, mixed with a uniform floor.
    ranks = rng.permutation(n).astype(np.float64) + 1.0
    zipf = ranks ** (-config.zipf_exponent)
    weight = (1.0 - config.popularity_floor) * zipf / zipf.sum() + config.popularity_floor / n
    del ranks, zipf

    # Topics: one item each, the rest spread by lognormal topic sizes, then shuffled.
    size_weight = rng.lognormal(0.0, 0.5, n_topics)
    extra = np.searchsorted(
        np.cumsum(size_weight), rng.random(n - n_topics) * size_weight.sum(), side="right"
    )
    topic = np.concatenate([np.arange(n_topics), np.minimum(extra, n_topics - 1)])
    topic = rng.permutation(topic).astype(np.int32)

    # Introduction times; each topic's most popular item exists from the start.
    is_new = rng.random(n) < config.new_item_fraction
    introduced = np.where(is_new, rng.integers(0, span, n), 0).astype(np.int64)
    by_weight = np.lexsort((-weight, topic))
    first_of_topic = np.ones(n, dtype=bool)
    first_of_topic[1:] = topic[by_weight][1:] != topic[by_weight][:-1]
    introduced[by_weight[first_of_topic]] = 0

    order = np.lexsort((introduced, topic)).astype(np.int32)
    sorted_topic = topic[order].astype(np.int64)
    keys = sorted_topic * span + introduced[order]
    cum = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(weight[order], out=cum[1:])
    topic_start = np.searchsorted(sorted_topic, np.arange(n_topics), side="left")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    topic_weight = np.bincount(topic, weights=weight, minlength=n_topics)
    return World(
        topic=topic,
        weight=weight,
        introduced=introduced,
        topic_cum=np.cumsum(topic_weight),
        sorted_items=order,
        keys=keys,
        cum=cum,
        topic_start=topic_start.astype(np.int64),
        position=position,
    )


def sequence_lengths(config: SyntheticConfig, n_users: int, rng: np.random.Generator):
    """Lengths in [min_seq_len, max_seq_len] summing exactly to n_interactions."""
    lo, hi = config.min_seq_len, config.max_seq_len
    target = config.n_interactions - n_users * lo
    cap = hi - lo
    excess = rng.lognormal(0.0, config.seq_len_sigma, n_users)
    lengths = np.zeros(n_users, dtype=np.int64)
    if target > 0 and cap > 0:
        # Scale, cap, and rescale the uncapped ones a few times; then fix the remainder.
        scale = target / excess.sum()
        for _ in range(8):
            lengths = np.minimum(np.floor(excess * scale), cap).astype(np.int64)
            free = lengths < cap
            missing = target - int(lengths.sum())
            free_mass = excess[free].sum()
            if missing <= 0 or free_mass <= 0:
                break
            scale *= 1.0 + missing / (free_mass * scale)
        while (missing := target - int(lengths.sum())) != 0:
            if missing > 0:
                candidates = np.flatnonzero(lengths < cap)
                step = 1
            else:
                candidates = np.flatnonzero(lengths > 0)
                step = -1
            chosen = rng.choice(candidates, size=min(abs(missing), len(candidates)), replace=False)
            lengths[chosen] += step
    return lengths + lo


def _sample_items(
    world: World,
    topic: np.ndarray,
    when: np.ndarray,
    previous: np.ndarray,
    span: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One item per (topic, time): by popularity among the topic's items introduced by then,
    excluding `previous` (-1: none) unless it is the only such item."""
    query = topic.astype(np.int64) * span + when
    end = np.searchsorted(world.keys, query, side="right")
    start = world.topic_start[topic]
    low = world.cum[start]
    mass = world.cum[end] - low
    # Cut the previous item's slice out of [low, low + mass) when it is among the candidates.
    prev_pos = world.position[np.maximum(previous, 0)]
    excluded = (previous >= 0) & (prev_pos >= start) & (prev_pos < end)
    cut_low = world.cum[prev_pos] - low
    cut = np.where(excluded, world.cum[prev_pos + 1] - world.cum[prev_pos], 0.0)
    cut = np.where(cut < mass, cut, 0.0)
    offset = rng.random(len(topic)) * (mass - cut)
    offset += np.where(offset >= cut_low, cut, 0.0)
    pos = np.searchsorted(world.cum, low + offset, side="right") - 1
    np.clip(pos, start, end - 1, out=pos)
    return world.sorted_items[pos]


def user_topics(
    world: World, n_users: int, n_topics: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's preferred topics, users in order of decreasing sequence length:
    (n_pref (U,) in 1..3, prefs (U, 3) int32, the first n_pref of each row in use)."""
    n_pref = rng.integers(1, 4, n_users)
    draws = rng.random((n_users, 3)) * world.topic_cum[-1]
    prefs = np.searchsorted(world.topic_cum, draws, side="right")
    return n_pref, np.minimum(prefs, n_topics - 1).astype(np.int32)


def _simulate(
    config: SyntheticConfig,
    world: World,
    n_users: int,
    n_topics: int,
    span: int,
    rng: np.random.Generator,
):
    """Step over sequence positions; returns (user_ids, item_ids, time offsets) user-major."""
    lengths = sequence_lengths(config, n_users, rng)
    total = int(lengths.sum())
    row_start = np.cumsum(lengths) - lengths

    # Users in order of decreasing length: the active ones at step k are a prefix.
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    n_active = np.searchsorted(-sorted_lengths, -np.arange(int(sorted_lengths[0])), side="left")
    rows = row_start[order]

    topic_total = world.topic_cum[-1]
    n_pref, prefs = user_topics(world, n_users, n_topics, rng)
    gap = config.mean_gap_seconds * rng.lognormal(-0.5, 1.0, n_users)  # mean of factor is 1
    gap = np.minimum(gap, 0.9 * span / sorted_lengths)  # the expected sequence fits the span
    start = rng.random(n_users) * np.maximum(span - sorted_lengths * gap, 1.0)

    time_dtype = np.int32 if span < 2**31 else np.int64
    out_item = np.empty(total, dtype=np.int32)
    out_time = np.empty(total, dtype=time_dtype)
    current_topic = np.empty(n_users, dtype=np.int32)
    previous = np.full(n_users, -1, dtype=np.int32)
    now = start
    stay_prob = config.topic_stickiness
    for k, m in enumerate(n_active.tolist()):
        if k == 0:
            slot = (rng.random(m) * n_pref).astype(np.int64)
            current_topic[:m] = prefs[np.arange(m), slot]
        else:
            now[:m] += rng.exponential(1.0, m) * gap[:m]
            move = np.flatnonzero(rng.random(m) >= stay_prob)
            if len(move):
                explore = rng.random(len(move)) < config.explore_prob
                slot = (rng.random(len(move)) * n_pref[move]).astype(np.int64)
                new_topic = prefs[move, slot]
                jumpers = np.flatnonzero(explore)
                if len(jumpers):
                    random_topic = np.searchsorted(
                        world.topic_cum, rng.random(len(jumpers)) * topic_total, side="right"
                    )
                    new_topic[jumpers] = np.minimum(random_topic, n_topics - 1)
                current_topic[move] = new_topic
        when = np.minimum(now[:m], span - 1).astype(np.int64)
        topic = current_topic[:m]
        item = _sample_items(world, topic, when, previous[:m], span, rng)
        previous[:m] = item
        out_item[rows[:m] + k] = item
        out_time[rows[:m] + k] = when
    user_ids = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    return user_ids, out_item, out_time


def _pseudo_words(count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct pseudo-words of 2-3 syllables, deterministic given the generator."""
    syllables = np.array(_SYLLABLES, dtype=object)
    words: dict[str, None] = {}
    while len(words) < count:
        batch = 2 * (count - len(words)) + 64
        parts = syllables[rng.integers(0, len(syllables), (batch, 3))]
        three = rng.random(batch) < 0.4
        made = parts[:, 0] + parts[:, 1] + np.where(three, parts[:, 2], "")
        for word in made.tolist():
            if len(words) >= count:
                break
            if word not in words and word not in GENERIC_WORDS:
                words[word] = None
    return list(words)


def _capitalize(words: np.ndarray) -> np.ndarray:
    """Capitalise an object array of (few) words, keeping its shape."""
    flat = [w.capitalize() for w in words.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(words.shape)


def _blank_some(values: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(len(values)) < fraction, "", values)


def _item_table(
    config: SyntheticConfig, world: World, n_topics: int, rng: np.random.Generator
) -> pd.DataFrame:
    n = config.n_items
    per_topic = 1 + SUBCATEGORIES_PER_TOPIC + BRANDS_PER_TOPIC + WORDS_PER_TOPIC
    words = np.array(_pseudo_words(n_topics * per_topic, rng), dtype=object).reshape(
        n_topics, per_topic
    )
    category = _capitalize(words[:, 0])
    subcategory = words[:, 1 : 1 + SUBCATEGORIES_PER_TOPIC]
    brand_names = _capitalize(
        words[:, 1 + SUBCATEGORIES_PER_TOPIC : 1 + SUBCATEGORIES_PER_TOPIC + BRANDS_PER_TOPIC]
    )
    vocab = words[:, -WORDS_PER_TOPIC:]
    vocab_title = _capitalize(vocab)
    generic = np.array(GENERIC_WORDS, dtype=object)
    generic_title = _capitalize(generic)
    topic = world.topic

    # Title: 2-4 words, mostly from the topic vocabulary.
    # Up to 4 title words and 3 more for the description, all distinct within the item:
    # positions a + j * stride modulo the (prime) vocabulary size.
    n_words = 4
    first = rng.integers(0, WORDS_PER_TOPIC, n)
    stride = rng.integers(1, WORDS_PER_TOPIC, n)
    local = (first[:, None] + stride[:, None] * np.arange(n_words + 3)) % WORDS_PER_TOPIC
    extra = vocab[topic[:, None], local[:, n_words:]]
    local = local[:, :n_words]
    is_generic = rng.random((n, n_words)) < GENERIC_WORD_PROB
    generic_pick = rng.integers(0, len(generic), (n, n_words))
    picked = np.where(is_generic, generic[generic_pick], vocab[topic[:, None], local])
    title_words = np.where(
        is_generic, generic_title[generic_pick], vocab_title[topic[:, None], local]
    )
    length = rng.integers(2, n_words + 1, n)
    title = title_words[:, 0] + " " + title_words[:, 1]
    for j in range(2, n_words):
        title = title + np.where(length > j, " " + title_words[:, j], "")

    sub = subcategory[topic, rng.integers(0, SUBCATEGORIES_PER_TOPIC, n)]
    categories = category[topic] + ", " + sub
    brand = brand_names[topic, rng.integers(0, BRANDS_PER_TOPIC, n)]

    description = (
        "A " + picked[:, 0] + " " + sub + " by " + brand + ", with "
        + extra[:, 0] + " " + extra[:, 1] + " and " + extra[:, 2] + "."
    )  # fmt: skip

    # Year of introduction; catalogue items present from the start are up to 10 years old.
    introduced_at = world.introduced + config.start_timestamp
    year = introduced_at.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    at_start = world.introduced == 0
    year = np.where(at_start, year - rng.integers(0, 11, n), year)
    low_year = int(year.min())
    year_names = np.array([str(y) for y in range(low_year, int(year.max()) + 1)], dtype=object)
    year_text = year_names[year - low_year]

    fraction = config.missing_text_fraction
    return pd.DataFrame(
        {
            "item_id": np.arange(n, dtype=np.int64),
            "title": title,
            "categories": categories,
            "brand": _blank_some(brand, fraction, rng),
            "year": _blank_some(year_text, fraction, rng),
            "description": _blank_some(description, fraction, rng),
            "introduced_at": introduced_at,
        }
    )
