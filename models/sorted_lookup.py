"""One batched lookup the decoding kernels share: find tokens among each trie node's
sorted child tokens (the prefix index's padded CSR rows), with one searchsorted."""

from __future__ import annotations

import torch


def lookup_sorted(row_tokens: torch.Tensor, row_values: torch.Tensor, query: torch.Tensor):
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
