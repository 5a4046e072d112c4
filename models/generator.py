"""The generator (ARG): a history encoder over ITEM positions and a small token decoder.

METHOD.md's "cheap and strong" design. Each history item enters as ONE vector, the
mask-weighted sum of the embeddings of its candidate tokens (its first L levels of each
codebook, weighted by the router's masks, plus its dedup token); a causal transformer
runs over those item positions, so the sequence length is #items, not #items x L. A
small causal transformer then decodes the next item's L + 1 tokens from the user state.

With soft masks (training) the router receives gradients from the generation loss
through the history side; with hard masks the input equals the sum of the item's L + 1
served tokens' embeddings, which is the layout the served model is fine-tuned on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.sasrec import CausalSelfAttentionBlock, SASRecConfig


@dataclass(frozen=True)
class GeneratorConfig:
    vocab_size: int  # TokenLayout.vocab_size
    budget: int  # L: every item has L + 1 tokens (L codes + 1 dedup)
    max_len: int = 50  # history items seen; generation cost grows with it
    hidden: int = 64  # matches the tuned SASRec on ML-100K-sized data
    n_layers: int = 2  # history encoder blocks
    decoder_layers: int = 1  # the decoder reads at most L + 1 positions
    n_heads: int = 2
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    def blocks_config(self) -> SASRecConfig:
        # The transformer block is shared with SASRec; only its width fields matter.
        return SASRecConfig(
            n_items=1, hidden=self.hidden, n_heads=self.n_heads, dropout=self.dropout
        )


class HistoryItems(NamedTuple):
    """A batch of histories in token form; T positions, left-padded (pad rows all zero).

    cf_tokens, sem_tokens: (B, T, L) token ids of the first L levels of each codebook.
    cf_mask, sem_mask: (B, T, L) weights of those tokens (router masks, soft or hard).
    dedup_tokens: (B, T) the dedup token of each item (0 = padding position).
    """

    cf_tokens: torch.Tensor
    sem_tokens: torch.Tensor
    cf_mask: torch.Tensor
    sem_mask: torch.Tensor
    dedup_tokens: torch.Tensor


def _causal_blocks(config: GeneratorConfig, n_layers: int) -> nn.ModuleList:
    return nn.ModuleList(CausalSelfAttentionBlock(config.blocks_config()) for _ in range(n_layers))


def _causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid: (B, T) bool -> (B, 1, T, T) attention mask; a padded query sees itself so
    no row is empty. Built from arange comparisons (not torch.eye/tril), which export to
    ONNX ops onnxruntime runs for bool tensors."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    eye = pos[:, None] == pos[None, :]  # (T, T)
    causal = pos[None, :] <= pos[:, None]  # (T, T) key <= query
    return ((causal[None] & valid[:, None, :]) | eye[None])[:, None]


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.token_emb = nn.Embedding(config.vocab_size, config.hidden, padding_idx=0)
        self.item_pos = nn.Embedding(config.max_len, config.hidden)
        self.history_blocks = _causal_blocks(config, config.n_layers)
        self.ln_history = nn.LayerNorm(config.hidden)
        self.token_pos = nn.Embedding(config.budget + 1, config.hidden)
        self.decoder_blocks = _causal_blocks(config, config.decoder_layers)
        self.ln_decoder = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.token_emb.weight.data[0].zero_()

    # --- history side ------------------------------------------------------------
    def item_inputs(self, history: HistoryItems) -> torch.Tensor:
        """(B, T, C): mask-weighted sum of each history item's token embeddings."""
        cf = (self.token_emb(history.cf_tokens) * history.cf_mask[..., None]).sum(dim=2)
        sem = (self.token_emb(history.sem_tokens) * history.sem_mask[..., None]).sum(dim=2)
        return cf + sem + self.token_emb(history.dedup_tokens)

    def encode_history(self, history: HistoryItems) -> torch.Tensor:
        """(B, T, C) user state after each history position."""
        length = history.dedup_tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(
                f"history of {length} items exceeds max_len={self.config.max_len}; "
                "keep the most recent max_len items"
            )
        valid = history.dedup_tokens != 0  # (B, T)
        positions = torch.arange(
            self.config.max_len - length, self.config.max_len, device=valid.device
        )
        x = self.item_inputs(history) * self.config.hidden**0.5 + self.item_pos(positions)[None]
        x = self.dropout(x)
        mask = _causal_mask(valid)
        for block in self.history_blocks:
            x = block(x, mask)
        return self.ln_history(x)

    # --- token decoder -----------------------------------------------------------
    def decode_logits(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Logits for the next token of an item.

        state: (N, C) user states; prefix: (N, t) the item's tokens so far, 0 <= t <= L.
        Returns (N, t + 1, V): at position j, the distribution of token j given
        state and prefix[:, :j].
        """
        length = prefix.shape[1] + 1
        x = torch.cat([state[:, None], self.token_emb(prefix)], dim=1)  # (N, t + 1, C)
        x = x + self.token_pos(torch.arange(length, device=x.device))[None]
        x = self.dropout(x)
        mask = _causal_mask(torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        for block in self.decoder_blocks:
            x = block(x, mask)
        return self.ln_decoder(x) @ self.token_emb.weight.T  # (N, t + 1, V)

    def forward(
        self, history: HistoryItems, target_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-item generation at every history position.

        target_tokens: (B, T, L + 1) the tokens of the item that follows each position
            (all 0 where there is none).
        Returns (logits (n, L + 1, V) at the n positions with a target, summed
        cross-entropy over their tokens), or, without targets, (the final user states
        (B, C), None).
        """
        states = self.encode_history(history)  # (B, T, C)
        if target_tokens is None:
            return states[:, -1], None
        has_target = target_tokens[..., 0] != 0  # (B, T)
        targets = target_tokens[has_target]  # (n, L + 1)
        logits = self.decode_logits(states[has_target], targets[:, :-1])  # (n, L + 1, V)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
        )
        return logits, loss

    @torch.no_grad()
    def user_state(self, history: HistoryItems) -> torch.Tensor:
        """(B, C) the state the decoder starts from for each request."""
        return self.encode_history(history)[:, -1]

    @torch.no_grad()
    def next_token_log_probs(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """state: (B, C), prefix: (B, W, t) beams -> (B, W, V) log-probabilities of token t.

        Recomputes the decoder over the (at most L + 1) prefix tokens: cheaper than a KV
        cache at these lengths, and stateless, so beams need no cache reordering.
        """
        batch, width, t = prefix.shape
        flat_state = state[:, None].expand(batch, width, -1).reshape(batch * width, -1)
        logits = self.decode_logits(flat_state, prefix.reshape(batch * width, t))[:, -1]
        return F.log_softmax(logits.float(), dim=-1).view(batch, width, -1)
