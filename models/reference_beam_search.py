"""The reference constrained beam search: a plain per-beam search over a dict trie.

The oracle that `models.beam_search.constrained_beam_search` is checked against
(tests/models/test_beam_search.py) and timed against (scripts/bench_beam_search.py); it
lives here, outside tests/, so the benchmark does not import test code. Not used in
serving.

The reference is how constrained decoding is usually written with HF
`prefix_allowed_tokens_fn`: a dict trie, and standard beam search one request and one beam
at a time, calling the model on each beam alone. Like the kernel, it renormalises the
model's scores over each beam's allowed next tokens (a softmax restricted to the prefix's
children), so a finished item's score is log P(item). Its tie rule is the kernel's
documented one: at the last step (score desc, item id asc); before it (score desc, parent
beam rank, token asc). Scores are float32 like the kernel's but the log-sum-exp runs over a
row of another length, so they agree to ~1e-6, not bit for bit; items, their order and
their tokens must agree exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from models.tokens import BOS


def reference_trie(rows, ids) -> dict:
    """The reference's dict trie: nested {token: child}, the last token maps to the item id."""
    trie: dict = {}
    for row, item in zip(rows.tolist(), ids.tolist(), strict=True):
        node = trie
        for tok in row[:-1]:
            node = node.setdefault(tok, {})
        node[row[-1]] = item
    return trie


def _leaves(node) -> set:
    """Every item id below a dict-trie node."""
    if not isinstance(node, dict):
        return {node}
    out: set = set()
    for child in node.values():
        out |= _leaves(child)
    return out


def reference_beam_search(
    step_fn, rows, ids, batch_size, beam_width, top_k, exclude=None, trie=None, allowed=None
):
    """Per-request, per-beam constrained beam search over a dict trie.

    trie: `reference_trie(rows, ids)`, built here when None (pass it to time the search
    alone, as scripts/bench_beam_search.py does).
    allowed: optional (B, P) item ids (-1 padding), the only items request b may get: a
    candidate prefix with no allowed item below it is dropped at every step, after the
    restricted softmax (the kernel's `allowed`).
    Returns, per request, a list of (item id, float32 score, tokens tuple), best first.
    """
    if trie is None:
        trie = reference_trie(rows, ids)
    depth = rows.shape[1]

    def node_at(prefix):
        node = trie
        for tok in prefix:
            node = node[tok]
        return node

    def prefix_allowed_tokens_fn(prefix):
        return sorted(node_at(prefix))

    # (read before the loop: `allowed` names each beam's valid tokens there)
    permitted_sets = None if allowed is None else [set(a.tolist()) - {-1} for a in allowed]
    results = []
    for b in range(batch_size):
        banned = set() if exclude is None else set(exclude[b].tolist()) - {-1}
        permitted = None if permitted_sets is None else permitted_sets[b]
        beams = [(np.float32(0.0), [])]  # (score, generated tokens), best first
        for t in range(depth):
            cands = []
            for rank, (score, prefix) in enumerate(beams):
                tokens = torch.tensor([[[BOS, *prefix]]])
                logp = step_fn(tokens, None)[0][0, 0]
                allowed = prefix_allowed_tokens_fn(prefix)
                # The softmax over the allowed tokens only (NaN = forbidden, like -inf).
                vals = logp[allowed]
                vals = vals.masked_fill(vals.isnan(), -np.inf)
                if not bool((vals > -np.inf).any()):
                    continue  # every allowed token is forbidden: the beam dies
                log_p = torch.log_softmax(vals, dim=0)  # log P(token | prefix)
                for tok, val in zip(allowed, log_p.tolist(), strict=True):
                    s = np.float32(score + np.float32(val))
                    if not s > -np.inf:  # -inf, or NaN (a +inf score swamped the slice)
                        continue
                    new = [*prefix, tok]
                    if permitted is not None and not _leaves(node_at(new)) & permitted:
                        continue
                    if t == depth - 1:
                        item = node_at(new)
                        if item in banned:
                            continue
                        cands.append(((-s, item), s, new, item))
                    else:
                        cands.append(((-s, rank, tok), s, new, None))
            cands.sort(key=lambda c: c[0])
            beams = [(c[1], c[2]) for c in cands[:beam_width]]
            if t == depth - 1:
                results.append([(c[3], c[1], tuple(c[2])) for c in cands[:top_k]])
    return results
