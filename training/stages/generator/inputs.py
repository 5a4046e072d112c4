"""Stage D's inputs: what the generator knows about every item, and its served tokens.

From stage C's codes (both codebooks, L_max levels each), the training counts and,
optionally, the text embeddings of stage B, `build_item_inputs` makes the (N + 1)-row
arrays the generator reads (row 0 = padding):

  - CF codes of cold items (no training interaction: their SASRec row never trained) are
    replaced by those of their nearest warm item in the tokenizer's aligned space, which
    is exactly what an item added at serving time gets (`models.cold_start`);
  - ids: each warm item its own id-table row; cold items row 0, "no id", so they are
    written by their codes and text alone, like a new item;
  - the token layout (`TokenLayout`) with a dedup block that fits every split.

`ItemInputs.item_tokens(n_cf)` writes every item's L + 1 served tokens for a router split;
dedup ids go by popularity within a group of colliding items (0 = most interactions), so
the dedup token carries a meaning the decoder can learn, and a newly added item, with no
interactions, takes the next free id of its group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.cold_start import aligned_cf_vectors, build_imputation_index, nearest_warm
from models.dual_tokenizer import DualTokenizer
from models.generator import ItemFeatures
from models.tokens import TokenLayout, code_sequences, item_tokens, max_dedup_needed
from training.data.preprocess import ProcessedDataset, warm_mask


def impute_cold_cf_codes(
    tokenizer: DualTokenizer,
    sem_codes: np.ndarray,
    cf_codes: np.ndarray,
    warm: np.ndarray,
) -> np.ndarray:
    """CF codes for every item, cold ones copied from their nearest warm neighbour in the
    tokenizer's aligned space (`models.cold_start.nearest_warm`, a FAISS index). Warm rows
    and row 0 come back unchanged.

    sem_codes, cf_codes: (N + 1, L_max) int; warm: (N + 1,) bool. Returns a new array.
    """
    cf_codes = np.asarray(cf_codes)
    warm = warm_mask(warm)
    out = cf_codes.copy()
    cold = np.flatnonzero(~warm)
    cold = cold[cold > 0]
    if len(cold) == 0:
        return out
    warm_ids = np.flatnonzero(warm)
    if len(warm_ids) == 0:
        raise ValueError("cannot impute CF codes: there is no warm item")
    index = build_imputation_index(aligned_cf_vectors(tokenizer, cf_codes[warm_ids]))
    out[cold] = cf_codes[nearest_warm(tokenizer, np.asarray(sem_codes)[cold], index, warm_ids)]
    return out


def layout_for(
    sem_codes: np.ndarray, cf_codes: np.ndarray, budget: int, codebook_size: int, slack: int = 8
) -> TokenLayout:
    """A TokenLayout with `budget` levels per codebook whose dedup block fits ANY split of
    these items (rows 1..N) at this budget.

    Items with different splits never collide, so a group of colliding items under a mixed
    split is a subset of a group under one uniform split: the largest group over the
    uniform splits n_cf = 0..L bounds every layout the router can produce. `slack` spare
    ids per group are left for items added at serving time.
    """
    probe = TokenLayout(codebook_size=codebook_size, n_levels=budget, dedup_size=1)
    needed = max(
        max_dedup_needed(code_sequences(cf_codes, sem_codes, n_cf, budget, probe))
        for n_cf in range(budget + 1)
    )
    return TokenLayout(codebook_size, budget, max(needed, 1) + slack)


def popularity_dedup_order(counts: np.ndarray) -> np.ndarray:
    """(N + 1,) counts -> (N,) rows 1..N, most interactions first (ties by row): the
    order in which dedup ids are handed out within a group of colliding items."""
    counts = np.asarray(counts)
    rows = np.arange(1, len(counts))
    return rows[np.lexsort((rows, -counts[1:]))]


@dataclass
class ItemInputs:
    """Per-item arrays of stage D, (N + 1) rows, row 0 = padding."""

    cf_codes: np.ndarray  # (N + 1, L_max) int64, cold items imputed, row 0 zeros
    sem_codes: np.ndarray  # (N + 1, L_max) int64, row 0 zeros
    counts: np.ndarray  # (N + 1,) int64 training interactions
    warm: np.ndarray  # (N + 1,) bool, at least one training interaction
    layout: TokenLayout
    budget: int  # L
    text: np.ndarray | None = None  # (N + 1, D) float32 text embeddings, when used

    @property
    def n_rows(self) -> int:
        return int(self.counts.shape[0])

    def ids(self) -> np.ndarray:
        """(N + 1,) id-table row of each item: its own for warm items, 0 for cold ones."""
        return np.where(self.warm, np.arange(self.n_rows), 0).astype(np.int64)

    def features(self, device: torch.device | str = "cpu") -> ItemFeatures:
        """ItemFeatures (no weights: the router sets them) of every row, on `device`."""
        return ItemFeatures.from_codes(
            self.layout,
            self.budget,
            self.ids(),
            self.cf_codes,
            self.sem_codes,
            self.text,
            device,
            padding_row=True,
        )

    def item_tokens(self, n_cf: np.ndarray) -> np.ndarray:
        """(N + 1,) router split -> (N + 1, L + 1) int64 served tokens (row 0 zeros),
        dedup ids by popularity within each group (module docstring)."""
        n_cf = np.asarray(n_cf, dtype=np.int64)
        order = popularity_dedup_order(self.counts)
        out = np.zeros((self.n_rows, self.budget + 1), dtype=np.int64)
        out[order] = item_tokens(
            self.cf_codes[order], self.sem_codes[order], n_cf[order], self.budget, self.layout
        )
        return out


def build_item_inputs(
    dataset: ProcessedDataset,
    tokenizer: DualTokenizer,
    codes: dict,
    budget: int,
    text_embeddings: np.ndarray | None = None,
    dedup_slack: int = 8,
) -> ItemInputs:
    """ItemInputs from stage C's codes ({"sem_codes", "cf_codes"}: (N + 1, L_max), row 0
    padding) and, optionally, stage B's (N + 1, D) text embeddings."""
    sem_codes = np.array(codes["sem_codes"], dtype=np.int64)  # copies: row 0 is reset
    cf_raw = np.array(codes["cf_codes"], dtype=np.int64)
    if not 1 <= budget <= sem_codes.shape[1]:
        raise ValueError(f"budget {budget} must be in [1, {sem_codes.shape[1]}] (tokenizer levels)")
    if len(sem_codes) != dataset.n_items + 1:
        raise ValueError(
            f"the tokenizer coded {len(sem_codes) - 1} items, the dataset has {dataset.n_items}"
        )
    sem_codes[0] = cf_raw[0] = 0  # padding row (-1 in the tokenizer's codes)
    counts = dataset.train_counts().astype(np.int64)
    warm = warm_mask(counts)
    cf_codes = impute_cold_cf_codes(tokenizer, sem_codes, cf_raw, warm)
    layout = layout_for(
        sem_codes[1:], cf_codes[1:], budget, tokenizer.config.sem.codebook_size, dedup_slack
    )
    if text_embeddings is not None:
        text_embeddings = np.asarray(text_embeddings, dtype=np.float32)
        if text_embeddings.shape[0] != dataset.n_items + 1:
            raise ValueError(
                f"{text_embeddings.shape[0]} text embeddings for {dataset.n_items + 1} rows"
            )
    return ItemInputs(cf_codes, sem_codes, counts, warm, layout, budget, text_embeddings)
