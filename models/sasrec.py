"""SASRec: causal self-attention over item ids (Kang & McAuley, 2018).

Our strongest plain baseline and the source of the collaborative item embeddings that
the CF codebook quantises. Trained with full-softmax cross-entropy over the catalog
(tied input/output embeddings), which beats the original BCE-with-one-negative loss by a
wide margin in published re-evaluations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int  # catalog size without the padding id 0
    max_len: int = 100  # tuned on ML-100K validation: 50-200 tie within noise, 100 is cheaper
    hidden: int = 64  # the size METHOD.md's tuned reference uses; larger overfits ML-100K
    n_layers: int = 2  # 2 blocks, as in the paper and the tuned reference
    n_heads: int = 2  # 32-d heads
    dropout: float = 0.2  # tuned (docs/method.md); 0.5 underfits at 64-d
    ffn_mult: int = 4  # feed-forward width = ffn_mult * hidden

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.ln_attn = nn.LayerNorm(config.hidden)
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.ln_ffn = nn.LayerNorm(config.hidden)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden, config.ffn_mult * config.hidden),
            nn.GELU(),
            nn.Linear(config.ffn_mult * config.hidden, config.hidden),
            nn.Dropout(config.dropout),
        )
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); allowed: (B, 1, T, T) bool, True where a query may attend a key."""
        batch, length, channels = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(channels, dim=2)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        # No dropout on attention weights: on CPU it costs a quarter of the step (a
        # Bernoulli draw per (head, query, key)) and did not change validation NDCG.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y.transpose(1, 2).reshape(batch, length, channels)
        x = x + self.resid_dropout(self.proj(y))
        return x + self.ffn(self.ln_ffn(x))


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(config) for _ in range(config.n_layers)
        )
        self.ln_out = nn.LayerNorm(config.hidden)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, T) item ids, left-padded with 0, T <= max_len -> (B, T, C) states."""
        length = seq.shape[1]
        # Positions count back from the most recent item, so a batch whose left padding
        # was trimmed (T < max_len) gets the same position ids as the untrimmed one.
        positions = torch.arange(
            self.config.max_len - length, self.config.max_len, device=seq.device
        )
        x = self.item_emb(seq) * self.config.hidden**0.5 + self.pos_emb(positions)[None]
        x = self.emb_dropout(x)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        # Keys that are padding are hidden; a padded query still sees itself, so no row
        # of the mask is empty (an empty row would give NaN).
        allowed = causal[None] & (seq != 0)[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        for block in self.blocks:
            x = block(x, allowed[:, None])
        return self.ln_out(x)

    def forward(
        self, seq: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """seq: (B, T) inputs; targets: (B, T) next items, 0 where there is none.

        Returns (logits over the catalog at the target positions (n, N + 1), summed
        cross-entropy over those positions). The loss is a SUM so the trainer can weight
        every target position equally across batches of uneven fill. Without targets,
        logits are for the last position of each row: (B, N + 1), loss None.
        """
        states = self.encode(seq)  # (B, T, C)
        if targets is None:
            return states[:, -1] @ self.item_emb.weight.T, None
        mask = targets != 0
        logits = states[mask] @ self.item_emb.weight.T  # (n, N + 1)
        logits[:, 0] = float("-inf")  # never predict padding
        loss = F.cross_entropy(logits.float(), targets[mask], reduction="sum")
        return logits, loss

    @torch.no_grad()
    def score(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded histories -> (B, N + 1) scores for the next item."""
        logits, _ = self(seq)
        return logits

    def item_embeddings(self) -> torch.Tensor:
        """(N + 1, C) the item table; row 0 is padding. The collaborative embedding."""
        return self.item_emb.weight.detach()
