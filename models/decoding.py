"""Recommendation = user state -> candidates -> one mixed score -> top k.

One function for evaluation and serving, so the served model decodes exactly as it was
measured. For each request:

  1. the user state h from the history's item vectors;
  2. candidates: the items constrained beam search finds under the generative head
     (`models.beam_search`), plus the dense head's best non-excluded items; items added
     at serving time are in both (their tokens are in the overlay index, their vectors in
     the item table), so a new item can be returned the moment it is added;
  3. every candidate's score, computed exactly for each one:
        score = (1 - w) * log P_gen(item) + w * log P_dense(item),   w = dense_weight,
     log P_gen under the restricted softmax: the beam's own score for the items it found
     (the sum of its restricted step log-probs), teacher forcing for the dense head's
     candidates (the same number beam search would reach for them); log P_dense the
     dense head's log-softmax;
  4. excluded items (the history) dropped, the best k returned.

The dense candidates alone hold at least k non-excluded items whenever the catalogue has
k, so every request gets k results.

Large catalogues (`Catalogue.dense_index`, built by the service above a size:
`models.dense_index`): scoring every row per request is a full scan of the item table, so
the dense candidates come from an approximate index instead: its top M rows of the
bundle, UNION an exact scan of the rows added at serving time (few; not in the index),
blocked rows dropped. A request left with fewer eligible candidates than it needs (a
long history, a narrow filter) asks the index again for more rows, then, still short,
is scanned exactly, so it still gets k results whenever k eligible rows exist. Every
candidate's logit is computed exactly. The dense log-softmax's normaliser log Z is a
per-request constant, which no ranking at any w depends on, so it is not computed over
the whole catalogue: log P_dense is returned as the logit minus the log-sum-exp over the
live rows whose logits were computed (the index's M rows, the added rows and the beam's
candidates), a LOWER bound of log Z, so the returned log P_dense is an upper bound of the
exact one (a request scanned exactly gets the exact value). With the new-item share
below (a two-part normaliser: each part's log Z shifts the two parts against each
other, which does change the ranking) the exact scan is used. Evaluation never builds an
index: it ranks the whole catalogue.

Business-rule filters (`allowed`, a per-request (B, R) row mask, or (B, P) row lists
for short allowlists: an allowlist, a denylist, item attributes) act inside step 2, not
after step 4: the dense head's candidates are the best ALLOWED rows, and the beam
search only follows prefixes with an allowed item below them (`constrained_beam_search`,
`allowed`), so a filtered request still gets k results whenever k allowed, eligible
rows exist. Scores are not renormalised over the allowed rows: a filter decides what
may be returned, not how likely the model finds it. w = 0 ranks by the generative head
only, w = 1 by the dense head only.

New-item share (optional, `DecodingConfig.new_item_share` = pi): items without an id of
their own (added at serving time, or never seen in training) are scored by codes and text
alone, and the dense softmax gives them together only a sliver of the mass, so they are
almost never returned (BENCHMARKS.md, cold start). With pi set, P_dense becomes a two-part
mixture: the id-free items share pi between them, in proportion to their dense scores, and
the other items share 1 - pi, likewise. The generative head's log-probabilities get the
same per-row offsets, so at any dense weight the served score of an id-free item moves by
what the share moved its dense part. pi is the operator's exposure knob for new items;
None (the default) leaves the model as trained.

`model` is anything with the `ServingModel` methods: the torch Generator or the ONNX one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from models.beam_search import constrained_beam_search, sequence_log_probs
from models.config import Config, check_positive_ints, check_range
from models.dense_candidates import blocked_at, index_dense_candidates, index_log_probs
from models.device_index import DeviceIndex
from models.row_sets import NEG_INF, blocked_rows, dedupe, is_row_list, rows_of
from models.take import take_rows

if TYPE_CHECKING:  # faiss is loaded only where an index is built (the service)
    from models.dense_index import DenseIndex

# Up to this many allowed rows per request, a filter reaches the beam search as a list of
# ids; above it, as the (B, R) row mask (`constrained_beam_search`, `allowed`).
SPARSE_ALLOWED_MAX = 4096
IndexTensors = DeviceIndex | tuple[DeviceIndex, DeviceIndex]


class ServingModel(Protocol):
    """What decoding calls (`Generator` in models/generator.py documents each). The
    *_scores are log-probs up to a constant per position (logits will do): decoding
    renormalises them over each prefix's valid children."""

    def user_state(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor: ...

    def next_token_scores(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor: ...

    def token_scores(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Catalogue:
    """The items a request can be answered with, as the decoder reads them.

    item_vectors: (R, C) float the dense head's item vectors (row 0 padding).
    item_tokens: (R, L + 1) every row's served tokens (row 0 zeros), any integer type.
    index: the prefix index over those tokens (a DeviceIndex, or (base, overlay)).
    live: optional (R,) bool, rows that may be returned (False for padding, for rows of
        items that were replaced and for retired items); None = every row but 0.
    id_free: optional (R,) bool, rows of items without an id embedding of their own (the
        new items the new-item share applies to); None = no such rows.
    dense_index: optional approximate index over rows 1..dense_index.n_rows - 1 (the
        bundle's items) that the dense candidates come from (module docstring, large
        catalogues); None = the exact scan over every row.
    """

    item_vectors: torch.Tensor
    item_tokens: torch.Tensor
    index: IndexTensors
    live: torch.Tensor | None = None
    id_free: torch.Tensor | None = None
    dense_index: DenseIndex | None = None

    @property
    def n_rows(self) -> int:
        return int(self.item_vectors.shape[0])


@dataclass(frozen=True)
class DecodingConfig(Config):
    beam_width: int = 50  # generative candidates per request
    dense_weight: float = 0.5  # w in the mixed score; chosen on validation by stage D
    dense_candidates: int = 50  # dense-head candidates per request (at least k are used)
    # Share of the dense head's mass given to id-free (new) items; None = as trained.
    new_item_share: float | None = None

    def __post_init__(self) -> None:
        check_range(self, "dense_weight", 0.0, 1.0)
        check_range(self, "new_item_share", 0.0, 1.0, low_open=True, high_open=True, optional=True)
        check_positive_ints(self, "beam_width", "dense_candidates")


def generative_log_probs(
    model: ServingModel, state: torch.Tensor, rows: torch.Tensor, catalogue: Catalogue
) -> torch.Tensor:
    """(B, C) states, (B, M) candidate rows -> (B, M) log P_gen(row) by teacher forcing
    under the restricted softmax; -inf for rows whose tokens are not in the index."""
    batch, m = rows.shape
    tokens = take_rows(catalogue.item_tokens, rows.clamp(min=0)).long()  # (B, M, L + 1)
    logits = model.token_scores(state, tokens)  # (B, M, L + 1, V)
    log_p, found = sequence_log_probs(
        logits.reshape(batch * m, *logits.shape[2:]),
        tokens.reshape(batch * m, -1),
        catalogue.index,
    )
    ok = (found.view(batch, m) == rows) & (rows > 0)
    return torch.where(ok, log_p.sum(dim=1).view(batch, m), NEG_INF)


@dataclass(frozen=True)
class Candidates:
    """What `find_candidates` found for B requests; M candidate slots per request.

    rows: (B, M) int64 item rows, -1 for an empty slot (each row appears once).
    generative: (B, M) log P_gen(row), -inf for empty slots; None when not computed.
    dense: (B, M) log P_dense(row), -inf for empty slots.
    eligible: (B, M) bool, a real row that is neither excluded nor dead.
    """

    rows: torch.Tensor
    generative: torch.Tensor | None
    dense: torch.Tensor
    eligible: torch.Tensor

    def scores(self, dense_weight: float) -> torch.Tensor:
        """(B, M) the mixed score at w = dense_weight, -inf where not eligible."""
        return mix(self.dense, self.generative, dense_weight).masked_fill(~self.eligible, NEG_INF)


def dense_log_probs(
    state: torch.Tensor, catalogue: Catalogue, new_item_share: float | None = None
) -> torch.Tensor:
    """(B, C) user states -> (B, R) log P_dense over the catalogue's live rows (the
    softmax of state . v_i over them, as the dense head is trained); -inf elsewhere.
    new_item_share: pi of the module docstring (None: the plain softmax)."""
    logits = state.float() @ catalogue.item_vectors.float().T
    dead = torch.zeros(catalogue.n_rows, dtype=torch.bool, device=logits.device)
    dead[0] = True
    if catalogue.live is not None:
        dead |= ~catalogue.live
    return shared_log_softmax(logits, dead, catalogue.id_free, new_item_share)


def share_offsets(
    state: torch.Tensor, catalogue: Catalogue, new_item_share: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, R) log P_dense with the new-item share, and (B, R) what the share added to each
    row's log-probability (None without a share). The generative head gets the same
    per-row offsets, so at any dense weight w the served score of every id-free item moves
    by the same amount as its dense part: the share is a prior on the whole score."""
    shared = dense_log_probs(state, catalogue, new_item_share)
    if new_item_share is None or catalogue.id_free is None:
        return shared, None
    plain = dense_log_probs(state, catalogue)
    return shared, torch.where(torch.isfinite(plain), shared - plain, 0.0)


def shared_log_softmax(
    logits: torch.Tensor,
    dead: torch.Tensor,
    id_free: torch.Tensor | None,
    new_item_share: float | None,
) -> torch.Tensor:
    """(B, R) logits, (R,) bool dead rows, (R,) bool id-free rows -> (B, R) log-probs:
    the softmax over the live rows, or, with a share pi, the two-part mixture of the
    module docstring (id-free rows share pi, the others 1 - pi). Dead rows are -inf. Any
    score table works (the SASRec baseline uses it too, for a like-for-like comparison)."""
    if new_item_share is None or id_free is None:
        return torch.log_softmax(logits.masked_fill(dead[None], NEG_INF), dim=1)
    new = id_free.to(logits.device) & ~dead
    known = ~new & ~dead
    if not bool(new.any()) or not bool(known.any()):  # one part empty: nothing to share
        return torch.log_softmax(logits.masked_fill(dead[None], NEG_INF), dim=1)
    log_new = torch.log_softmax(logits.masked_fill(~new[None], NEG_INF), dim=1)
    log_known = torch.log_softmax(logits.masked_fill(~known[None], NEG_INF), dim=1)
    mixed = torch.where(
        new[None], log_new + math.log(new_item_share), log_known + math.log1p(-new_item_share)
    )
    return mixed.masked_fill(dead[None], NEG_INF)


@torch.no_grad()
def check_allowed(allowed: torch.Tensor, batch: int, n_rows: int) -> None:
    """ValueError unless `allowed` is a filter in one of its two forms for B requests
    over R catalogue rows: a (B, R) bool mask, or (B, P) int64 rows below R, -1 padding."""
    if allowed.ndim == 2 and allowed.shape[0] == batch:
        if allowed.dtype == torch.bool and allowed.shape[1] == n_rows:
            return
        if allowed.dtype == torch.int64 and (
            allowed.numel() == 0 or (int(allowed.min()) >= -1 and int(allowed.max()) < n_rows)
        ):
            return
    raise ValueError(
        f"allowed must be a bool tensor ({batch}, {n_rows}), one row mask per request over "
        f"the catalogue's rows, or an int64 tensor ({batch}, P) of rows in [0, {n_rows}), "
        f"-1 padding; got {allowed.dtype} {tuple(allowed.shape)}"
    )


def find_candidates(
    model: ServingModel,
    history: torch.Tensor,
    catalogue: Catalogue,
    config: DecodingConfig,
    exclude: torch.Tensor | None = None,
    top_k: int = 1,
    generative: bool | None = None,
    allowed: torch.Tensor | None = None,
) -> Candidates:
    """Steps 1-3 of the module docstring for (B, T) history rows (left-padded with 0).

    exclude: optional (B, E) int64 rows never to return, -1 padding. top_k: at least this
    many dense candidates are taken. generative: whether to run the beam search and score
    log P_gen (default: when config.dense_weight < 1). allowed: optional, the only rows
    request b may get (business-rule filters): a (B, R) bool mask, or (B, P) int64 row
    lists, -1 padding, for short allowlists (`models.row_sets`); the dense candidates
    are the best allowed rows and the beam follows only prefixes with an allowed row
    below them.
    """
    if exclude is not None and (exclude.dtype != torch.int64 or exclude.ndim != 2):
        raise ValueError("exclude must be an int64 tensor (B, E) of item rows, -1 padding")
    if allowed is not None:
        check_allowed(allowed, history.shape[0], catalogue.n_rows)
    generative = config.dense_weight < 1.0 if generative is None else generative
    vectors = catalogue.item_vectors
    batch = history.shape[0]
    state = model.user_state(take_rows(vectors, history), history != 0)  # (B, C)
    n_dense = min(max(config.dense_candidates, top_k), catalogue.n_rows)
    # The index path (module docstring, large catalogues); the share needs every row's
    # logit for its two normalisers, so it keeps the exact scan.
    indexed = catalogue.dense_index is not None and config.new_item_share is None
    blocked: torch.Tensor | None = None  # (B, R), built only where needed
    if indexed:
        dense_found = index_dense_candidates(state, catalogue, exclude, allowed, n_dense)
        if not generative:
            # The index's rows are the only candidates: unique, blocked ones already out,
            # already scored. The general path below would dedupe, block and score them
            # again: a third of a 1M-item request's decoding (BENCHMARKS.md).
            return Candidates(dense_found.rows, None, dense_found.log_probs, dense_found.eligible)
        found = [dense_found.rows]
        offsets = None
    else:
        dense_all, offsets = share_offsets(state, catalogue, config.new_item_share)  # (B, R)
        blocked = blocked_rows(batch, catalogue, exclude, dense_all.device, allowed)
        found = [dense_all.masked_fill(blocked, NEG_INF).topk(n_dense, dim=1).indices]
    if generative:

        def step(tokens: torch.Tensor, _: None) -> tuple[torch.Tensor, None]:
            # Column 0 is BOS; the decoder is conditioned on the state instead.
            if tokens.shape[2] == 1:  # the first step: every beam is the same BOS
                first = model.next_token_scores(state, tokens[:, :1, 1:])
                return first.expand(-1, tokens.shape[1], -1), None
            return model.next_token_scores(state, tokens[:, :, 1:]), None

        width = config.beam_width
        # With a filter the beam gets the rows it may return (exclusions and dead rows
        # taken out too), so it prunes prefixes whose allowed rows are all excluded.
        beam_allowed = None
        if is_row_list(allowed):  # the lists less what is blocked anyway
            beam_allowed = allowed.masked_fill(blocked_at(allowed, catalogue, exclude, None), -1)
        elif allowed is not None:
            if blocked is None:
                blocked = blocked_rows(batch, catalogue, exclude, state.device, allowed)
            open_rows = ~blocked
            # A short list of ids (an allowlist) is tested by searchsorted; many allowed
            # rows (a category, a denylist) go as the mask itself, which the search reads
            # by gathers: listing a million ids per request cost seconds per batch.
            few = int(open_rows.sum(dim=1).max()) <= SPARSE_ALLOWED_MAX if batch else True
            beam_allowed = rows_of(open_rows) if few else open_rows
        beam_rows, beam_log_p, _ = constrained_beam_search(
            step, catalogue.index, batch, width, width, exclude=exclude, allowed=beam_allowed
        )
        found.append(beam_rows)
    # Dense candidates first: a row found both ways keeps its dense slot, which is
    # teacher-forced below, and its beam slot becomes empty.
    rows = dedupe(torch.cat(found, dim=1))  # (B, M), -1 = none
    safe = rows.clamp(min=0)
    if indexed:
        eligible = ~blocked_at(rows, catalogue, exclude, allowed)
        dense = index_log_probs(state, catalogue, rows, dense_found)
    else:
        assert blocked is not None
        eligible = (rows > 0) & ~blocked.gather(1, safe)
        dense = dense_all.gather(1, safe).masked_fill(rows < 0, NEG_INF)
    gen = None
    if generative:
        # Teacher forcing only where the beam gave no score: the rescoring projects every
        # position onto the whole vocabulary, the dearest part of a request at w < 1.
        n_found = found[0].shape[1]
        forced = generative_log_probs(model, state, safe[:, :n_found], catalogue)
        gen = torch.cat([forced, beam_log_p.to(forced.dtype)], dim=1)
        gen = gen.masked_fill(rows < 0, NEG_INF)
        if offsets is not None:
            gen = gen + offsets.gather(1, safe)
    return Candidates(rows=rows, generative=gen, dense=dense, eligible=eligible)


def top_k_of(
    candidates: Candidates, dense_weight: float, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4: (rows (B, top_k) int64 best first, -1 only when fewer than top_k rows are
    eligible; scores (B, top_k), -inf padding)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    score = candidates.scores(dense_weight)
    k = min(top_k, score.shape[1])
    best, pick = score.topk(k, dim=1)
    rows = torch.where(best > NEG_INF, candidates.rows.gather(1, pick), -1)
    if k < top_k:  # fewer candidate slots than top_k: a catalogue smaller than top_k
        rows = torch.nn.functional.pad(rows, (0, top_k - k), value=-1)
        best = torch.nn.functional.pad(best, (0, top_k - k), value=NEG_INF)
    return rows, best


@torch.no_grad()
def recommend_top_k(
    model: ServingModel,
    history: torch.Tensor,
    catalogue: Catalogue,
    top_k: int,
    config: DecodingConfig,
    exclude: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """history: (B, T) item rows, left-padded with 0 -> (rows (B, top_k) int64, best
    first, -1 padding only when fewer than top_k rows are eligible; scores (B, top_k), the
    mixed score of the module docstring, -inf padding).

    exclude: optional (B, E) int64 rows never to return (e.g. the history), -1 padding.
    allowed: optional, the only rows each request may get (filters; `find_candidates`).
    """
    candidates = find_candidates(model, history, catalogue, config, exclude, top_k, allowed=allowed)
    return top_k_of(candidates, config.dense_weight, top_k)


@torch.no_grad()
def exact_log_probs(
    model: ServingModel,
    history: torch.Tensor,
    catalogue: Catalogue,
    generative: bool = True,
    chunk_sequences: int = 8192,
    new_item_share: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) histories -> ((B, R) log P_dense of EVERY row, (B, R) log P_gen of every row
    or None): the parts of the mixed score without beam search or candidates, for
    diagnostics and validation. Row 0 and non-live rows are -inf. new_item_share: as in
    `DecodingConfig`."""
    vectors = catalogue.item_vectors
    state = model.user_state(take_rows(vectors, history), history != 0)
    dense, offsets = share_offsets(state, catalogue, new_item_share)
    dead = torch.isneginf(dense[0])
    gen = None
    if generative:
        all_rows = torch.arange(catalogue.n_rows, device=dense.device)
        gen = torch.empty_like(dense)
        chunk = max(1, chunk_sequences // state.shape[0])  # bounds the (B, chunk, L+1, V) logits
        for start in range(0, catalogue.n_rows, chunk):
            rows = all_rows[start : start + chunk][None].expand(state.shape[0], -1)
            gen[:, start : start + chunk] = generative_log_probs(model, state, rows, catalogue)
        gen = gen.masked_fill(dead[None], NEG_INF)
        if offsets is not None:
            gen = gen + offsets
    return dense.masked_fill(dead[None], NEG_INF), gen


def mix(dense: torch.Tensor, generative: torch.Tensor | None, dense_weight: float) -> torch.Tensor:
    """The mixed score (1 - w) * log P_gen + w * log P_dense of aligned score tensors."""
    if dense_weight >= 1.0:
        return dense
    if generative is None:
        raise ValueError("a dense weight below 1 needs generative scores")
    if dense_weight <= 0.0:
        return generative
    return dense_weight * dense + (1.0 - dense_weight) * generative


@torch.no_grad()
def exact_scores(
    model: ServingModel,
    history: torch.Tensor,
    catalogue: Catalogue,
    dense_weight: float,
    chunk_sequences: int = 8192,
    new_item_share: float | None = None,
) -> torch.Tensor:
    """(B, T) histories -> (B, R) the mixed score of EVERY row (no beam, no candidates):
    the ranking beam search approximates. Row 0 and non-live rows -inf."""
    dense, gen = exact_log_probs(
        model, history, catalogue, dense_weight < 1.0, chunk_sequences, new_item_share
    )
    return mix(dense, gen, dense_weight)
