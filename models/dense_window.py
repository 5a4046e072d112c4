"""A nearly full level read as windows of the vocabulary: no token gather at depth 1.

At depth 1 of a large catalogue every node has almost a whole codebook block of children
(458 of K = 512 at 1M items, shipped shape), all tokens of one block: a node's children
lie in one run of S consecutive token ids, its WINDOW. Reading the step's scores there is
a copy of S consecutive floats per beam, taken through an unfolded view of the (B, W, V)
scores (a row per start offset, no copy) with one `index_select`; an additive mask (0 at
the node's children, -inf elsewhere) then leaves exactly the padded read's valid scores.
The padded read instead builds (B, W, W_k) int64 token indices (widened from int16,
clamped, then gathered at random): at 1M items those passes cost more than the window's
extra S - W_k slots (scripts/bench_beam_search.py; BENCHMARKS.md, "depth 1 through
windows"). Candidates keep the padded read's order (a beam's tokens ascending), so ties
resolve alike. Items added at serving time (an overlay trie) are read into their places
in the base node's window (`overlay_offsets`), so before and after the background merge
a beam's scores are laid out, and rounded, the same way.

`window_arrays` decides and builds (NumPy, with the index); `DenseWindow` is what the
kernel reads. A level gets a window only when its nodes fill it (S <= W_k / WINDOW_FILL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# A window is used when the level's widest node's children fill at least this share of
# the widest window: below it the padded read touches fewer slots (10k and 100k items in
# the shipped shape: 21 and 118 children per node against S = 512 tokens).
WINDOW_FILL = 0.8


def window_arrays(
    tokens: np.ndarray, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A padded level's (n + 1, W) child tokens (ascending per row, -1 padding, the last
    row the padding row) -> (start (n + 1,) int64, mask (n + 1, S) float32, slot (n + 1, S)
    int64), or None when the nodes do not fill their windows (WINDOW_FILL).

    Row r's window is tokens start[r] .. start[r] + S - 1, start[r] <= V - S (so a window
    of the last beam's scores ends inside the tensor); mask is 0 at its children, -inf
    elsewhere; slot is each child's slot in the padded row, -1 elsewhere. The padding row
    reads an all -inf window.
    """
    valid = tokens >= 0
    width = tokens.shape[1]
    if tokens.shape[0] < 2 or not valid[:-1].any(axis=1).all():
        return None
    low = np.where(valid, tokens, vocab_size).min(axis=1)
    high = np.where(valid, tokens, -1).max(axis=1)
    span = int((high - low)[:-1].max()) + 1
    if span > vocab_size or span * WINDOW_FILL > width:
        return None
    start = np.minimum(low, vocab_size - span)
    start[-1] = 0  # the padding row: nothing valid anywhere in its window
    mask = np.full((tokens.shape[0], span), -np.inf, dtype=np.float32)
    slot = np.full((tokens.shape[0], span), -1, dtype=np.int64)
    row, col = np.nonzero(valid)
    mask[row, tokens[row, col] - start[row]] = 0.0
    slot[row, tokens[row, col] - start[row]] = col
    return start.astype(np.int64), mask, slot


@dataclass(frozen=True)
class DenseWindow:
    """One level's windows on a device (`window_arrays`): start (n + 1,) int64, mask
    (n + 1, S) float, slot (n + 1, S) narrow int."""

    start: torch.Tensor
    mask: torch.Tensor
    slot: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.mask.shape[1])

    def scores(
        self,
        logits: torch.Tensor,
        rows: torch.Tensor,
        extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, W, V) contiguous scores, (B, W) row ids -> (B, W, S) the scores of each
        row's window, -inf at its non-children (a new tensor). extra: (tokens, offsets),
        (B * W, E) each, more children per beam (an overlay's, `overlay_offsets`; offset
        -1 = none) whose scores are read in too."""
        batch, width, vocab = logits.shape
        size = self.size
        flat_rows = rows.reshape(-1)
        first = torch.arange(batch * width, device=rows.device) * vocab
        first = first + self.start.index_select(0, flat_rows)
        # Row p of the unfolded view is the S floats from flat offset p: no copy until
        # index_select reads the B * W windows.
        windows = logits.view(-1).unfold(0, size, 1).index_select(0, first)
        windows.add_(self.mask.index_select(0, flat_rows))
        if extra is not None:
            tokens, offsets = extra
            beam, j = torch.nonzero(offsets >= 0, as_tuple=True)
            windows[beam, offsets[beam, j]] = logits.view(-1, vocab)[beam, tokens[beam, j]]
        return windows.view(batch, width, size)

    def overlay_offsets(
        self, rows: torch.Tensor, has_node: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor | None:
        """Where an overlay's children fall in the base rows' windows: (M,) base row ids,
        (M,) whether the beam has a base node, (M, E) the overlay node's child tokens (-1
        padding) -> (M, E) offsets (-1 for padding), or None when some child has no place
        (its beam has no base node, or it lies outside the window): the caller then reads
        the padded tables. Read through the window, the union of both tries' children is
        laid out as the merged index lays it out, so the scores are the merged index's bit
        for bit (as long as the merge keeps the level's window geometry)."""
        offsets = tokens - self.start.index_select(0, rows)[:, None]
        real = tokens >= 0
        fits = (offsets >= 0) & (offsets < self.size) & has_node[:, None]
        if bool((real & ~fits).any()):
            return None
        return torch.where(real, offsets, -1)

    def token_at(self, rows: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Row ids and window offsets of one shape -> the token there (int64)."""
        return self.start[rows] + offset

    def slot_at(self, rows: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Row ids and window offsets of one shape -> the child's slot in the padded
        row (int64; -1 where the offset holds no child)."""
        return self.slot.view(-1)[rows * self.size + offset].long()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.start, self.mask, self.slot
