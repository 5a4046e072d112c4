"""SASRec: causal self-attention over item ids (Kang & McAuley, 2018).

Our strongest plain baseline and the source of the collaborative item embeddings that
the CF codebook quantises. Trained with full-softmax cross-entropy over the catalog
(tied input/output embeddings), which beats the original BCE-with-one-negative loss by a
wide margin in published re-evaluations; on large catalogs the trainer swaps in the
sampled softmax (`models.sampled_softmax`) over `target_states`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import BlockConfig, CausalSelfAttentionBlock, causal_mask, init_weights
from models.config import Config, check_positive_ints, check_range


@dataclass(frozen=True)
class SASRecConfig(Config):
    n_items: int  # catalog size without the padding id 0
    max_len: int = 100  # tuned on ML-100K validation: 50-200 tie within noise, 100 is cheaper
    hidden: int = 64  # the size METHOD.md's tuned reference uses; larger overfits ML-100K
    n_layers: int = 2  # 2 blocks, as in the paper and the tuned reference
    n_heads: int = 2  # 32-d heads
    dropout: float = 0.2  # tuned (docs/method.md); 0.5 underfits at 64-d
    ffn_mult: int = 4  # feed-forward width = ffn_mult * hidden
    # "gelu" (the paper's block) or "swiglu" (the gated block FlexCode's user encoder uses;
    # eSASRec/LiGR report +5-7.5% for it on MovieLens): BENCHMARKS.md measures both.
    ffn: str = "gelu"
    # The id + content variant (the honest cold-start peer, METHOD.md): an item's input
    # and output vector is its id embedding plus a projection of its text embedding, and
    # training drops a share of ids so the text-only path ranks too. 0 = plain SASRec.
    text_dim: int = 0
    id_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_positive_ints(self, "n_items", "max_len", "hidden", "n_layers", "n_heads", "ffn_mult")
        check_range(self, "dropout", 0.0, 1.0, high_open=True)
        check_range(self, "text_dim", 0, integer=True)
        check_range(self, "id_dropout", 0.0, 1.0)
        self.block_config()  # hidden divisible by n_heads

    def block_config(self) -> BlockConfig:
        return BlockConfig(self.hidden, self.n_heads, self.dropout, self.ffn, self.ffn_mult)


class SASRec(nn.Module):
    """text: (N + 1, text_dim) item text embeddings when config.text_dim > 0; id_rows:
    (N + 1,) the id row of each item (0 = no trained id, e.g. a cold item), default all."""

    def __init__(
        self,
        config: SASRecConfig,
        text: torch.Tensor | None = None,
        id_rows: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.text_proj = None
        if config.text_dim:
            if text is None or tuple(text.shape) != (config.n_items + 1, config.text_dim):
                raise ValueError(f"SASRec with text_dim={config.text_dim} needs (N + 1, D) text")
            self.text_proj = nn.Linear(config.text_dim, config.hidden, bias=False)
            self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32))
            rows = torch.arange(config.n_items + 1) if id_rows is None else id_rows
            self.register_buffer("id_rows", torch.as_tensor(rows, dtype=torch.int64))
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(config.block_config()) for _ in range(config.n_layers)
        )
        self.ln_out = nn.LayerNorm(config.hidden)
        self.apply(init_weights)

    def item_table(self) -> torch.Tensor:
        """(N + 1, C) input and output item vectors: the id embeddings, plus the text
        projection (with training's id dropout) in the id + content variant."""
        if self.text_proj is None:
            return self.item_emb.weight
        ids = self.item_emb(self.id_rows)
        if self.training and self.config.id_dropout > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.id_dropout
            ids = ids * keep
        table = ids + self.text_proj(self.text)
        return table * (torch.arange(table.shape[0], device=table.device) != 0)[:, None]

    def encode(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """seq: (B, T) item ids, left-padded with 0, T <= max_len -> (B, T, C) states.
        table: the step's `item_table()` (computed here when None)."""
        length = seq.shape[1]
        # Positions count back from the most recent item, so a batch whose left padding
        # was trimmed (T < max_len) gets the same position ids as the untrimmed one.
        positions = torch.arange(
            self.config.max_len - length, self.config.max_len, device=seq.device
        )
        table = self.item_table() if table is None else table
        x = table[seq] * self.config.hidden**0.5 + self.pos_emb(positions)[None]
        x = self.emb_dropout(x)
        allowed = causal_mask(seq != 0)  # padding keys hidden
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_out(x)

    def target_states(
        self, seq: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """seq, targets: (B, T) as in `forward` -> (states (n, C), targets (n,), the
        step's item table (N + 1, C)) at the n positions that have a target: what a loss
        other than the full softmax needs."""
        table = self.item_table()  # one id-dropout draw per step
        states = self.encode(seq, table)  # (B, T, C)
        mask = targets != 0
        return states[mask], targets[mask], table

    def forward(
        self, seq: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """seq: (B, T) inputs; targets: (B, T) next items, 0 where there is none.

        Returns (logits over the catalog at the target positions (n, N + 1), summed
        cross-entropy over those positions). The loss is a SUM so the trainer can weight
        every target position equally across batches of uneven fill. Without targets,
        logits are for the last position of each row: (B, N + 1), loss None.
        """
        table = self.item_table()  # (N + 1, C), one id-dropout draw per step
        states = self.encode(seq, table)  # (B, T, C)
        if targets is None:
            return states[:, -1] @ table.T, None
        mask = targets != 0
        logits = states[mask] @ table.T  # (n, N + 1)
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
