"""Recommendation = the generator's user state + constrained beam search over the index.

One function for evaluation and serving, so the served model decodes exactly as it was
measured. `generator` is anything with `user_state(HistoryItems) -> (B, C)` and
`next_token_log_probs(state, prefix) -> (B, W, V)`: the torch Generator or the ONNX one.
"""

from __future__ import annotations

from typing import Protocol

import torch

from models.beam_search import constrained_beam_search
from models.generator import HistoryItems
from models.prefix_index import DeviceIndex


class TokenGenerator(Protocol):
    def user_state(self, history: HistoryItems) -> torch.Tensor: ...

    def next_token_log_probs(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def recommend_top_k(
    generator: TokenGenerator,
    history: HistoryItems,
    index_tensors: DeviceIndex | tuple[DeviceIndex, DeviceIndex],
    beam_width: int,
    top_k: int,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """history: (B, T) histories in token form -> (item_ids (B, top_k) int64, -1 padding;
    scores (B, top_k) total log-probabilities, -inf padding), best first.

    exclude: optional (B, E) int64 item ids never to return (-1 padding); the beam needs
    a margin over top_k for them (see `constrained_beam_search`).
    """
    states = generator.user_state(history)  # (B, C)

    def step(tokens: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        # tokens carries a BOS column first; the decoder is conditioned on the state instead.
        return generator.next_token_log_probs(states, tokens[:, :, 1:]), state

    items, scores, _ = constrained_beam_search(
        step,
        index_tensors,
        batch_size=int(states.shape[0]),
        beam_width=beam_width,
        top_k=top_k,
        exclude=exclude,
    )
    return items, scores
