"""Constrained beam search over a prefix index: the decoding KERNEL (tensors in, tensors out).

The index comes from `models.prefix_index` (built offline by NumPy); here every step is a
few fixed-shape tensor ops over (B requests, W beams, W_k child slots): gather the padded
child table rows of every beam's node (a missing node is clamped to the padding row), gather
the model's log-probs at those child tokens, mask invalid slots with -inf, add the beam
scores and keep the best W of the W * W_k candidates per request. There is no Python loop
over requests, beams or items; the only loop is over the L + 1 depths. Per-step cost is
O(B * W * W_k), independent of the catalogue size N once W_k (bounded by the vocabulary
blocks) saturates.

With an overlay (items added at serving time, `OverlayIndex.to_tensors`), each beam holds a
node in both tries (-1 where its prefix is absent from one); a step's valid tokens are the
union of both tries' children, so scores are exactly those of the merged index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from models.prefix_index import DeviceIndex

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
ReorderFn = Callable[[Any, torch.Tensor], Any]

PAD, BOS = 0, 1  # models.tokens special tokens


def _lookup_sorted(row_tokens: torch.Tensor, row_values: torch.Tensor, query: torch.Tensor):
    """Find `query` tokens among each row's child tokens.

    row_tokens: (R, Wr) tokens ascending, -1 padding at the end; row_values: (R, Wr) what
    to return per slot; query: (R, Q) tokens (-1 = none). Returns ((R, Q) bool found,
    (R, Q) value, -1 where not found).
    """
    vocab_guard = torch.iinfo(torch.int64).max  # pads sort last, so rows stay ascending
    keys = torch.where(row_tokens >= 0, row_tokens, vocab_guard).contiguous()
    pos = torch.searchsorted(keys, query.contiguous()).clamp_(max=keys.shape[1] - 1)
    found = (keys.gather(1, pos) == query) & (query >= 0)
    return found, torch.where(found, row_values.gather(1, pos), -1)


def _gather_rows(table: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    """(n + 1, Wk) table, (B, W) local nodes with -1 = missing -> (B, W, Wk) rows; missing
    nodes read the padding row n (all -1)."""
    pad_row = table.shape[0] - 1
    return table[torch.where(node >= 0, node, pad_row)]


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search restricted to item sequences of the index; returns the top_k items.

    step_fn(tokens, state) -> (log_probs, state): the model. tokens: (B, W, 1 + t) int64,
        column 0 is `bos_token`, then the t tokens generated so far (t = 0 .. D - 1); at
        t = 0 all W beams are the same BOS. Beams that died (fewer valid prefixes than W)
        carry PAD (0) tokens, so embedding lookups stay in range. log_probs: (B, W, V)
        float, V = index vocab_size; scores accumulate in its dtype.
    index_tensors: DeviceIndex, or a (base, overlay) pair of them (`OverlayIndex`).
    exclude: optional (B, E) int64 item ids to drop per request (e.g. its history), -1
        padding. Excluded leaves are masked at the last step only, so earlier steps may
        spend beams on prefixes whose items are all excluded: to still get top_k results,
        give a margin, beam_width >= top_k + (excluded items likely in the top), e.g.
        top_k + E.
    state: the initial model state, passed to the first step_fn call.
    reorder_state(state, parent) -> state: optional; called after every step's selection
        (the last one included) with parent (B, W) int64, the beam in [0, W) each new beam
        extends, so KV caches can follow the surviving beams.

    Returns (item_ids (B, top_k) int64, -1 padding; scores (B, top_k) total log-probs,
    -inf padding; tokens (B, top_k, D) int64, -1 padding), best first. A candidate whose
    score is -inf or NaN (the model forbids a token) is treated as invalid.

    Ties: at the last step, equal scores go to the lower item id; at earlier steps to the
    candidate from the better-ranked parent beam, then the base trie's tokens ascending,
    then the overlay-only tokens ascending (a stable sort over that candidate layout).
    """
    base, over = _check_index(index_tensors)
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

    history = torch.full((n_req, width, depth + 1), PAD, dtype=torch.int64, device=device)
    history[:, :, 0] = bos_token
    node_b = torch.zeros(n_req, width, dtype=torch.int64, device=device)  # root everywhere
    node_o = torch.zeros_like(node_b)
    score = None
    req = torch.arange(n_req, device=device)[:, None]  # (B, 1) for advanced indexing
    for t in range(depth):
        logp, state = step_fn(history[:, :, : t + 1], state)
        if not isinstance(logp, torch.Tensor) or tuple(logp.shape) != (n_req, width, vocab):
            got = tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__
            raise ValueError(
                f"step_fn must return log_probs ({n_req}, {width}, {vocab}), got {got}"
            )
        last = t == depth - 1
        if t == 0:
            # All beams are the same BOS: expand beam 0 only, over the dense root mask.
            tok = torch.arange(vocab, device=device).expand(n_req, vocab)  # (B, V)
            valid = base.root_mask.expand(n_req, vocab)
            child_b = base.root_child.expand(n_req, vocab)
            child_o = torch.full_like(child_b, -1)
            if over is not None:
                valid = valid | over.root_mask
                child_o = over.root_child.expand(n_req, vocab)
            cand = logp[:, 0, :]  # (B, V)
            parent = torch.zeros_like(tok)
        else:
            tok_b = _gather_rows(base.tokens[t - 1], node_b)  # (B, W, Wb)
            kid_b = _gather_rows(base.children[t - 1], node_b)
            if over is None:
                tok, child_b = tok_b, kid_b
                child_o = torch.full_like(kid_b, -1)
            else:
                tok_o = _gather_rows(over.tokens[t - 1], node_o)  # (B, W, Wo)
                kid_o = _gather_rows(over.children[t - 1], node_o)
                wb, wo = tok_b.shape[2], tok_o.shape[2]
                flat = (n_req * width, -1)
                # A token in both tries is one candidate (the base slot) holding both
                # children; overlay slots whose token the base also has are dropped.
                _, o_of_b = _lookup_sorted(
                    tok_o.reshape(flat), kid_o.reshape(flat), tok_b.reshape(flat)
                )
                in_b, _ = _lookup_sorted(
                    tok_b.reshape(flat), kid_b.reshape(flat), tok_o.reshape(flat)
                )
                tok_o = torch.where(in_b.view(n_req, width, wo), -1, tok_o)
                tok = torch.cat([tok_b, tok_o], dim=2)  # (B, W, Wb + Wo)
                child_b = torch.cat([kid_b, torch.full_like(kid_o, -1)], dim=2)
                child_o = torch.cat([o_of_b.view(n_req, width, wb), kid_o], dim=2)
            valid = tok >= 0
            # Clamped gather: pad slots read token 0 and are masked just below.
            cand = score[:, :, None] + logp.gather(2, tok.clamp(min=0))  # (B, W, Wc)
            parent = torch.arange(width, device=device)[None, :, None].expand_as(tok)
            tok, valid, cand, parent = (x.reshape(n_req, -1) for x in (tok, valid, cand, parent))
            child_b, child_o = child_b.reshape(n_req, -1), child_o.reshape(n_req, -1)
        if last:
            # At the last depth the children are item ids; a token is in one trie only.
            item = torch.where(child_b >= 0, child_b, child_o)
            if exclude is not None:
                pos = torch.searchsorted(exclude, item.contiguous()).clamp_(
                    max=exclude.shape[1] - 1
                )
                valid = valid & (exclude.gather(1, pos) != item)
        # NaN > -inf is False, so NaN scores become invalid too.
        valid = valid & (cand > float("-inf"))
        cand = torch.where(valid, cand, float("-inf"))
        if cand.shape[1] < width:  # fewer candidates than beams: pad with invalid ones
            extra = width - cand.shape[1]
            pad = (0, extra)
            cand = torch.nn.functional.pad(cand, pad, value=float("-inf"))
            tok, parent = (torch.nn.functional.pad(x, pad, value=0) for x in (tok, parent))
            child_b, child_o = (
                torch.nn.functional.pad(x, pad, value=-1) for x in (child_b, child_o)
            )
            valid = torch.nn.functional.pad(valid, pad, value=False)
            if last:
                item = torch.nn.functional.pad(item, pad, value=-1)
        if last:
            # Lower item id first among equal scores: stable sort by id, then by score.
            by_id = torch.sort(item, dim=1, stable=True).indices
            by_score = torch.sort(cand.gather(1, by_id), dim=1, descending=True, stable=True)
            pick = by_id.gather(1, by_score.indices[:, :width])  # (B, W)
        else:
            pick = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :width]
        alive = valid[req, pick]  # (B, W)
        score = cand[req, pick]
        parent = parent[req, pick]
        history = history[req, parent]  # follow the surviving beams' token histories
        history[:, :, t + 1] = torch.where(alive, tok[req, pick], PAD)
        node_b = torch.where(alive, child_b[req, pick], -1)
        node_o = torch.where(alive, child_o[req, pick], -1)
        if reorder_state is not None:
            state = reorder_state(state, parent)
    alive = alive[:, :top_k]
    items = torch.where(alive, torch.where(node_b >= 0, node_b, node_o)[:, :top_k], -1)
    tokens = torch.where(alive[:, :, None], history[:, :top_k, 1:], -1)
    return items, score[:, :top_k], tokens
