"""How far from the ceiling? The synthetic world's true next-item law, taken apart, on the
benchmark's test split (the same evaluation as every model).

    python scripts/synthetic_ceiling.py [--synthetic-items 10000 --synthetic-interactions 200000] \
        [--out reports/synthetic-ceiling.json]

Each row ranks every user's catalogue by the law (training.data.synthetic_law) with
part of what it knows taken away:

  topics   known    the user's preferred topics as the generator drew them
           history  inferred from the items before the target by Bayes' rule: the best
                    any model reading only the history can do with them
           none     every user the population's topic mix: the last item's topic and
                    popularity only
  weights  true     the generator's item popularity
           counts   the training split's interaction counts (+ 0.5): what a model can
                    learn of popularity from the same data

`topics=known, weights=true` is the benchmark's `oracle` row, `history, true` its
`oracle/history`.

`--ranks REPORT/ranks.npz` (a `flexcode benchmark` run on the same data) splits every
row's NDCG@10, the law's and the benchmark's models', by the kind of test target: in the
topic of the item before it ("stay", about 0.7 + of the steps) or in another topic
("move": one of the user's preferred topics, or an explore jump). What a model gains
over "the last item's topic, then popularity" can only come from the "move" targets.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def count_weights(law, dataset) -> np.ndarray:
    """The law's item weights replaced by training counts (+ 0.5, so no item is
    impossible), in the generator's item ids."""
    counts = dataset.train_counts()[1:].astype(np.float64) + 0.5
    weight = np.zeros_like(law.weight)
    weight[dataset.item_ids[1:].astype(np.int64)] = counts
    return weight / weight.sum()


def stay_targets(law, dataset, test) -> np.ndarray:
    """(U,) bool per test user: the target is in the topic of the item before it."""
    seq = dataset.sequences
    last = seq.offsets[1:][test.users] - 1
    generator_item = dataset.item_ids[1:].astype(np.int64)  # internal id i -> [i - 1]
    target = generator_item[seq.items[last] - 1]
    previous = generator_item[seq.items[last - 1] - 1]
    return law.topic[target] == law.topic[previous]


def by_kind(ranks: np.ndarray, stays: np.ndarray) -> dict:
    """NDCG@10 over all users and per target kind, (seeds, U) ranks averaged over seeds."""
    from training.stats import per_user_ndcg

    gain = per_user_ndcg(ranks).mean(axis=0)
    return {
        "ndcg@10 all": float(gain.mean()),
        "ndcg@10 stay": float(gain[stays].mean()),
        "ndcg@10 move": float(gain[~stays].mean()),
    }


def _line(row: dict) -> str:
    return "  ".join(f"{k} {row[k]:.4f}" for k in ("ndcg@10 all", "ndcg@10 stay", "ndcg@10 move"))


def main() -> None:
    from training.baselines import LAW_TOPICS, synthetic_law_score_fn
    from training.data import load_dataset
    from training.data.synthetic import SyntheticConfig
    from training.data.synthetic_law import synthetic_law
    from training.evaluate import evaluate_scores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-items", type=int, default=SyntheticConfig.n_items)
    parser.add_argument(
        "--synthetic-interactions", type=int, default=SyntheticConfig.n_interactions
    )
    parser.add_argument("--synthetic-seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument("--ranks", type=Path, help="a benchmark's ranks.npz on the same data")
    parser.add_argument("--out", type=Path, default=Path("reports/synthetic-ceiling.json"))
    args = parser.parse_args()

    config = SyntheticConfig(
        n_items=args.synthetic_items,
        n_interactions=args.synthetic_interactions,
        seed=args.synthetic_seed,
    )
    dataset = load_dataset("synthetic", synthetic=config)
    law = synthetic_law(config)
    laws = {"true": law, "counts": replace(law, weight=count_weights(law, dataset))}
    test, groups = dataset.test(), dataset.item_groups()
    stays = stay_targets(law, dataset, test)
    print(f"{stays.mean():.3f} of {len(stays)} test targets stay in the last item's topic")
    rows = []
    for weights, this_law in laws.items():
        for topics in LAW_TOPICS:
            result = evaluate_scores(
                synthetic_law_score_fn(this_law, dataset, topics),
                test,
                groups,
                desc=f"{topics}, {weights}",
            )
            row = {
                "topics": topics,
                "weights": weights,
                **result.metrics["all"],
                **by_kind(result.ranks[None], stays),
            }
            rows.append(row)
            print(f"law: topics {topics:8s} weights {weights:7s} {_line(row)}")
    models = {}
    if args.ranks is not None:
        with np.load(args.ranks) as saved:
            for name in saved.files:
                ranks = saved[name]
                if ranks.shape[-1] != len(stays):
                    raise SystemExit(
                        f"{args.ranks}: {name} has {ranks.shape[-1]} users, not {len(stays)}"
                    )
                models[name.replace("__", "/")] = by_kind(ranks, stays)
                print(
                    f"model {name.replace('__', '/'):32s} {_line(models[name.replace('__', '/')])}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "dataset": dataset.summary(),
                "synthetic": config.to_dict(),
                "stay_share": float(stays.mean()),
                "rows": rows,
                "models": models,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
