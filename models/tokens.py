"""Token layout: vocabulary blocks, item token sequences and dedup ids.

Vocabulary (one id space shared by both codebooks):

    [0, 3)                      special tokens PAD, BOS, EOS
    then 2 * L_max blocks of K  one block per (codebook, level): CF levels 0..L_max-1,
                                then SEM levels 0..L_max-1
    then dedup_size ids         the dedup block

so a token id alone says which codebook and level it encodes (`TokenLayout.describe`).

An item with router split Lcol (of a budget L) is written with its first Lcol CF levels and
its first L - Lcol SEM levels (residual quantisation is coarse to fine, so a prefix of
levels is meaningful), its DOMINANT codebook first: CF first when Lcol >= L - Lcol, else
SEM first; then one dedup token, always L + 1 tokens. The order puts the router's choice
into the first token, the one that carries most of an item's uncertainty: head items
start with a collaborative code, tail and new items with a semantic one. Items whose L
code tokens collide get dedup ids 0, 1, 2, ... in item order (as TIGER does), which makes
every item's L + 1 tokens unique. Two items with different splits never collide: their
sequences of (codebook, level) blocks differ at some position.

Items added at serving time get their dedup id from the catalog store, which numbers on
from the bundle's ids for the prefix; a prefix whose dedup block is full sends a new item
to the next code sequence of its placement order (`models.placement`).

Everything here is pure NumPy and vectorised over items (loops run over levels only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.arrays import int_array
from models.config import Config, check_positive_ints

N_SPECIAL = 3  # PAD, BOS, EOS
PAD, BOS, EOS = 0, 1, 2
CF, SEM = 0, 1  # codebook indices, in vocabulary block order

KIND_SPECIAL, KIND_CODE, KIND_DEDUP = 0, 1, 2  # values of describe()["kind"]


def _check_range(arr: np.ndarray, low: int, high: int, name: str, hint: str = "") -> None:
    """ValueError unless every value of `arr` lies in [low, high)."""
    if arr.size and (arr.min() < low or arr.max() >= high):
        bad = arr.min() if arr.min() < low else arr.max()
        raise ValueError(f"{name} must lie in [{low}, {high}), got {bad}{hint}")


@dataclass(frozen=True)
class TokenLayout(Config):
    codebook_size: int  # K, codes per level (paper default 512); the same for both codebooks
    n_levels: int  # L_max levels per codebook; a budget L <= L_max uses prefixes of them
    dedup_size: int  # dedup ids; must be >= the largest group of colliding items

    def __post_init__(self) -> None:
        check_positive_ints(self, "codebook_size", "n_levels", "dedup_size")

    @property
    def code_offset(self) -> int:
        """First id of the code blocks (= N_SPECIAL)."""
        return N_SPECIAL

    @property
    def dedup_offset(self) -> int:
        """First id of the dedup block."""
        return N_SPECIAL + 2 * self.n_levels * self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.dedup_offset + self.dedup_size

    def code_token(self, codebook: object, level: object, code: object) -> np.ndarray:
        """Token ids of codes; the three inputs broadcast against each other.

        codebook: CF (0) or SEM (1); level in [0, n_levels); code in [0, codebook_size).
        Returns int64 ids with the broadcast shape (a NumPy scalar for scalar inputs).
        """
        codebook = int_array(codebook, "codebook")
        level = int_array(level, "level")
        code = int_array(code, "code")
        _check_range(codebook, 0, 2, "codebook", " (CF=0, SEM=1)")
        _check_range(level, 0, self.n_levels, "level")
        _check_range(code, 0, self.codebook_size, "code")
        block = codebook * self.n_levels + level
        return N_SPECIAL + block * self.codebook_size + code

    def dedup_token(self, dedup: object) -> np.ndarray:
        """Token ids of dedup ids in [0, dedup_size); int64, the shape of `dedup`."""
        dedup = int_array(dedup, "dedup")
        if dedup.size and dedup.max() >= self.dedup_size:
            raise ValueError(
                f"dedup id {dedup.max()} does not fit: dedup_size={self.dedup_size}, "
                f"it must be at least {dedup.max() + 1}"
            )
        _check_range(dedup, 0, self.dedup_size, "dedup")
        return self.dedup_offset + dedup

    def describe(self, token_ids: object) -> dict[str, np.ndarray]:
        """Decode token ids of any shape S into int64 arrays of shape S:

        kind: 0 special, 1 code, 2 dedup; codebook (CF=0 / SEM=1), level, code: for code
        tokens; dedup: the dedup id, for dedup tokens. Fields that do not apply are -1.
        """
        ids = int_array(token_ids, "token_ids")
        _check_range(ids, 0, self.vocab_size, "token_ids", f" (vocab_size={self.vocab_size})")
        is_code = (ids >= N_SPECIAL) & (ids < self.dedup_offset)
        is_dedup = ids >= self.dedup_offset
        kind = np.where(is_dedup, KIND_DEDUP, np.where(is_code, KIND_CODE, KIND_SPECIAL))
        rel = ids - N_SPECIAL
        block = rel // self.codebook_size
        none = np.int64(-1)
        return {
            "kind": kind.astype(np.int64),
            "codebook": np.where(is_code, block // self.n_levels, none),
            "level": np.where(is_code, block % self.n_levels, none),
            "code": np.where(is_code, rel % self.codebook_size, none),
            "dedup": np.where(is_dedup, ids - self.dedup_offset, none),
        }


def cf_first(n_cf: np.ndarray, budget: int) -> np.ndarray:
    """(N,) bool: whether an item with n_cf CF tokens of `budget` is written CF first
    (its dominant codebook; ties, Lcol = L / 2, go to CF like the router's rounding)."""
    return np.asarray(n_cf) >= budget - np.asarray(n_cf)


def code_sequences(
    cf_codes: np.ndarray,
    sem_codes: np.ndarray,
    n_cf: np.ndarray | int,
    budget: int,
    layout: TokenLayout,
) -> np.ndarray:
    """The L code tokens of every item, without the dedup token.

    cf_codes: (N, >= L) CF codes per level; sem_codes: (N, >= L) SEM codes per level;
    n_cf: (N,) Lcol per item in [0, budget], or one int for every item; budget: L, in
    [1, layout.n_levels]. Returns (N, L) int64 token ids: the first Lcol CF levels and
    the first L - Lcol SEM levels, the dominant codebook's first (`cf_first`).
    """
    cf = int_array(cf_codes, "cf_codes")
    sem = int_array(sem_codes, "sem_codes")
    if cf.ndim != 2 or sem.ndim != 2 or cf.shape[0] != sem.shape[0]:
        raise ValueError(
            f"cf_codes and sem_codes must be (N, levels) with the same N, got {cf.shape} "
            f"and {sem.shape}"
        )
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise ValueError(f"budget must be an int, got {budget!r}")
    if not 1 <= budget <= min(layout.n_levels, cf.shape[1], sem.shape[1]):
        raise ValueError(
            f"budget must lie in [1, {min(layout.n_levels, cf.shape[1], sem.shape[1])}] "
            f"(layout.n_levels={layout.n_levels}, code levels: CF {cf.shape[1]}, "
            f"SEM {sem.shape[1]}), got {budget}"
        )
    n_items = cf.shape[0]
    n_cf_arr = int_array(n_cf, "n_cf")
    if n_cf_arr.ndim > 1 or (n_cf_arr.ndim == 1 and n_cf_arr.shape[0] != n_items):
        raise ValueError(f"n_cf must be one int or ({n_items},), got shape {n_cf_arr.shape}")
    n_cf_arr = np.broadcast_to(n_cf_arr, (n_items,))
    _check_range(n_cf_arr, 0, budget + 1, "n_cf", " (round alpha * L to ints first)")

    from_cf, level = served_positions(n_cf_arr, budget)  # (N, L) each
    rows = np.arange(n_items)[:, None]
    return np.where(
        from_cf,
        layout.code_token(CF, level, cf[rows, level]),
        layout.code_token(SEM, level, sem[rows, level]),
    )


def served_positions(n_cf: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each of the L code tokens of an item with n_cf CF tokens comes from:
    ((N, L) bool, True for a CF level; (N, L) int64 the level within its codebook). The
    dominant codebook's levels come first (`cf_first`)."""
    n_cf = np.asarray(n_cf, dtype=np.int64)[:, None]  # (N, 1)
    first_cf = cf_first(n_cf, budget)
    n_first = np.where(first_cf, n_cf, budget - n_cf)  # tokens of the first codebook
    pos = np.arange(budget)[None, :]  # (1, L)
    in_first = pos < n_first  # (N, L)
    from_cf = in_first == first_cf  # first block and CF-first, or second and SEM-first
    level = np.where(in_first, pos, pos - n_first)
    return from_cf, level


def _row_groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) rows -> ((N,) group id per row, (G,) rows per group); equal rows share a group."""
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """(N,) group ids -> (N,) 0, 1, 2, ... within each group, in row order."""
    order = np.argsort(groups, kind="stable")  # (N,) rows grouped, row order kept inside
    sorted_groups = groups[order]
    index = np.arange(groups.shape[0])
    first = np.ones(groups.shape[0], dtype=bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    group_start = np.maximum.accumulate(np.where(first, index, 0))  # (N,)
    rank = np.empty_like(index)
    rank[order] = index - group_start
    return rank


def _check_rows(rows: object, name: str) -> np.ndarray:
    arr = int_array(rows, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, L) token rows, got shape {arr.shape}")
    return arr


def assign_dedup(
    prefixes: np.ndarray,
    existing: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Dedup ids for (N, L) token rows: 0, 1, 2, ... within each group of identical rows,
    lowest row first. Returns (N,) int64.

    existing: optional ((M, L) rows already in the catalogue, (M,) their dedup ids), e.g.
    the warm catalogue when cold-start items are added: a new row continues after the
    largest dedup id its group already holds (ids of removed items are never reused).
    The largest id returned + 1 is the dedup_size needed (`TokenLayout.dedup_token`
    checks it).
    """
    new_rows = _check_rows(prefixes, "prefixes")
    if existing is None:
        return _rank_within_groups(_row_groups(new_rows)[0])
    if not isinstance(existing, tuple | list) or len(existing) != 2:
        raise ValueError("existing must be a pair ((M, L) rows, (M,) dedup ids)")
    old_rows = _check_rows(existing[0], "existing rows")
    old_dedup = int_array(existing[1], "existing dedup ids")
    if old_rows.shape[1] != new_rows.shape[1]:
        raise ValueError(
            f"existing rows have {old_rows.shape[1]} tokens, prefixes {new_rows.shape[1]}"
        )
    if old_dedup.shape != (old_rows.shape[0],):
        raise ValueError(
            f"existing dedup ids must be ({old_rows.shape[0]},), got {old_dedup.shape}"
        )
    if old_dedup.size and old_dedup.min() < 0:
        raise ValueError(f"existing dedup ids must be >= 0, got {old_dedup.min()}")
    n_old = old_rows.shape[0]
    groups, _ = _row_groups(np.concatenate([old_rows, new_rows]))
    if n_old and _row_groups(np.column_stack([groups[:n_old], old_dedup]))[1].max() > 1:
        raise ValueError("existing holds the same (row, dedup id) twice: it is not a catalogue")
    n_groups = int(groups.max()) + 1 if groups.size else 0
    next_free = np.zeros(n_groups, dtype=np.int64)  # (G,) first unused id per group
    np.maximum.at(next_free, groups[:n_old], old_dedup + 1)
    new_groups = groups[n_old:]
    return next_free[new_groups] + _rank_within_groups(new_groups)


def max_dedup_needed(prefixes: np.ndarray) -> int:
    """The smallest dedup_size that fits (N, L) rows: the size of the largest group of
    identical rows (0 for no rows)."""
    counts = _row_groups(_check_rows(prefixes, "prefixes"))[1]
    return int(counts.max()) if counts.size else 0


def item_tokens(
    cf_codes: np.ndarray,
    sem_codes: np.ndarray,
    n_cf: np.ndarray | int,
    budget: int,
    layout: TokenLayout,
) -> np.ndarray:
    """Every item's full sequence: (N, L + 1) int64, its L code tokens (`code_sequences`,
    same arguments) then its dedup token. Rows are unique. ValueError when a group of
    colliding items needs more than layout.dedup_size ids (the message gives the size)."""
    prefixes = code_sequences(cf_codes, sem_codes, n_cf, budget, layout)  # (N, L)
    dedup = assign_dedup(prefixes)  # (N,)
    needed = int(dedup.max()) + 1 if dedup.size else 0
    if needed > layout.dedup_size:
        raise ValueError(
            f"{needed} items share one code sequence at budget L={budget}, but "
            f"dedup_size={layout.dedup_size}: dedup_size must be at least {needed}"
        )
    return np.concatenate([prefixes, layout.dedup_token(dedup)[:, None]], axis=1)


# --- placement of items added at serving time ---------------------------------------------

# The most code sequences a store tries for one new item before it answers 507. It bounds


def collision_rate(prefixes: np.ndarray) -> float:
    """Fraction of the (N, L) rows that equal at least one other row (0.0 for no rows)."""
    groups, counts = _row_groups(_check_rows(prefixes, "prefixes"))
    return float(np.mean(counts[groups] > 1)) if groups.size else 0.0


def collision_rates_by_split(
    cf_codes: np.ndarray,
    sem_codes: np.ndarray,
    budget: int,
    layout: TokenLayout,
) -> dict[int, float]:
    """Collision rate of the L code tokens when every item gets the same split:
    {Lcol: rate} for Lcol = 0 (SEM only) .. L (CF only). Codes as in `code_sequences`."""
    return {
        n_cf: collision_rate(code_sequences(cf_codes, sem_codes, n_cf, budget, layout))
        for n_cf in range(budget + 1)
    }
