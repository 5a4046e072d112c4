"""Does SASRec under-use popularity? Its scores plus a prior, ranked over the whole catalogue.

    python scripts/sasrec_popularity_prior.py --run-dir runs/synthetic [--dataset synthetic]

Reads stage A's SASRec from RUN_DIR/sasrec and ranks every validation and test user by

    count   score + beta * log(1 + training count)
    age     score - beta * log(days the item has been in the training log)  (a rate
            correction: items first seen late are under-counted)

for a grid of beta, with the per-user NDCG@10 difference to beta = 0 (mean, standard
error). The question it answers: is the gap between the models and the synthetic law's
"last topic, then counted popularity" rule (BENCHMARKS.md) a popularity prior the models
fail to learn? A beta > 0 that wins on validation and test would say yes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import load_dataset
from training.data.preprocess import EvalSet, ProcessedDataset
from training.evaluate import ranks_from_scores, summarise
from training.stages.sasrec import load_sasrec
from training.stats import per_user_ndcg

BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def priors(dataset: ProcessedDataset) -> dict[str, torch.Tensor]:
    """(N + 1,) per-item priors from the training split only."""
    train = dataset.warm_prefix_mask(drop_last=2)  # the interactions of train_sequences()
    items, times = dataset.sequences.items[train], dataset.timestamps[train]
    first = np.full(dataset.n_items + 1, times.max())
    np.minimum.at(first, items, times)
    days = np.maximum((times.max() - first) / 86_400.0, 1.0)
    return {
        "count": torch.as_tensor(np.log1p(dataset.train_counts()), dtype=torch.float32),
        "age": torch.as_tensor(-np.log(days), dtype=torch.float32),
    }


def ranks(model, eval_set: EvalSet, prior: torch.Tensor) -> dict[float, np.ndarray]:
    n = len(eval_set.users)
    out = {beta: np.empty(n, dtype=np.int64) for beta in BETAS}
    for start in range(0, n, 256):
        idx = np.arange(start, min(start + 256, n))
        history = eval_set.history.select(idx)
        with torch.no_grad():
            scores = model.score(torch.as_tensor(history.last(model.config.max_len))).float()
        targets = torch.as_tensor(eval_set.targets[idx])
        for beta in BETAS:
            out[beta][idx] = ranks_from_scores(scores + beta * prior, targets, history)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="synthetic")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset(args.dataset)
    model = load_sasrec(args.run_dir / "sasrec", torch.device("cpu"))
    groups = dataset.item_groups()
    for kind, prior in priors(dataset).items():
        for split, eval_set in (("valid", dataset.validation()), ("test", dataset.test())):
            by_beta = ranks(model, eval_set, prior)
            base = per_user_ndcg(by_beta[0.0])
            for beta, r in by_beta.items():
                ndcg = summarise(r, groups[eval_set.targets]).metrics["all"]["ndcg@10"]
                diff = per_user_ndcg(r) - base
                print(
                    f"{kind:5s} {split:5s} beta {beta:4.2f}  NDCG@10 {ndcg:.4f}  "
                    f"diff {diff.mean():+.4f} (se {diff.std() / np.sqrt(len(diff)):.4f})"
                )


if __name__ == "__main__":
    main()
