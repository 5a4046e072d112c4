"""The generator (ARG): one user encoder, two heads over the same item vectors.

An item is a vector composed of everything known about it (`Generator.item_vectors`):

    v_i = id_emb[id_i] + sum_l w_cf[i] tok_emb[CF level-l code of i]
                       + sum_l w_sem[i] tok_emb[SEM level-l code of i]
                       (+ text_proj(text embedding of i), optional)

with the router's gate w_cf = 2 alpha_i, w_sem = 2 (1 - alpha_i) (`models.router`; with
`GeneratorConfig.id_gate` the id embedding is scaled by w_cf too), the same in training
and serving, so the router learns from the next-item loss of every item
it routes, as a history input and as a target.

An item without an id of its own (a cold item, or one added at serving time) has id 0,
whose embedding is zero, so it is written by its codes (and text) alone. Training drops
whole items' ids at random (`id_dropout`) so that id-free path is trained too.

A causal transformer over the history's item vectors gives the user state h. Two heads
read it:

  dense head       log-softmax over the catalogue of h . v_i (tied with the inputs,
                   like SASRec): precise on items with many interactions.
  generative head  a small causal decoder that writes the next item's L + 1 tokens (its
                   router layout of CF and SEM codes, then a dedup token); each step's
                   softmax is restricted to the valid next tokens of the prefix index
                   (`models.beam_search.sequence_log_probs`), so the summed token
                   log-probs are log P(item). It ranks by shared code prefixes, so tail
                   and new items borrow strength from their neighbours, and it is what
                   constrained beam search decodes at serving time.

The served score mixes both (`models.decoding`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import BlockConfig, CausalSelfAttentionBlock, causal_mask, init_weights
from models.config import Config, check_positive_ints, check_range
from models.path_tables import PathTables
from models.tokens import CF, PAD, SEM, TokenLayout

# (states (n, C), targets (n,), item vectors (R, C)) -> the summed dense-head loss.
DenseLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GeneratorConfig(Config):
    vocab_size: int  # TokenLayout.vocab_size
    budget: int  # L: every item is written with L + 1 tokens (L codes + 1 dedup)
    n_ids: int  # rows of the id table: N + 1 (row 0 = no id); items added later get id 0
    code_levels: int  # levels of EACH codebook an item vector sums
    text_dim: int = 0  # width of the text embedding projected into item vectors; 0 = none
    max_len: int = 100  # history items seen: SASRec's window (200 scored lower on validation)
    hidden: int = 64  # the tuned SASRec's width on ML-100K-sized data
    # History encoder blocks: 3 beat 2 on two stage A-C runs (+0.0046 NDCG@10 pooled, tail
    # +0.0074; BENCHMARKS.md, "Two more stage A-C runs"); SASRec with 3 was level.
    n_layers: int = 3
    decoder_layers: int = 1  # the decoder reads at most L + 1 positions
    n_heads: int = 2
    # 0.1: level with 0.2 overall and ahead on the tail on three stage A-C runs
    # (BENCHMARKS "The generator's dropout at 0.1"); SASRec's 0.2 was tuned separately.
    dropout: float = 0.1
    ffn: str = "swiglu"  # gated blocks (models.blocks); "gelu" is SASRec's
    # A learned vector added to every item WITHOUT an id (new items, cold items, training's
    # id-dropped items): it stands in for the id embedding, which is where warm items'
    # popularity lives, so id-free items can earn their share of the dense head's mass.
    new_item_embedding: bool = False
    # Gate the id embedding by the router's CF weight (2 alpha_i) as the CF codes are:
    # a popular item leans on its id, a tail item (whose id was trained on few targets)
    # on its shared codes and text. False: the id enters with weight 1.
    id_gate: bool = False
    # Dropout on the user state where it enters the generative decoder only (training;
    # the dense head reads the state undropped): a candidate against the generative head
    # leaning on remembered contexts (BENCHMARKS "Does the generative head add to the
    # dense one?"). 0 = off.
    decoder_state_dropout: float = 0.0
    # A long-term path beside the attention: the running mean of the history's item
    # vectors, projected, joins the encoder's output before its final norm. On synthetic
    # data the next item follows the last item's topic (short term) or one of the user's
    # preferred topics (long term), and SASRec ranks like a model of the first alone
    # (BENCHMARKS "How far from the ceiling"). False: attention only.
    history_profile: bool = False

    def __post_init__(self) -> None:
        check_positive_ints(
            self, "vocab_size", "budget", "n_ids", "code_levels", "max_len", "hidden"
        )
        check_range(self, "decoder_state_dropout", 0.0, 1.0, high_open=True)
        self.block_config()  # validates ffn and heads

    def block_config(self) -> BlockConfig:
        return BlockConfig(self.hidden, self.n_heads, self.dropout, self.ffn)


class ItemFeatures(NamedTuple):
    """What item vectors are composed of, for R item rows (row 0 = padding).

    ids: (R,) int64 id-table row, 0 for items without an id of their own.
    cf_tokens, sem_tokens: (R, code_levels) int64 vocabulary ids of the first levels of
        each codebook (row 0: PAD tokens).
    cf_weight, sem_weight: (R, code_levels) float weights of those levels (the router's
        gate, `Router.code_weights`), or None for weight 1 everywhere.
    text: (R, text_dim) float32 text embeddings, or None when the config has text_dim 0.
    """

    ids: torch.Tensor
    cf_tokens: torch.Tensor
    sem_tokens: torch.Tensor
    cf_weight: torch.Tensor | None = None
    sem_weight: torch.Tensor | None = None
    text: torch.Tensor | None = None

    @classmethod
    def from_codes(
        cls,
        layout: TokenLayout,
        levels: int,
        ids: np.ndarray,
        cf_codes: np.ndarray,
        sem_codes: np.ndarray,
        text: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        padding_row: bool = False,
    ) -> ItemFeatures:
        """Features of M items from their (M, >= levels) codes of each codebook, without
        weights. padding_row: row 0 is a catalogue's padding (PAD tokens, zero text)."""
        level = np.arange(levels)[None, :]
        cf_tok = layout.code_token(CF, level, np.asarray(cf_codes)[:, :levels])
        sem_tok = layout.code_token(SEM, level, np.asarray(sem_codes)[:, :levels])
        if text is not None:
            text = np.array(text, dtype=np.float32)
        if padding_row:
            cf_tok[0] = sem_tok[0] = PAD
            if text is not None:
                text[0] = 0.0
        return cls(
            ids=torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device),
            cf_tokens=torch.as_tensor(cf_tok, device=device),
            sem_tokens=torch.as_tensor(sem_tok, device=device),
            text=None if text is None else torch.as_tensor(text, device=device),
        )

    def weighted(self, weights: tuple[torch.Tensor, torch.Tensor]) -> ItemFeatures:
        """The same features with (cf_weight, sem_weight), e.g. `Router.code_weights`."""
        return self._replace(cf_weight=weights[0], sem_weight=weights[1])

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(*(None if x is None else x.to(device) for x in self))

    def rows(self, index: torch.Tensor) -> ItemFeatures:
        return ItemFeatures(*(None if x is None else x[index] for x in self))


def running_mean(history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, C) item vectors, (B, T) valid -> (B, T, C) the mean of the valid vectors up
    to each position (zero before the first)."""
    weight = valid.to(history.dtype)[..., None]
    total = torch.cumsum(history * weight, dim=1)
    return total / torch.cumsum(weight, dim=1).clamp(min=1.0)


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config.hidden
        self.id_emb = nn.Embedding(config.n_ids, c, padding_idx=0)
        self.token_emb = nn.Embedding(config.vocab_size, c, padding_idx=0)  # input codes
        self.text_proj = nn.Linear(config.text_dim, c, bias=False) if config.text_dim else None
        self.new_item = nn.Parameter(torch.zeros(c)) if config.new_item_embedding else None
        self.item_pos = nn.Embedding(config.max_len, c)
        blocks = config.block_config()
        self.history_blocks = nn.ModuleList(
            CausalSelfAttentionBlock(blocks) for _ in range(config.n_layers)
        )
        self.profile = nn.Linear(c, c, bias=False) if config.history_profile else None
        self.ln_history = nn.LayerNorm(c)
        self.token_pos = nn.Embedding(config.budget + 1, c)
        self.decoder_blocks = nn.ModuleList(
            CausalSelfAttentionBlock(blocks) for _ in range(config.decoder_layers)
        )
        self.ln_decoder = nn.LayerNorm(c)
        # Output token embeddings of their own: an input code embedding says what an item
        # IS, an output one what the user wants NEXT at that step of the tree.
        self.token_out = nn.Embedding(config.vocab_size, c)
        self.dropout = nn.Dropout(config.dropout)
        self.state_dropout = nn.Dropout(config.decoder_state_dropout)
        self.apply(init_weights)

    def init_id_embeddings(self, table: np.ndarray | torch.Tensor) -> None:
        """Start the id table from an (n_ids, hidden) table (row 0 stays the zero "no id"
        row), e.g. SASRec's trained item embeddings."""
        table = torch.as_tensor(np.asarray(table, dtype=np.float32))
        if tuple(table.shape) != tuple(self.id_emb.weight.shape):
            raise ValueError(
                f"id table of shape {tuple(table.shape)} for an id embedding of shape "
                f"{tuple(self.id_emb.weight.shape)} (the generator's hidden must be SASRec's)"
            )
        with torch.no_grad():
            self.id_emb.weight.copy_(table.to(self.id_emb.weight.device))
            self.id_emb.weight[0].zero_()

    # --- training ------------------------------------------------------------------
    def forward(
        self,
        seq: torch.Tensor,
        targets: torch.Tensor,
        features: ItemFeatures,
        paths: PathTables | None,
        id_keep: torch.Tensor | None = None,
        dense_loss: DenseLoss | None = None,
        history_keep: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Next-item losses at every history position.

        seq: (B, T) item rows, left-padded with 0; targets: (B, T) the row that follows
        each position (0 where none); features: the catalogue's ItemFeatures; paths: the
        PathTables of every row's served tokens (the current layout).
        Returns SUMMED losses over the n target positions (the trainer divides by a
        constant, so every target weighs the same): {"dense": cross-entropy of the dense
        head, "generative": -log P_gen(target) under the restricted softmax, absent when
        paths is None (a model trained without its generative head)}.
        dense_loss: the dense head's loss from (states (n, C), targets (n,), item vectors
        (R, C)), e.g. `models.sampled_softmax.SampledSoftmax` on large catalogues; None:
        the full softmax over all R rows.
        history_keep: optional (B, T) float 0/1, training's history masking: a 0 position
        enters the encoder as a zero item vector (its position embedding only), so no
        context is seen verbatim twice; its target is still predicted.
        """
        table = self.item_vectors(features, id_keep)  # (R, C)
        history = table[seq]
        if history_keep is not None:
            history = history * history_keep[..., None]
        states = self.encode(history, seq != 0)  # (B, T, C)
        has_target = targets != 0
        state, target = states[has_target], targets[has_target]  # (n, C), (n,)
        if dense_loss is not None:
            losses = {"dense": dense_loss(state, target, table)}
        else:
            logits = state @ table.T  # (n, R)
            logits[:, 0] = float("-inf")
            losses = {"dense": F.cross_entropy(logits.float(), target, reduction="sum")}
        if paths is not None:
            losses["generative"] = -self.path_log_probs(state, target, paths).sum()
        return losses

    def path_log_probs(
        self, state: torch.Tensor, rows: torch.Tensor, paths: PathTables
    ) -> torch.Tensor:
        """Teacher forcing along rows' own paths: state (n, C), rows (n,) -> (n, L + 1)
        log P(token k | its prefix), the softmax over the node's children only."""
        node, slot = paths.node[rows], paths.slot[rows]  # (n, D)
        # The deepest node's prefix is the row's first D - 1 tokens.
        tokens = paths.prefixes[-1][node[:, -1]]  # (n, D - 1)
        # One (n, D, V) matrix product, then each node's children's columns: cheaper than
        # gathering (n, W_k, C) output embeddings, whose backward is a large scatter.
        logits = self.decode(state, tokens).float()  # (n, D, V)
        out = []
        for k in range(paths.depth):
            kids = paths.children[k][node[:, k]]  # (n, W_k)
            picked = logits[:, k].gather(1, kids.clamp(min=0)).masked_fill(kids < 0, float("-inf"))
            out.append(torch.log_softmax(picked, dim=1).gather(1, slot[:, k : k + 1])[:, 0])
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def all_rows_log_probs(self, state: torch.Tensor, paths: PathTables) -> torch.Tensor:
        """log P_gen of EVERY row for B users: (B, C) -> (B, R), -inf for rows outside the
        tables. The decoder runs once over each deepest node's prefix (its states on the
        way are the shallower nodes'), and only each node's children are scored."""
        batch, n_rows = state.shape[0], paths.node.shape[0]
        rows = torch.nonzero(paths.node[:, 0] >= 0).squeeze(1)
        deepest = paths.prefixes[-1]  # (G, D - 1)
        groups = deepest.shape[0]
        flat = state[:, None].expand(batch, groups, -1).reshape(batch * groups, -1)
        hidden = self.decode_hidden(flat, deepest.repeat(batch, 1)).view(
            batch, groups, paths.depth, -1
        )
        total = torch.zeros(batch, rows.shape[0], device=state.device)
        for k in range(paths.depth):
            at_k = hidden[:, paths.below[k], k]  # (B, G_k, C) the state at each depth-k node
            kids = paths.children[k]  # (G_k, W_k)
            logits = torch.einsum("bgc,gwc->bgw", at_k, self.token_out(kids.clamp(min=0)))
            log_p = torch.log_softmax(logits.float().masked_fill(kids[None] < 0, float("-inf")), 2)
            total += log_p[:, paths.node[rows, k], paths.slot[rows, k]]
        out = torch.full((batch, n_rows), float("-inf"), device=state.device)
        out[:, rows] = total
        return out

    # --- items -------------------------------------------------------------------
    def item_vectors(
        self, features: ItemFeatures, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(R, C) item vectors (module docstring). A padding row (id 0, PAD tokens, zero
        text, as row 0 of every table) is zero: padding_idx rows and a bias-free projection.

        id_keep: optional (R,) float 0/1, training's id dropout: a 0 row is written
        without its id embedding everywhere it appears in the step (input and target)."""
        ids = self.id_emb(features.ids)
        if self.config.id_gate and features.cf_weight is not None:
            ids = ids * features.cf_weight[:, :1]  # 2 alpha_i, the same for every CF level
        if id_keep is not None:
            ids = ids * id_keep[:, None]
        if self.new_item is not None:
            has_id = (features.ids != 0).to(ids.dtype)
            if id_keep is not None:
                has_id = has_id * id_keep
            padding = (features.cf_tokens[:, 0] == PAD).to(ids.dtype)  # stays zero
            ids = ids + ((1.0 - has_id) * (1.0 - padding))[:, None] * self.new_item
        cf = self.token_emb(features.cf_tokens)  # (R, levels, C)
        sem = self.token_emb(features.sem_tokens)
        if features.cf_weight is not None:
            cf = cf * features.cf_weight[..., None]
        if features.sem_weight is not None:
            sem = sem * features.sem_weight[..., None]
        vectors = ids + cf.sum(1) + sem.sum(1)
        if self.text_proj is not None:
            if features.text is None:
                raise ValueError("this generator projects text embeddings: pass features.text")
            vectors = vectors + self.text_proj(features.text.float())
        return vectors

    # --- user state --------------------------------------------------------------
    def encode(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """history: (B, T, C) the history's item vectors, left-padded; valid: (B, T) bool
        -> (B, T, C) the user state after each position."""
        length = history.shape[1]
        if length > self.config.max_len:
            raise ValueError(
                f"history of {length} items exceeds max_len={self.config.max_len}; "
                "keep the most recent max_len items"
            )
        # Positions count back from the most recent item (as SASRec's), so trimmed
        # left padding does not shift them.
        positions = torch.arange(
            self.config.max_len - length, self.config.max_len, device=valid.device
        )
        x = history * self.config.hidden**0.5 + self.item_pos(positions)[None]
        x = self.dropout(x)
        mask = causal_mask(valid)
        for block in self.history_blocks:
            x = block(x, mask)
        if self.profile is not None:
            x = x + self.dropout(self.profile(running_mean(history, valid)))
        return self.ln_history(x)

    @torch.no_grad()
    def user_state(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, C) history item vectors, (B, T) valid -> (B, C) the state after the last."""
        return self.encode(history, valid)[:, -1]

    # --- heads -------------------------------------------------------------------
    def decode(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """state: (N, C); prefix: (N, t) the item's first t tokens, 0 <= t <= L ->
        (N, t + 1, V) logits: at position j, of token j given state and prefix[:, :j]."""
        return self.decode_hidden(state, prefix) @ self.token_out.weight.T

    def decode_hidden(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """`decode` before the output projection: (N, t + 1, C). The logit of token v is
        the dot product with token_out.weight[v], so scoring only a node's children
        needs only their rows."""
        length = prefix.shape[1] + 1
        state = self.state_dropout(state)
        x = torch.cat([state[:, None], self.token_emb(prefix)], dim=1)  # (N, t + 1, C)
        x = x + self.token_pos(torch.arange(length, device=x.device))[None]
        x = self.dropout(x)
        mask = causal_mask(torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        for block in self.decoder_blocks:
            x = block(x, mask)
        return self.ln_decoder(x)

    # Decoding reads *_scores: logits, which are log-probs up to a constant per position.
    # The decoder renormalises them over each prefix's valid children (the restricted
    # softmax), so the whole-vocabulary log-softmax would be a wasted pass over the
    # largest tensors of a request. *_log_probs are the normalised versions.

    @torch.no_grad()
    def next_token_scores(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """state: (B, C), prefix: (B, W, t) beams -> (B, W, V) float logits of token t
        over the whole vocabulary.

        Recomputes the decoder over the (at most L + 1) prefix tokens: cheaper than a KV
        cache at these lengths, and stateless, so beams need no cache reordering."""
        batch, width, t = prefix.shape
        flat_state = state[:, None].expand(batch, width, -1).reshape(batch * width, -1)
        # Only the last position is projected onto the vocabulary: the projection is the
        # step's largest product, and the earlier positions' logits are not needed.
        hidden = self.decode_hidden(flat_state, prefix.reshape(batch * width, t))[:, -1]
        return (hidden @ self.token_out.weight.T).float().view(batch, width, -1)

    @torch.no_grad()
    def next_token_log_probs(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """`next_token_scores` log-softmaxed over the whole vocabulary."""
        return F.log_softmax(self.next_token_scores(state, prefix), dim=-1)

    @torch.no_grad()
    def token_scores(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: state (B, C), tokens (B, M, L + 1) candidate items ->
        (B, M, L + 1, V) float logits of each token given the ones before it (whole
        vocabulary; `models.beam_search.sequence_log_probs` restricts them)."""
        batch, m, depth = tokens.shape
        flat_state = state[:, None].expand(batch, m, -1).reshape(batch * m, -1)
        logits = self.decode(flat_state, tokens.reshape(batch * m, depth)[:, :-1])
        return logits.float().view(batch, m, depth, -1)

    @torch.no_grad()
    def token_log_probs(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """`token_scores` log-softmaxed over the whole vocabulary."""
        return F.log_softmax(self.token_scores(state, tokens), dim=-1)

    @staticmethod
    def dense_log_probs(state: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """(B, C) states, (R, C) item vectors -> (B, R) log P_dense(item); row 0 (padding)
        is -inf."""
        logits = state.float() @ item_vectors.float().T
        logits[:, 0] = float("-inf")
        return F.log_softmax(logits, dim=-1)
