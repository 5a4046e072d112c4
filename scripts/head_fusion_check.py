"""Does the generative head add to the dense one, and does validation tell the truth
about it? Exact scores of both heads of the shipped model, on validation and on test.

    python scripts/head_fusion_check.py --run-dir runs/ml-100k [--dataset ml-100k --seeds 0,1] \
        [--out reports/head-fusion.json]

RUN_DIR holds stages A-C (`flexcode train tokenizer --run-dir RUN_DIR`). For each seed,
FlexCode is trained as shipped and every user's whole catalogue is scored by each head
alone (log P_dense, log P_gen under the restricted softmax; no beam search) on:

  val        the validation split: the history is the user's training sequence, a
             context the model was trained on verbatim
  test       the test split: the history ends with the validation item, a context the
             model never saw
  test-seen  the test targets with the history's last item dropped: the training
             sequence again, so against `test` it shows what a seen context is worth
             to each head (both lose an informative item)

Then four ways to fuse the heads, each with its parameter p chosen on validation (the
grid below) and measured on test, paired with the dense head alone over the seeds:

  linear   (1 - p) log P_gen + p log P_dense        (what `models.decoding` serves, w = p)
  probmix  log((1 - p) P_gen + p P_dense)           (a mixture of the two distributions)
  rrf      p / (20 + rank_dense) + (1 - p) / (20 + rank_gen)   (reciprocal-rank fusion)
  damped   log P_dense + (1 - p) / 2 log P_gen      (the generative head as a damped prior)
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

GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)  # p = 1: the dense head alone
RRF_K = 20


def _ranks_desc(scores: np.ndarray) -> np.ndarray:
    """(U, R) 0-based rank of each column in its row, best first."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None].repeat(len(scores), 0), 1)
    return ranks


def fuse(family: str, dense: np.ndarray, gen: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return dense
    if family == "linear":
        return (1 - p) * gen + p * dense
    if family == "probmix":
        return np.logaddexp(np.log(p) + dense, np.log1p(-p) + gen)
    if family == "rrf":
        return p / (RRF_K + _ranks_desc(dense)) + (1 - p) / (RRF_K + _ranks_desc(gen))
    if family == "damped":
        return dense + (1 - p) / 2 * gen
    raise ValueError(family)


FAMILIES = ("linear", "probmix", "rrf", "damped")


def ndcg_of_scores(scores: np.ndarray, eval_set) -> np.ndarray:
    """(U,) NDCG@10 of each user's target, every history item excluded (ties: lower id
    first, as `training.evaluate.ranks_from_scores`)."""
    import torch

    from training.evaluate import ranks_from_scores
    from training.stats import per_user_ndcg as ndcg_of_ranks

    s = torch.as_tensor(np.nan_to_num(scores, nan=-np.inf, posinf=np.inf))
    ranks = ranks_from_scores(s, torch.as_tensor(eval_set.targets), eval_set.history)
    return ndcg_of_ranks(ranks)


def head_scores(served, eval_set, drop_last: int = 0, batch: int = 64):
    """(U, R) exact log P_dense and log P_gen of every row for every user."""
    import torch

    vectors = served.catalogue.item_vectors
    dense, gen = [], []
    for start in range(0, len(eval_set.users), batch):
        idx = np.arange(start, min(start + batch, len(eval_set.users)))
        rows = eval_set.history.select(idx).last(served.max_len + drop_last)
        rows = torch.as_tensor(rows[:, : rows.shape[1] - drop_last])
        with torch.no_grad():
            state = served.generator.user_state(vectors[rows], rows != 0)
            d = torch.log_softmax(state.float() @ vectors.float().T, dim=1)
            d[:, 0] = -torch.inf
            g = served.generator.all_rows_log_probs(state, served.paths).float()
        dense.append(d.numpy())
        gen.append(g.numpy())
    return np.concatenate(dense), np.concatenate(gen)


def measure_seed(dataset, run_dir: Path, seed: int, text) -> dict:
    import torch

    from training.stages.generator.runner import train_variant
    from training.stages.generator.train import GeneratorTrainConfig

    result = train_variant(
        dataset,
        run_dir,
        "flexcode",
        torch.device("cpu"),
        GeneratorTrainConfig(seed=seed),
        text_embeddings=text,
        progress=False,
    )
    served = result.served(torch.device("cpu"))
    val, test = dataset.validation(), dataset.test()
    splits = {"val": (val, 0), "test": (test, 0), "test-seen": (test, 1)}
    scores = {name: head_scores(served, es, drop) for name, (es, drop) in splits.items()}
    heads = {
        name: {
            "dense": float(ndcg_of_scores(d, splits[name][0]).mean()),
            "generative": float(ndcg_of_scores(g, splits[name][0]).mean()),
        }
        for name, (d, g) in scores.items()
    }
    fused, test_dense = {}, ndcg_of_scores(scores["test"][0], test)
    for family in FAMILIES:
        on_val = [ndcg_of_scores(fuse(family, *scores["val"], p), val).mean() for p in GRID]
        p = GRID[int(np.argmax(on_val))]
        on_test = ndcg_of_scores(fuse(family, *scores["test"], p), test)
        fused[family] = {"p": p, "val": float(max(on_val)), "test_per_user": on_test}
    return {
        "seed": seed,
        "served_dense_weight": served.decoding.dense_weight,
        "heads": heads,
        "fused": fused,
        "test_dense_per_user": test_dense,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/ml-100k"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=Path("reports/head-fusion.json"))
    args = parser.parse_args()

    import torch

    from training.data import load_dataset
    from training.pipeline import ensure_semantic_embeddings
    from training.stats import paired_bootstrap

    dataset = load_dataset(args.dataset)
    text = np.asarray(ensure_semantic_embeddings(dataset, torch.device("cpu")))
    seeds = [measure_seed(dataset, args.run_dir, int(s), text) for s in args.seeds.split(",")]

    print(f"{'split':10s} {'dense':>8s} {'generative':>11s} {'gen/dense':>10s}  (mean of seeds)")
    for split in seeds[0]["heads"]:
        d = np.mean([s["heads"][split]["dense"] for s in seeds])
        g = np.mean([s["heads"][split]["generative"] for s in seeds])
        print(f"{split:10s} {d:8.4f} {g:11.4f} {g / d:10.3f}")
    dense = np.stack([s["test_dense_per_user"] for s in seeds])
    fusion = {}
    print("fusion (p chosen on validation) against the dense head alone, test, seeds pooled:")
    for family in FAMILIES:
        fused = np.stack([s["fused"][family]["test_per_user"] for s in seeds])
        paired = paired_bootstrap(fused, dense)
        ps = [s["fused"][family]["p"] for s in seeds]
        fusion[family] = {"p_per_seed": ps, "test": float(fused.mean()), **paired}
        print(
            f"  {family:8s} p = {ps}: {fused.mean():.4f} vs {dense.mean():.4f}, "
            f"{paired['diff']:+.4f} [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]"
        )
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "heads": {s["seed"]: s["heads"] for s in seeds},
        "served_dense_weight": {s["seed"]: s["served_dense_weight"] for s in seeds},
        "fusion": fusion,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
