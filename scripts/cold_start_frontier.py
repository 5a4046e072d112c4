"""Cold start on the held-out-items protocol: what puts new items into the top 10, and
what it costs the other users.

    python scripts/cold_start_frontier.py --run-dir runs/ml-100k-cold \
        [--dataset ml-100k --cold-fraction 0.1 --seeds 0,1,2] [--out reports/cold-frontier.json]

RUN_DIR holds stages A-C of the cold protocol (`flexcode train tokenizer --cold-fraction
0.1 --run-dir RUN_DIR`). For each seed, FlexCode is trained as shipped (stage D with the
benchmark's configuration) and every test user's whole catalogue is ranked by the dense
head (w = 1: what validation chose in most cold-protocol seeds), with the new (id-free)
items given mass in each of these ways:

  plain         the model as trained (what ships)
  share pi      `DecodingConfig.new_item_share`: every user gives new items pi of the mass
  offset b      a constant b added to every new item's logit, so a user whose state matches
                the new items gives them more mass than one whose state does not
  gated q pi    share pi only for the q of users whose history is the most recent (mean
                first-seen rank of the last 20 history items); the gate's AUC for "the
                target is a new item" is reported
  knn k         a new item's vector replaced by the mean vector of its k nearest warm items
                by text embedding, then share 0.2
  within-new    the new items ranked alone (every warm item pushed below them): how well
                the model orders new items at all; a random order gets 10 / (new items)

and reports NDCG@10 over all users and Recall@10 over the users whose target is new.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARES = (0.1, 0.2, 0.3)
OFFSETS = (1.0, 2.0, 3.0, 4.0)
GATES = ((0.2, 0.3), (0.3, 0.5), (0.5, 0.3))  # (share of users gated, pi for them)
NEIGHBOURS = (10, 20)
RECENT = 20  # history items the recency gate reads


def recency_feature(dataset, eval_set) -> np.ndarray:
    """(U,) mean first-seen rank (0 = oldest item, 1 = newest) of each user's last RECENT
    history items: users who follow new releases score high."""
    seq, n = dataset.sequences, dataset.n_items + 1
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, seq.items, dataset.timestamps)
    rank = np.zeros(n)
    rank[1 + np.argsort(first[1:], kind="stable")] = np.arange(n - 1) / max(n - 2, 1)
    h = eval_set.history
    return np.array(
        [rank[h.items[h.offsets[i] : h.offsets[i + 1]][-RECENT:]].mean() for i in range(h.n_users)]
    )


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def measure_seed(dataset, run_dir: Path, seed: int, text: np.ndarray | None) -> dict:
    import torch

    from models.decoding import shared_log_softmax
    from training.data.preprocess import COLD
    from training.evaluate import ranks_from_scores, summarise
    from training.stages.generator.runner import train_variant
    from training.stages.generator.train import GeneratorTrainConfig

    device = torch.device("cpu")
    result = train_variant(
        dataset,
        run_dir,
        "flexcode",
        device,
        GeneratorTrainConfig(seed=seed),
        text_embeddings=text,
        progress=False,
    )
    served = result.served(device)
    vectors = served.catalogue.item_vectors.float()
    new = served.catalogue.id_free.clone()
    new[0] = False
    dead = torch.zeros_like(new)
    dead[0] = True
    test, groups = dataset.test(), dataset.item_groups()
    target_groups = groups[test.targets]
    is_new_target = target_groups == COLD
    with torch.no_grad():
        rows = torch.as_tensor(test.history.last(served.max_len))
        state = served.generator.user_state(vectors[rows], rows != 0).float()

    def row(scores: torch.Tensor) -> dict:
        ranks = ranks_from_scores(scores, torch.as_tensor(test.targets), test.history)
        found = summarise(ranks, target_groups)
        return {
            "ndcg@10": found.metrics["all"]["ndcg@10"],
            "cold_recall@10": found.metrics["cold"]["recall@10"],
        }

    def shared(logits: torch.Tensor, pi: float) -> torch.Tensor:
        return shared_log_softmax(logits, dead, new, pi)

    logits = state @ vectors.T
    rows_out = {"plain": row(logits)}
    for pi in SHARES:
        rows_out[f"share {pi}"] = row(shared(logits, pi))
    for b in OFFSETS:
        rows_out[f"offset {b:g}"] = row(logits + b * new.float())
    recency = recency_feature(dataset, test)
    for q, pi in GATES:
        gated = torch.as_tensor(recency >= np.quantile(recency, 1 - q))[:, None]
        rows_out[f"gated {q} {pi}"] = row(torch.where(gated, shared(logits, pi), logits))
    if text is not None:
        unit = torch.nn.functional.normalize(torch.as_tensor(text).float(), dim=1)
        new_rows, warm_rows = torch.nonzero(new)[:, 0], torch.nonzero(~new & ~dead)[:, 0]
        similar = unit[new_rows] @ unit[warm_rows].T
        for k in NEIGHBOURS:
            imputed = vectors.clone()
            nearest = warm_rows[similar.topk(k, dim=1).indices]  # (new, k)
            imputed[new_rows] = vectors[nearest].mean(dim=1)
            rows_out[f"knn {k}"] = row(shared(state @ imputed.T, 0.2))
    rows_out["within-new"] = row(logits.masked_fill(~new[None] & ~dead[None], -1e9))
    return {
        "seed": seed,
        "new_items": int(new.sum()),
        "new_targets": int(is_new_target.sum()),
        "recency_gate_auc": auc(recency, is_new_target),
        "rows": rows_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/ml-100k-cold"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("reports/cold-frontier.json"))
    args = parser.parse_args()

    import torch

    from training.data import load_dataset
    from training.data.preprocess import PreprocessConfig
    from training.pipeline import ensure_semantic_embeddings

    dataset = load_dataset(args.dataset, PreprocessConfig(cold_item_fraction=args.cold_fraction))
    text = np.asarray(ensure_semantic_embeddings(dataset, torch.device("cpu")))
    seeds = [measure_seed(dataset, args.run_dir, int(s), text) for s in args.seeds.split(",")]
    names = list(seeds[0]["rows"])
    metrics = list(seeds[0]["rows"]["plain"])
    mean = {
        name: {m: float(np.mean([s["rows"][name][m] for s in seeds])) for m in metrics}
        for name in names
    }
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "seeds": seeds, "mean": mean}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"new items {seeds[0]['new_items']}, users with a new target {seeds[0]['new_targets']}")
    print("recency gate AUC: " + ", ".join(f"{s['recency_gate_auc']:.3f}" for s in seeds))
    print(f"{'scoring':16s} {'NDCG@10 all':>12s} {'cold R@10':>10s}   per seed (all / cold)")
    for name in names:
        per_seed = "  ".join(
            f"{s['rows'][name]['ndcg@10']:.4f}/{s['rows'][name]['cold_recall@10']:.4f}"
            for s in seeds
        )
        both = f"{mean[name]['ndcg@10']:12.4f} {mean[name]['cold_recall@10']:10.4f}"
        print(f"{name:16s} {both}   {per_seed}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
