"""Next-item softmax over a large catalogue: full, or sampled with the logQ correction.

The full softmax scores every target position against every item: (n, N + 1) logits,
kept a few times over by the backward pass. At N = 100k items and a full batch (64
windows x 100 positions = 6,400 targets) that is 2.6 GB per copy, so it does not fit.

The sampled softmax scores each target against a shared candidate set instead:

    C = unique(the batch's targets  U  S),  S = `n_negatives` items drawn with replacement
        from the negative distribution p_neg (uniform over 1..N, or popularity)

The batch's targets are the in-batch negatives (each target is a positive for its own
row and a negative for every other); S adds items the batch does not reach, the tail
above all. Each candidate's logit is corrected by the log of its probability of being in
C (the logQ correction, Bengio & Senecal 2008; Yi et al. 2019 for in-batch negatives):

    q_j = 1 - (1 - p_pos(j))^n (1 - p_neg(j))^M,      logit'(u, j) = h_u . v_j - log q_j

where n is the number of targets, M = `n_negatives` and p_pos the training-target
frequency (how in-batch candidates arrive). Without it popular items, which are in C
nearly every step, would be pushed down far more often than tail items and the learned
scores would be biased against them. Using the inclusion probability rather than the
expected count makes the limit exact: when C is sure to hold every item, q = 1 and the
loss IS the full softmax (a test checks this). C is a set, so a target never meets a copy
of itself as a negative (no "accidental hits" to remove), and padding (row 0) is never
a candidate.

Per step this costs n x |C| <= n x (n + M) logits, whatever N is.

`resolve_loss` picks the loss for "auto": the full softmax below SAMPLED_SOFTMAX_MIN_ITEMS
items, sampled from there on (docs/method.md says why the line is there).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("auto", "full", "sampled")
NEGATIVE_SAMPLERS = ("uniform", "popularity")
# "auto" switches to the sampled softmax at this many items (padding not counted). The
# full softmax's logits, their log-softmax and their gradient take ~3 x 4 B x n x N: at
# the loop's fullest batch (n = 6,400 targets) 77 KB per item, 1.5 GB at 20k items and
# 7.7 GB at 100k, against ~0.6 GB for the sampled one at any N (n x (n + 1,024)). Below
# the line the full softmax is affordable and exact, and every figure measured so far
# (ML-100K's 1.7k items, the 3k and 10k synthetic catalogues) keeps it.
SAMPLED_SOFTMAX_MIN_ITEMS = 20_000
DEFAULT_SAMPLED_NEGATIVES = 1024


def resolve_loss(loss: str, n_items: int) -> str:
    """ "full" or "sampled" for a catalogue of n_items (padding not counted)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "auto":
        return "sampled" if n_items >= SAMPLED_SOFTMAX_MIN_ITEMS else "full"
    return loss


class SampledSoftmax:
    """The sampled softmax with logQ correction (module docstring) over a catalogue whose
    training-target counts are `counts` ((N + 1,), row 0 padding)."""

    def __init__(
        self,
        counts: np.ndarray | torch.Tensor,
        n_negatives: int = DEFAULT_SAMPLED_NEGATIVES,
        sampler: str = "uniform",
        device: torch.device | str = "cpu",
    ) -> None:
        if sampler not in NEGATIVE_SAMPLERS:
            raise ValueError(f"sampler must be one of {NEGATIVE_SAMPLERS}, got {sampler!r}")
        if n_negatives < 0:
            raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64).clone()
        if counts.ndim != 1 or len(counts) < 2:
            raise ValueError("counts: (N + 1,) with at least one item")
        counts[0] = 0.0
        n_rows = len(counts)
        self.n_negatives = n_negatives
        self.sampler = sampler
        pos = counts  # p_pos: how in-batch candidates arrive (the target frequency)
        # popularity: +1 smoothed, so an item never trained on can be drawn too
        neg = counts + 1.0 if sampler == "popularity" else torch.ones(n_rows, dtype=torch.float64)
        neg[0] = 0.0
        self.n_rows = n_rows
        # log(1 - p) of both distributions, float64 so tiny p keep their precision.
        self.log1m_pos = torch.log1p(-pos / pos.sum()).to(device)
        self.log1m_neg = torch.log1p(-neg / neg.sum()).to(device)
        self.neg_probs = (neg / neg.sum()).float().to(device) if sampler != "uniform" else None

    def draw(self, device: torch.device) -> torch.Tensor:
        """(M,) shared negatives: rows in 1..N, drawn with replacement."""
        if self.neg_probs is None:
            return torch.randint(1, self.n_rows, (self.n_negatives,), device=device)
        return torch.multinomial(self.neg_probs, self.n_negatives, replacement=True)

    def log_q(self, candidates: torch.Tensor, n_targets: int) -> torch.Tensor:
        """(K,) candidate rows -> (K,) log of each one's probability of being in C."""
        log_absent = (
            n_targets * self.log1m_pos[candidates] + self.n_negatives * (self.log1m_neg[candidates])
        )
        # log(1 - exp(a)) for a <= 0: -expm1 keeps q accurate both near 0 and near 1.
        return torch.log(-torch.expm1(log_absent)).float()

    def __call__(
        self, states: torch.Tensor, targets: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        """states (n, C), targets (n,) rows in 1..N, table (N + 1, C) -> the summed
        sampled cross-entropy (a scalar), from n x |C| logits."""
        negatives = self.draw(targets.device)
        candidates, inverse = torch.unique(torch.cat([targets, negatives]), return_inverse=True)
        positive = inverse[: len(targets)]  # each target's column in C
        logits = states @ table[candidates].T  # (n, K)
        logits = logits.float() - self.log_q(candidates, len(targets))[None]
        return F.cross_entropy(logits, positive, reduction="sum")
