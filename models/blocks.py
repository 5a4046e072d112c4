"""Causal transformer blocks shared by SASRec and the FlexCode generator.

Pre-norm: x + attn(ln(x)), then x + ffn(ln(x)). Two feed-forward kinds:

  gelu    Linear -> GELU -> Linear (SASRec's, the tuned baseline's block)
  swiglu  Linear -> (SiLU(gate) * value) -> Linear with 2/3 of the width, so both kinds
          have the same parameter count. The gated block is what eSASRec/LiGR found worth
          +5-7.5% NDCG over a tuned full-softmax SASRec on MovieLens (METHOD.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.config import Config, check_choice, check_positive_ints, check_range

FFN_KINDS = ("gelu", "swiglu")


@dataclass(frozen=True)
class BlockConfig(Config):
    hidden: int
    n_heads: int
    dropout: float
    ffn: str = "gelu"  # one of FFN_KINDS
    ffn_mult: int = 4  # feed-forward width = ffn_mult * hidden (2/3 of it per half for swiglu)

    def __post_init__(self) -> None:
        check_choice(self, "ffn", FFN_KINDS)
        check_positive_ints(self, "hidden", "n_heads", "ffn_mult")
        check_range(self, "dropout", 0.0, 1.0, high_open=True)
        if self.hidden % self.n_heads:
            raise ValueError(
                f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})"
            )


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.value_gate = nn.Linear(hidden, 2 * inner)
        self.out = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.value_gate(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * value)


class CausalSelfAttentionBlock(nn.Module):
    """x: (B, T, C), allowed: (B, 1, T, T) bool (True where a query may attend a key)."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.ln_attn = nn.LayerNorm(config.hidden)
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.ln_ffn = nn.LayerNorm(config.hidden)
        width = config.ffn_mult * config.hidden
        if config.ffn == "swiglu":
            self.ffn = nn.Sequential(
                SwiGLU(config.hidden, 2 * width // 3), nn.Dropout(config.dropout)
            )
        else:  # the layout SASRec's saved weights have
            self.ffn = nn.Sequential(
                nn.Linear(config.hidden, width),
                nn.GELU(),
                nn.Linear(width, config.hidden),
                nn.Dropout(config.dropout),
            )
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
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


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid: (B, T) bool -> (B, 1, T, T) attention mask: a query sees valid keys at or
    before it; a padded query sees itself, so no row is empty (an empty row gives NaN).
    Built from arange comparisons (not torch.eye/tril), which export to ONNX ops that
    onnxruntime runs for bool tensors."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    eye = pos[:, None] == pos[None, :]  # (T, T)
    causal = pos[None, :] <= pos[:, None]  # (T, T) key <= query
    return ((causal[None] & valid[:, None, :]) | eye[None])[:, None]


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) for linear and embedding weights, zero biases and padding rows."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
