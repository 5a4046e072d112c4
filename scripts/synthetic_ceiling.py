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
    rows = []
    for weights, this_law in laws.items():
        for topics in LAW_TOPICS:
            result = evaluate_scores(
                synthetic_law_score_fn(this_law, dataset, topics),
                test,
                groups,
                desc=f"{topics}, {weights}",
            )
            row = {"topics": topics, "weights": weights, **result.metrics["all"]}
            rows.append(row)
            print(f"topics {topics:8s} weights {weights:7s} NDCG@10 {row['ndcg@10']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"dataset": dataset.summary(), "synthetic": config.to_dict(), "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
