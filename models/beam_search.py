"""Constrained beam search over a prefix index: the decoding KERNEL (tensors in, tensors out).

The index comes from `models.prefix_index` (built offline by NumPy); here every step is a
few fixed-shape tensor ops over (B requests, W beams, W_k child slots): index_select the
padded child-token rows of every beam's node (a missing node reads the padding row), gather
the model's scores at those tokens (padding slots read the PAD column, set to -inf; -inf
and NaN scores are invalid too), renormalise them over the valid children (`restrict`: the
softmax of each step is over the tokens that can follow the prefix, so a finished
sequence's score is log P(item)), add the beam scores, and keep the best W of the W * W_k
candidates per request (`_select`: one top-k, grouped on wide rows); only the W picked
candidates then have their child read (table[row, slot]). The first step runs over the
dense (V,) root mask instead, and a nearly full level (depth 1 of a large catalogue) over
windows of consecutive tokens (`models.dense_window`: a copy, not a token gather). There
is no Python loop over requests, beams or items; the only loop is over the L + 1 depths.

Cost per step: O(B * W * W_k) for the token gather, scoring and topk, plus O(B * W) for
the picked beams: independent of the catalogue size N except through W_k, the largest
branching at that depth, which the token layout bounds: with the shipped shape (K = 512
codes, L = 3, the dominant codebook first) a depth-1 node's children are codes of one
level, so W_1 <= K: 21 at 10k items, 118 at 100k, 458 at 1M (scripts/bench_beam_search.py).
That step cannot cost less than the children it normalises over (an exp per child, and
a max per block of them for the selection), so depth 1 is the one step that grows with
the catalogue until W_1 saturates; it reads them as windows once they are nearly full.
Below the root the tables stay padded or CSR: a dense (n_1, V) mask would cost
O(B * W * V) per step, more than B * W * W_1.

Selection is exact and deterministic without sorting all candidates: top-k(W + 1) gives
the W best values (`_top_k`); unless the W-th and (W + 1)-th are equal and finite, the
chosen set is unique and only its W members are sorted by (score, tie key); rows with such
a boundary tie (e.g. a model with quantised log-probs) fall back to a full stable sort
(`_select`).

With an overlay (items added at serving time, `OverlayIndex.to_tensors`), each beam holds a
node in both tries (-1 where its prefix is absent from one); a step's valid tokens are the
union of both tries' children, so scores are exactly those of the merged index. An empty
overlay is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from models.allowed_items import AllowedItems, live_candidates
from models.device_index import DeviceIndex
from models.sorted_lookup import lookup_sorted

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
ReorderFn = Callable[[Any, torch.Tensor], Any]

PAD, BOS = 0, 1  # models.tokens special tokens


NEG_INF, POS_INF = float("-inf"), float("inf")


def _order_selected(
    val: torch.Tensor, idx: torch.Tensor, key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder (R, k) selected (values, candidate indices) by (value desc, key asc): a stable
    sort by key, then a stable sort by value."""
    by_key = key.sort(dim=1, stable=True).indices
    val, idx = val.gather(1, by_key), idx.gather(1, by_key)
    by_val = val.sort(dim=1, descending=True, stable=True).indices
    return val.gather(1, by_val), idx.gather(1, by_val)


# `_top_k` selects through groups of TOPK_GROUP candidates once a row holds at least
# TOPK_MIN_GROUPS_PER_K * k groups: a depth-1 step at 1M items (20 beams x a 512-token
# window) and the root step (the vocabulary), not the narrow steps of small catalogues.
TOPK_GROUP = 16
TOPK_MIN_GROUPS_PER_K = 4


def _top_k(cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`cand.topk(k, dim=1, sorted=True)` for (R, C) candidates: the same values (which of
    equal values' indices comes back is unspecified, as for topk), a NaN ranked first as
    topk ranks it, only in-range indices; cheaper on wide rows.

    The k best candidates lie in the k groups with the largest maxima, for any partition
    of a row into groups: a group holding one of them has a maximum at least the k-th
    best value, and at most k groups do unless that value is tied, when any k of the
    tied groups hold k values equal to it. The groups here are interleaved, group g =
    positions g, g + G, g + 2G, ... (G = C / TOPK_GROUP), so their maxima are one
    elementwise max over TOPK_GROUP rows of the (R, TOPK_GROUP, G) view (vectorised; a
    max over contiguous blocks reduces along the short axis and was 3x slower). Then a
    topk over the G maxima and one over the k picked groups' candidates replace a topk
    over all C, which cost 0.43 ms of a 1.3 ms depth-1 step at 1M items."""
    rows, n_cand = cand.shape
    n_groups = -(-n_cand // TOPK_GROUP)
    if n_groups < TOPK_MIN_GROUPS_PER_K * k:
        return cand.topk(k, dim=1, largest=True, sorted=True)
    if n_groups * TOPK_GROUP != n_cand:  # padding slots: -inf, at the row's end
        cand = torch.nn.functional.pad(cand, (0, n_groups * TOPK_GROUP - n_cand), value=NEG_INF)
    view = cand.view(rows, TOPK_GROUP, n_groups)  # [r, m, g] = cand[r, g + m * G]
    best = view.amax(dim=1).topk(k, dim=1, largest=True, sorted=False).indices  # (R, k)
    picked = view.gather(2, best[:, None, :].expand(rows, TOPK_GROUP, k))  # (R, GROUP, k)
    val, pos = picked.view(rows, TOPK_GROUP * k).topk(k, dim=1, largest=True, sorted=True)
    idx = best.gather(1, pos % k) + (pos // k) * n_groups
    # A padding slot is picked only as one of fewer than k valid candidates (-inf, never
    # alive): any in-range index will do.
    return val, idx.clamp_(max=n_cand - 1)


def _select(
    cand: torch.Tensor, width: int, key: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best `width` of (R, C) candidate scores (-inf or NaN = invalid, C >= width) by
    (score desc, key asc), key (R, C) int64, or the candidate position when None.

    Exact without sorting all C candidates: topk(width + 1) gives the values; if the
    width-th and (width + 1)-th values differ (or are both -inf: every valid candidate is
    then selected), the selected SET is unique and only its `width` members are ordered by
    (score, key). Rows whose boundary value is tied (e.g. quantised models) fall back to a
    full stable sort, which is what the tie rule is defined by. Returns ((R, width) scores,
    (R, width) candidate indices).
    """
    n_cand = cand.shape[1]
    k = min(width + 1, n_cand)
    val, idx = _top_k(cand, k)
    if bool(val.isnan().any()):  # topk ranks NaN first: make NaN invalid, then redo
        cand = cand.nan_to_num(nan=NEG_INF, posinf=POS_INF, neginf=NEG_INF)
        val, idx = _top_k(cand, k)
    tied = None
    if k > width:
        edge, after = val[:, width - 1], val[:, width]
        tied = (edge == after) & (edge > NEG_INF)
        val, idx = val[:, :width], idx[:, :width]
    val, idx = _order_selected(val, idx, idx if key is None else key.gather(1, idx))
    if tied is not None and bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        sub = cand.index_select(0, rows)
        if key is None:
            order = sub.sort(dim=1, descending=True, stable=True).indices[:, :width]
        else:
            by_key = key.index_select(0, rows).sort(dim=1, stable=True).indices
            by_val = sub.gather(1, by_key).sort(dim=1, descending=True, stable=True).indices
            order = by_key.gather(1, by_val[:, :width])
        val[rows] = sub.gather(1, order)
        idx[rows] = order
    return val, idx


def restrict(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax over the valid entries of `dim` only: invalid entries are -inf (or NaN,
    which counts as invalid) and stay -inf; a slice with no valid entry is all -inf.

    This is what makes an item's summed token log-probs log P(item): at every step the
    distribution is over the prefix's valid next tokens, not the whole vocabulary, so no
    mass leaks to tokens that cannot follow and rare prefixes are not penalised."""
    return _restrict_(logits.clone(), dim)


def _restrict_(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """`restrict` on a tensor the caller owns (it may be written, and the result may be a
    new tensor). One fused log_softmax over the (B, W, W_k) candidates, which dominate a
    step's cost at depth 1 (its exps are vectorised: logsumexp's were 2.4x slower at 1M
    items), after a max per slice, a small (B, W, 1) tensor that tells the rare cases
    apart without another pass over the candidates: a slice holds a NaN exactly when its
    max is NaN (the NaNs are then made invalid, and the max redone), and has no valid
    entry exactly when its max is -inf (+inf: an entry that swamps the slice; either way
    the slice's entries are all invalid, -inf, where log_softmax gives NaN). The same
    arithmetic in every case, so NaN and -inf scores give the same results bit for bit."""
    if logits.shape[dim] == 0:
        return logits
    peak = logits.amax(dim=dim, keepdim=True)
    if bool(peak.isnan().any()):
        logits.masked_fill_(logits.isnan(), NEG_INF)
        peak = logits.amax(dim=dim, keepdim=True)
    out = torch.log_softmax(logits, dim=dim)
    bad = ~torch.isfinite(peak)
    if bool(bad.any()):
        out.masked_fill_(bad, NEG_INF)
    return out


def _score_children(logp: torch.Tensor, score: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """(B, W, V) log-probs whose PAD column is -inf (`_own_scores`), (B, W) beam scores,
    (B, W, S) child tokens (-1 = padding slot) -> (B, W, S) candidate scores score +
    log P(token | prefix) restricted to the beam's children, -inf at padding slots."""
    # Padding slots are clamped to PAD and so read its -inf: no mask pass over the
    # (B, W, S) candidates, the largest tensor of a depth-1 step at 1M items.
    cand = logp.gather(2, tok.clamp(min=0))
    return _restrict_(cand, 2).add_(score[:, :, None])


def _own_scores(logp: torch.Tensor) -> torch.Tensor:
    """The step's (B, W, V) scores with column PAD set to -inf, written in place (PAD
    never follows a prefix, so no valid token's score changes); a tensor whose elements
    share memory (e.g. expanded from one row) is copied first."""
    if not logp.is_contiguous():
        logp = logp.contiguous()
    logp[:, :, PAD] = NEG_INF
    return logp


def _check_index(index_tensors: object) -> tuple[DeviceIndex, DeviceIndex | None]:
    if isinstance(index_tensors, DeviceIndex):
        return index_tensors, None
    if (
        isinstance(index_tensors, tuple | list)
        and len(index_tensors) == 2
        and all(isinstance(x, DeviceIndex) for x in index_tensors)
    ):
        base, over = index_tensors
        if (base.depth, base.vocab_size) != (over.depth, over.vocab_size):
            raise ValueError(
                f"base and overlay disagree: depth {base.depth} vs {over.depth}, "
                f"vocab_size {base.vocab_size} vs {over.vocab_size}"
            )
        return base, over
    raise ValueError(
        "index_tensors must be a DeviceIndex (PrefixIndex.to_tensors) or a (base, overlay) "
        f"pair (OverlayIndex.to_tensors), got {type(index_tensors).__name__}"
    )


def constrained_beam_search(
    step_fn: StepFn,
    index_tensors: DeviceIndex | tuple[DeviceIndex, DeviceIndex],
    batch_size: int,
    beam_width: int,
    top_k: int,
    exclude: torch.Tensor | None = None,
    bos_token: int = BOS,
    state: Any = None,
    reorder_state: ReorderFn | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search restricted to item sequences of the index; returns the top_k items.

    step_fn(tokens, state) -> (log_probs, state): the model. tokens: (B, W, 1 + t) int64,
        column 0 is `bos_token`, then the t tokens generated so far (t = 0 .. D - 1); at
        t = 0 all W beams are the same BOS. Beams that died (fewer valid prefixes than W)
        carry PAD (0) tokens, so embedding lookups stay in range. log_probs: (B, W, V)
        float, V = index vocab_size: log-probs or logits, either way each step renormalises
        them over the beam's valid next tokens; scores accumulate in its dtype. The
        kernel writes -inf into their PAD column after the first step (a contiguous
        log_probs is written in place: return a fresh tensor, or one whose PAD column may
        change; a non-contiguous one is copied first).
    index_tensors: DeviceIndex, or a (base, overlay) pair of them (`OverlayIndex`).
    exclude: optional (B, E) int64 item ids to drop per request (e.g. its history), -1
        padding. Excluded leaves are masked at the last step only, so earlier steps may
        spend beams on prefixes whose items are all excluded: to still get top_k results,
        give a margin, beam_width >= top_k + (excluded items likely in the top), e.g.
        top_k + E.
    allowed: optional (B, P) int64 item ids, -1 padding, or a (B, R) bool mask over item
        rows (cheaper when many items are allowed): the ONLY items request b may get
        (a business-rule filter). Unlike `exclude`, it prunes at every step: a prefix is a
        candidate only when some allowed item lies below it (two searchsorted calls over
        the trie's leaf runs, `DeviceLevel.leaf_ptr`), so no beam is spent on a prefix
        whose items are all filtered out, however small the allowed set. Scores stay the
        unfiltered model's log P(item) (the mask is applied after each step's restricted
        softmax), so they compare with `sequence_log_probs`.
    state: the initial model state, passed to the first step_fn call.
    reorder_state(state, parent) -> state: optional; called after every step's selection
        (the last one included) with parent (B, W) int64, the beam in [0, W) each new beam
        extends, so KV caches can follow the surviving beams.

    Returns (item_ids (B, top_k) int64, -1 padding; scores (B, top_k) log P(item), the sum
    of the restricted per-step log-probs, -inf padding; tokens (B, top_k, D) int64, -1
    padding), best first. A candidate whose
    score is -inf or NaN (the model forbids a token) is treated as invalid.

    Ties: at the last step, equal scores go to the lower item id; at earlier steps to the
    candidate from the better-ranked parent beam, then the base trie's tokens ascending,
    then the overlay-only tokens ascending (a stable sort over that candidate layout; at a
    depth read through windows, `models.dense_window`, every token ascending).
    """
    base, over = _check_index(index_tensors)
    if over is not None and over.empty:
        over = None  # the serving path always passes an overlay, most often empty
    for name, value in (("batch_size", batch_size), ("beam_width", beam_width), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if top_k > beam_width:
        raise ValueError(f"top_k ({top_k}) must be <= beam_width ({beam_width})")
    device, depth, vocab = base.device, base.depth, base.vocab_size
    n_req, width = batch_size, beam_width
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.int64:
            raise ValueError("exclude must be an int64 tensor (B, E) of item ids, -1 padding")
        if exclude.ndim != 2 or exclude.shape[0] != n_req:
            raise ValueError(f"exclude must be ({n_req}, E), got {tuple(exclude.shape)}")
        # Sorted rows let one batched searchsorted test every candidate item.
        exclude = exclude.to(device).sort(dim=1).values if exclude.shape[1] else None
    allowed_items = None
    if allowed is not None:
        if not isinstance(allowed, torch.Tensor) or allowed.dtype not in (torch.int64, torch.bool):
            raise ValueError(
                "allowed must be an int64 tensor (B, P) of item ids, -1 padding, or a bool "
                "tensor (B, R) over item rows"
            )
        if allowed.ndim != 2 or allowed.shape[0] != n_req:
            raise ValueError(f"allowed must be ({n_req}, P or R), got {tuple(allowed.shape)}")
        allowed_items = AllowedItems(allowed.to(device), base, over)

    # Root step tables (constant per call): valid first tokens of the merged index, and
    # each first token's child in either trie.
    root_valid, root_b = base.root_mask, base.root_child
    root_o = torch.full_like(root_b, -1)
    if over is not None:
        root_valid, root_o = root_valid | over.root_mask, over.root_child
    root_invalid = ~root_valid
    root_item = torch.where(root_b >= 0, root_b, root_o)  # item ids when depth == 1
    history = torch.full((n_req, width, depth + 1), PAD, dtype=torch.int64, device=device)
    history[:, :, 0] = bos_token
    node_b = torch.zeros(n_req, width, dtype=torch.int64, device=device)  # root everywhere
    node_o = torch.zeros_like(node_b) if over is not None else torch.full_like(node_b, -1)
    score = torch.zeros(n_req, width, device=device)
    for t in range(depth):
        logp, state = step_fn(history[:, :, : t + 1], state)
        if not isinstance(logp, torch.Tensor) or tuple(logp.shape) != (n_req, width, vocab):
            got = tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__
            raise ValueError(
                f"step_fn must return log_probs ({n_req}, {width}, {vocab}), got {got}"
            )
        last = t == depth - 1
        item = None  # (B, C) item id of every candidate, last step only
        level_b = base.levels[t - 1] if t > 0 else None
        # Windows serve the unfiltered search (a filter needs the children's tokens); the
        # last depth's children are items.
        window = None
        if level_b is not None and allowed_items is None and not last:
            window = level_b.window
        placed = None  # with an overlay: its children's offsets in the base windows
        if window is not None and over is not None:
            level_o = over.levels[t - 1]
            tok_o = level_o.tokens_of(level_o.rows(node_o).view(-1))
            placed = window.overlay_offsets(
                level_b.rows(node_b).view(-1), node_b.view(-1) >= 0, tok_o
            )
            if placed is None:
                window = None  # some overlay child has no place: the padded tables
        if t > 0:  # (the root step reads beam 0's row only: an expanded BOS row stays so)
            logp = _own_scores(logp)
        if t == 0:
            # All beams are the same BOS: expand beam 0 only, over the dense root tables.
            # Candidate j is token j, so positions order candidates by token.
            cand = _restrict_(logp[:, 0, :].masked_fill(root_invalid, NEG_INF), 1)
            if last:
                item = root_item.expand(n_req, vocab)
            slots, tok = vocab, None
        elif window is not None:
            # A nearly full level (depth 1 of a large catalogue): each beam's scores read
            # as one window of consecutive tokens (`models.dense_window`), an overlay's
            # children read into their places in it.
            rows_b = level_b.rows(node_b)
            if over is not None:
                rows_o = level_o.rows(node_o)
            extra = None if placed is None else (tok_o, placed)
            slots, tok = window.size, None
            cand = _restrict_(window.scores(logp, rows_b, extra), 2).add_(score[:, :, None])
        elif over is None:
            rows_b = level_b.rows(node_b)
            slots = level_b.width
            # (B, W, Wk) child tokens of every beam; missing nodes read the padding row.
            if last:  # at the last depth, children are item ids
                tok, item = level_b.children_of(rows_b.view(-1))
                item = item.view(n_req, -1)
            else:
                tok = level_b.tokens_of(rows_b.view(-1))
            tok = tok.view(n_req, width, slots)
            cand = _score_children(logp, score, tok)
        else:
            level_o = over.levels[t - 1]
            rows_b, rows_o = level_b.rows(node_b), level_o.rows(node_o)
            wb, wo = level_b.width, level_o.width
            if last:  # leaf tokens are in one trie only; their children are item ids
                tok_b, kid_b = level_b.children_of(rows_b.view(-1))  # (B * W, Wb)
                tok_o, kid_o = level_o.children_of(rows_o.view(-1))  # (B * W, Wo)
                item = torch.cat([kid_b, kid_o], dim=1).view(n_req, -1)
            else:
                tok_b = level_b.tokens_of(rows_b.view(-1))
                tok_o = level_o.tokens_of(rows_o.view(-1))
            # A token in both tries is one candidate (the base slot, holding both
            # children); overlay slots whose token the base also has are dropped.
            in_b, _ = lookup_sorted(tok_b, tok_b, tok_o)
            tok = torch.cat([tok_b, torch.where(in_b, -1, tok_o)], dim=1)
            slots, tok = wb + wo, tok.view(n_req, width, wb + wo)
            cand = _score_children(logp, score, tok)
        cand = cand.reshape(n_req, -1)  # -inf: invalid; NaN is made invalid in _select
        if item is not None and exclude is not None:
            pos = torch.searchsorted(exclude, item.contiguous()).clamp_(max=exclude.shape[1] - 1)
            cand.masked_fill_(exclude.gather(1, pos) == item, NEG_INF)
        if allowed_items is not None:
            if item is not None:  # leaves: the item itself must be allowed
                cand.masked_fill_(~allowed_items.holds(item), NEG_INF)
            else:  # a prefix: some allowed item must lie below it
                live = live_candidates(
                    base, over, t, node_b, node_o, tok, allowed_items, root_b, root_o
                )
                cand.masked_fill_(~live, NEG_INF)
        if cand.shape[1] < width:  # fewer candidates than beams (root step, tiny vocab)
            cand = torch.nn.functional.pad(cand, (0, width - cand.shape[1]), value=NEG_INF)
            if item is not None:
                item = torch.nn.functional.pad(item, (0, width - item.shape[1]), value=-1)
        # Ties: lower item id at the last step, else candidate position (= parent rank,
        # then the base trie's tokens, then the overlay-only tokens; in a window, tokens).
        score, pick = _select(cand, width, item)
        alive = score > NEG_INF
        if t == 0:
            parent = torch.zeros_like(pick)
            new_tok = pick.clamp(max=vocab - 1)
            new_b, new_o = root_b[new_tok], root_o[new_tok]
        else:
            parent = torch.div(pick, slots, rounding_mode="floor")
            slot = pick - parent * slots
            # Token and children of the picked slots only: table[row, slot].
            new_tok = None if window is not None else tok.view(n_req, -1).gather(1, pick)
            if window is not None:  # the slot is an offset into the parent's window
                parent_row = rows_b.gather(1, parent)
                new_tok = window.token_at(parent_row, slot)
                base_slot = window.slot_at(parent_row, slot)  # -1: an overlay-only token
                new_b = level_b.child_at(parent_row, base_slot.clamp(min=0))
                new_b = torch.where(base_slot >= 0, new_b, -1)
                new_o = node_o
                if over is not None:  # the token looked up in the parent's overlay node
                    _, new_o = lookup_sorted(
                        *level_o.children_of(rows_o.gather(1, parent).view(-1)),
                        new_tok.view(-1, 1),
                    )
                    new_o = new_o.view(n_req, width)
            elif last:  # item ids, whichever trie holds them
                new_b, new_o = item.gather(1, pick), torch.full_like(pick, -1)
            elif over is None:
                new_b = level_b.child_at(rows_b.gather(1, parent), slot)
                new_o = node_o
            else:
                is_b = slot < wb
                new_b = level_b.child_at(rows_b.gather(1, parent), slot.clamp(max=wb - 1))
                new_b = torch.where(is_b, new_b, -1)
                # Overlay child: its own slot, or the base token looked up in the
                # parent's overlay node (-1 where the overlay lacks it).
                row_o = rows_o.gather(1, parent)
                own_o = level_o.child_at(row_o, (slot - wb).clamp(min=0))
                _, shared_o = lookup_sorted(
                    *level_o.children_of(row_o.view(-1)), new_tok.view(-1, 1)
                )
                new_o = torch.where(is_b, shared_o.view(n_req, width), own_o)
        # Follow the surviving beams' token histories.
        history = history.gather(1, parent[:, :, None].expand(-1, -1, depth + 1))
        history[:, :, t + 1] = torch.where(alive, new_tok, PAD)
        node_b = torch.where(alive, new_b, -1)
        node_o = torch.where(alive, new_o, -1) if over is not None else node_o
        if reorder_state is not None:
            state = reorder_state(state, parent)
    alive = alive[:, :top_k]
    items = torch.where(alive, torch.where(node_b >= 0, node_b, node_o)[:, :top_k], -1)
    tokens = torch.where(alive[:, :, None], history[:, :top_k, 1:], -1)
    return items, score[:, :top_k], tokens


def sequence_log_probs(
    log_probs: torch.Tensor,
    tokens: torch.Tensor,
    index_tensors: DeviceIndex | tuple[DeviceIndex, DeviceIndex],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced scores of given token sequences under the same restricted softmax
    as `constrained_beam_search`: training's loss, the rescoring of candidates found
    another way, and exact full-catalogue scoring all go through here.

    log_probs: (M, D, V) the model's scores (log-probs or logits) of token t of sequence m
        given its first t tokens; tokens: (M, D) int64 the sequences.
    index_tensors: DeviceIndex, or a (base, overlay) pair (valid children = the union).
    Returns ((M, D) float log P(token t | prefix), the softmax taken over the prefix's
    valid next tokens, -inf from the first token that is not a valid child on (the whole
    row for a sequence holding a token outside the vocabulary); (M,) int64 the item id of
    each sequence, -1 where it is no item of the index).
    """
    base, over = _check_index(index_tensors)
    if over is not None and over.empty:
        over = None
    n, depth, vocab = log_probs.shape
    if tuple(tokens.shape) != (n, depth) or depth != base.depth or vocab != base.vocab_size:
        raise ValueError(
            f"log_probs (M, {base.depth}, {base.vocab_size}) and tokens (M, {base.depth}) "
            f"expected, got {tuple(log_probs.shape)} and {tuple(tokens.shape)}"
        )
    # NaN (a model forbidding a token) counts as invalid; it is fixed on the gathered
    # entries below, not over the whole (M, D, V) tensor, the size of a rescoring batch.
    tokens = tokens.to(base.device, torch.int64)
    in_vocab = ((tokens >= 0) & (tokens < vocab)).all(dim=1)
    tokens = torch.where(in_vocab[:, None], tokens, 0)
    root_valid, root_b = base.root_mask, base.root_child
    root_o = torch.full_like(root_b, -1)
    if over is not None:
        root_valid, root_o = root_valid | over.root_mask, over.root_child
    out = []
    node_b = node_o = None
    for t in range(depth):
        tok = tokens[:, t : t + 1]  # (M, 1)
        if t == 0:
            # The root's children are the same for every sequence: one (n_root,) list,
            # read with index_select, not an (M, V) table of ids to gather and mask.
            kids = root_valid.nonzero()[:, 0]
            found = root_valid[tok[:, 0]]
            new_b, new_o = root_b[tok[:, 0]], root_o[tok[:, 0]]
        else:
            level_b = base.levels[t - 1]
            kids_b, child_b = level_b.children_of(level_b.rows(node_b))  # ascending, -1 last
            found_b, new_b = lookup_sorted(kids_b, child_b, tok)
            kids, found, new_b = kids_b, found_b[:, 0], new_b[:, 0]
            new_o = torch.full_like(new_b, -1)
            if over is not None:
                level_o = over.levels[t - 1]
                kids_o, child_o = level_o.children_of(level_o.rows(node_o))
                found_o, new_o = lookup_sorted(kids_o, child_o, tok)
                in_b, _ = lookup_sorted(kids_b, kids_b, kids_o)
                kids = torch.cat([kids_b, torch.where(in_b, -1, kids_o)], dim=1)
                found, new_o = found | found_o[:, 0], new_o[:, 0]
        # log P(tok | prefix) = score[tok] - logsumexp(score over the valid children)
        if t == 0:
            cand = log_probs[:, 0].index_select(1, kids)
            cand = cand.masked_fill_(cand.isnan(), NEG_INF)
        else:
            cand = log_probs[:, t].gather(1, kids.clamp(min=0))
            cand = cand.masked_fill_((kids < 0) | cand.isnan(), NEG_INF)
        lse = torch.logsumexp(cand, dim=1)
        target = log_probs[:, t].gather(1, tok)[:, 0]  # NaN fails the > NEG_INF test below
        out.append(torch.where(found & (target > NEG_INF), target - lse, NEG_INF))
        node_b, node_o = torch.where(found, new_b, -1), torch.where(found, new_o, -1)
    log_p = torch.stack(out, dim=1)
    dead = ~in_vocab | torch.isneginf(log_p).any(dim=1)
    # Once a token is invalid the prefix has left the index: every later token is -inf too.
    log_p = log_p.masked_fill(torch.isneginf(log_p).cumsum(dim=1) > 0, NEG_INF)
    log_p = log_p.masked_fill(~in_vocab[:, None], NEG_INF)
    items = torch.where(dead, -1, torch.where(node_b >= 0, node_b, node_o))
    return log_p, items
