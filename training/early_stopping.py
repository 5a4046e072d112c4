"""Early stopping on a validation score, shared by the training stages."""

from __future__ import annotations

import math


class EarlyStopping:
    """Keeps the best validation score and a snapshot taken when it was reached.

    `best_score` lets a later phase continue from an earlier phase's best: it must beat
    that score before it replaces the earlier snapshot (then `best` is None until it does).
    """

    def __init__(self, patience: int, best_score: float = -math.inf) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1 evaluation, got {patience}")
        self.patience = patience
        self.best_score = best_score
        self.best: dict | None = None
        self.evals_without_gain = 0

    def update(self, score: float) -> bool:
        """Record one validation score; True if it is a new best (the caller then stores
        its snapshot in `best`)."""
        if score > self.best_score:
            self.best_score = score
            self.evals_without_gain = 0
            return True
        self.evals_without_gain += 1
        return False

    @property
    def should_stop(self) -> bool:
        """`patience` evaluations in a row brought no gain."""
        return self.evals_without_gain >= self.patience
