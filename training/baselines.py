"""Baselines FlexCode is measured against, and the registry the benchmark reads.

A runner is `runner(dataset, seed, context)` and returns an EvalResult on the test split,
or (results, diagnostics) where results maps a sub-row name to an EvalResult ("" is the
model itself; FlexCode adds "dense", "generative", "exact" and "generative-exact"; both
FlexCode and sasrec-content add "share-0.1", "share-0.2" when there are id-free items) and
diagnostics is a dict of numbers. The benchmark looks models up by name in MODEL_RUNNERS,
so one run compares the baselines and every FlexCode variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.decoding import shared_log_softmax
from models.sasrec import SASRecConfig
from training.data.preprocess import ProcessedDataset, Sequences, warm_mask
from training.data.synthetic import SyntheticConfig
from training.data.synthetic_law import SyntheticLaw, synthetic_law
from training.evaluate import NEW_ITEM_SHARES, EvalResult, ScoreFn, evaluate_scores, share_row
from training.stages.generator import VARIANTS, GeneratorTrainConfig, flexcode_runner
from training.stages.sasrec import (
    SASRecTrainConfig,
    evaluate_sasrec,
    sasrec_score_fn,
    save_sasrec,
    train_sasrec,
)


@dataclass(frozen=True)
class RunContext:
    """What every model runner gets besides the data and the seed."""

    device: torch.device
    sasrec: SASRecTrainConfig = field(default_factory=SASRecTrainConfig)
    sasrec_model: dict = field(default_factory=dict)  # SASRecConfig overrides, e.g. max_len
    run_dir: Path | None = None  # where runners save artifacts (None: keep nothing)
    pipeline_dir: Path | None = None  # a `train tokenizer` run: FlexCode variants read it
    generator: GeneratorTrainConfig = field(default_factory=GeneratorTrainConfig)
    progress: bool = True
    exact_rows: bool = True  # FlexCode's whole-catalogue rows ("/exact", "/generative-exact")
    synthetic: SyntheticConfig | None = None  # the world a synthetic dataset came from


RunOutput = EvalResult | tuple[dict[str, EvalResult], dict]
Runner = Callable[[ProcessedDataset, int, RunContext], RunOutput]


def popularity_score_fn(counts: np.ndarray) -> ScoreFn:
    """Every user gets the catalog ranked by training count."""
    scores = torch.as_tensor(counts, dtype=torch.float32)

    def score(users: np.ndarray, history: Sequences) -> torch.Tensor:
        return scores.expand(len(users), -1)

    return score


def run_popularity(dataset: ProcessedDataset, seed: int, context: RunContext) -> EvalResult:
    del seed, context  # deterministic and trained on nothing but counts
    return evaluate_scores(
        popularity_score_fn(dataset.train_counts()), dataset.test(), dataset.item_groups()
    )


def run_sasrec(dataset: ProcessedDataset, seed: int, context: RunContext) -> EvalResult:
    model_config = SASRecConfig(n_items=dataset.n_items, **context.sasrec_model)
    train_config = replace(context.sasrec, seed=seed)
    result = train_sasrec(dataset, model_config, train_config, context.device, context.progress)
    if context.run_dir is not None:
        save_sasrec(result, train_config, Path(context.run_dir) / f"sasrec-seed{seed}")
    return evaluate_sasrec(result.model, dataset, context.device)


# The id + content SASRec: the same architecture and schedule as `sasrec`, item vectors
# id + projected text, ids dropped at the rate FlexCode's generator drops them.
CONTENT_ID_DROPOUT = 0.1


def run_sasrec_content(dataset: ProcessedDataset, seed: int, context: RunContext) -> RunOutput:
    from training.pipeline import ensure_semantic_embeddings

    text = ensure_semantic_embeddings(dataset, context.device)
    model_config = SASRecConfig(
        n_items=dataset.n_items,
        text_dim=int(text.shape[1]),
        id_dropout=CONTENT_ID_DROPOUT,
        **context.sasrec_model,
    )
    train_config = replace(context.sasrec, seed=seed)
    result = train_sasrec(
        dataset, model_config, train_config, context.device, context.progress, text=text
    )
    plain = evaluate_sasrec(result.model, dataset, context.device)
    id_free = torch.as_tensor(~warm_mask(dataset.train_counts()))
    id_free[0] = False  # padding
    if not bool(id_free.any()):  # no item without an id: the share changes nothing
        return plain
    # The same new-item share FlexCode's served decoding offers, on SASRec's softmax: the
    # like-for-like comparison of the exposure knob.
    rows = {"": plain}
    base = sasrec_score_fn(result.model, context.device)
    dead = torch.zeros_like(id_free)
    dead[0] = True
    for share in NEW_ITEM_SHARES:

        def shared(users, history, share=share):
            scores = base(users, history).float()
            return shared_log_softmax(scores, dead.to(scores.device), id_free, share)

        rows[share_row(share)] = evaluate_scores(shared, dataset.test(), dataset.item_groups())
    return rows, {}


CONTENT_RECENT_ITEMS = 5  # how many of the user's latest items the content baseline reads


def content_knn_score_fn(text_embeddings: np.ndarray, recent: int) -> ScoreFn:
    """Scores = summed cosine similarity of every item's text embedding to the user's
    `recent` latest items: the only kind of model that can reach items nobody has
    interacted with besides FlexCode's cold-start path, so the honest peer on cold
    targets. text_embeddings: (N + 1, D), row 0 padding."""
    unit = torch.nn.functional.normalize(torch.as_tensor(text_embeddings).float(), dim=1)
    unit[0] = 0.0

    def score(users: np.ndarray, history: Sequences) -> torch.Tensor:
        del users
        last = torch.as_tensor(history.last(recent))  # (B, recent), 0-padded on the left
        return unit[last].sum(dim=1) @ unit.T  # (B, N + 1)

    return score


def run_content_knn(dataset: ProcessedDataset, seed: int, context: RunContext) -> EvalResult:
    del seed  # deterministic: a fixed encoder, no training
    from training.pipeline import ensure_semantic_embeddings

    embeddings = ensure_semantic_embeddings(dataset, context.device)
    score = content_knn_score_fn(embeddings, CONTENT_RECENT_ITEMS)
    return evaluate_scores(score, dataset.test(), dataset.item_groups())


# What the law knows of a user's topics: the generator's own ("known"), what Bayes' rule
# infers from the items before the target ("history"), or nothing, every user the
# population's topic mix ("none": the last item's topic and popularity only).
LAW_TOPICS = ("known", "history", "none")


def synthetic_law_score_fn(
    law: SyntheticLaw, dataset: ProcessedDataset, topics: str = "known"
) -> ScoreFn:
    """Scores = the true P(next item) of the test split's targets (each user's last item):
    the law at the time of that item, after the item before it, with the user's topics as
    `topics` (LAW_TOPICS) says. Test split only."""
    if topics not in LAW_TOPICS:
        raise ValueError(f"topics must be one of {LAW_TOPICS}, not {topics!r}")
    seq = dataset.sequences
    last = seq.offsets[1:] - 1
    previous = seq.items[np.maximum(last - 1, 0)]
    when = dataset.timestamps[last] - law.config.start_timestamp
    generator_item = dataset.item_ids[1:].astype(np.int64)  # internal id i -> [i - 1]
    generator_user = dataset.user_ids.astype(np.int64)

    def topic_share(users: np.ndarray) -> np.ndarray:
        if topics == "known":
            return law.user_topic_share[generator_user[users]]
        if topics == "history":
            return law.topic_share_posterior(
                [generator_item[seq.items[seq.offsets[u] : last[u]] - 1] for u in users]
            )
        return np.broadcast_to(law.jump_topic, (len(users), law.n_topics))

    def score(users: np.ndarray, history: Sequences) -> torch.Tensor:
        del history  # the law reads the whole sequence before the target, held-out items too
        probabilities = law.next_item_probabilities(
            topic_share(users), generator_item[previous[users] - 1], when[users]
        )
        scores = torch.zeros(len(users), dataset.n_items + 1, dtype=torch.float64)
        scores[:, 1:] = torch.as_tensor(probabilities[:, generator_item])
        return scores

    return score


def run_oracle(dataset: ProcessedDataset, seed: int, context: RunContext) -> RunOutput:
    """The synthetic world's true next-item law (training.data.synthetic_law): the
    ceiling of every model on that data. Row "": the user's topics known; "history":
    inferred from the history by Bayes' rule. Only for `--dataset synthetic`."""
    del seed  # nothing is trained
    if context.synthetic is None:
        raise ValueError("oracle: the true next-item law is known only for --dataset synthetic")
    law = synthetic_law(context.synthetic)
    test, groups = dataset.test(), dataset.item_groups()
    rows = {
        part: evaluate_scores(
            synthetic_law_score_fn(law, dataset, topics), test, groups, desc=f"oracle {topics}"
        )
        for part, topics in (("", "known"), ("history", "history"))
    }
    return rows, {}


MODEL_RUNNERS: dict[str, Runner] = {
    "pop": run_popularity,
    "sasrec": run_sasrec,
    "sasrec-content": run_sasrec_content,
    "content-knn": run_content_knn,
    "oracle": run_oracle,
    **{variant: flexcode_runner(variant) for variant in VARIANTS},
}
