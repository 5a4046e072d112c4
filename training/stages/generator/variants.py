"""FlexCode variants as data: the shipped configuration and the paper's ablations.

Every variant trains the same model (`models.generator`) with the same loop; a variant
only flips the switches below. `flexcode` is exactly what `flexcode train pipeline`
exports and the service serves; `full` is the same configuration under the paper's name,
so the ablation table reads as the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

SHIPPED = "flexcode"


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table: each field is one switch of the method."""

    fixed_alpha: float | None = None  # None = learned router; 0.5 fix, 0 sid-only, 1 cf-only
    tokenizer_dir: str = "tokenizer"  # "tokenizer-no-align": the lambda_CCA = 0 twin
    budget: int = 3  # L code tokens per item (+1 dedup): GRID's best shape is 3 levels
    generative: bool = True  # False: no generative head in the loss or the score
    new_item_embedding: bool = False  # GeneratorConfig.new_item_embedding
    id_gate: bool = False  # GeneratorConfig.id_gate
    id_dropout_tail: float | None = None  # GeneratorTrainConfig.id_dropout_tail
    dropout: float | None = None  # GeneratorConfig.dropout (None: the default, 0.1)
    n_layers: int | None = None  # GeneratorConfig.n_layers (None: the default, 3)
    # Start the id table from stage A's SASRec item table (the CF embeddings the tokenizer
    # coded) instead of N(0, 0.02): the dense head starts where SASRec ended.
    id_init_from_sasrec: bool = False
    validation_gap: int = 0  # GeneratorTrainConfig.validation_gap
    history_mask: float = 0.0  # GeneratorTrainConfig.history_mask
    decoder_state_dropout: float = 0.0  # GeneratorConfig.decoder_state_dropout
    dropout_grid: tuple[float, ...] = ()  # GeneratorTrainConfig.dropout_grid
    history_profile: bool = False  # GeneratorConfig.history_profile


VARIANTS: dict[str, Variant] = {
    SHIPPED: Variant(),
    "full": Variant(),
    "fix": Variant(fixed_alpha=0.5),
    "sid-only": Variant(fixed_alpha=0.0),
    "cf-only": Variant(fixed_alpha=1.0),
    "no-align": Variant(tokenizer_dir="tokenizer-no-align"),
    # Is generation decoration? The same model trained and served without it.
    "dense-only": Variant(generative=False),
    # Candidate for the cold-start gap: a learned vector for items without an id.
    "new-item-emb": Variant(new_item_embedding=True),
    # Candidate for the tail: the router gates the id embedding as it gates CF codes.
    "id-gate": Variant(id_gate=True),
    # Another: tail items' ids dropped more often in training (0.4 down to 0.1 by rank).
    "tail-id-dropout": Variant(id_dropout_tail=0.4),
    # The generator's block dropout at 0.2, the default until 0.1 held on two stage A-C runs.
    "dropout-0.2": Variant(dropout=0.2),
    # The history encoder's two blocks, the default until the third held on two stage
    # A-C runs (the variant `layers-3` of those runs is today's `flexcode`).
    "layers-2": Variant(n_layers=2),
    # Candidate: the generator's id embeddings warm-started from SASRec's item table.
    "sasrec-id-init": Variant(id_init_from_sasrec=True),
    # Validation on contexts the model never trained on (one item per user held back from
    # stage D), so w and early stopping are chosen as test would choose them: rejected
    # (tail -0.015 over three seeds; validation still chose mixes).
    "val-gap": Variant(validation_gap=1),
    # Candidates against the generative head remembering training contexts: a fifth of
    # the history's items masked in each step; or the state dropped out (0.3) where it
    # enters the generative decoder.
    "history-mask": Variant(history_mask=0.2),
    "state-dropout": Variant(decoder_state_dropout=0.3),
    # Candidate: the dropout chosen on validation from 0.1 and 0.2 (stage D trained twice);
    # its test report has a row per rate, so one cell also measures both fixed rates.
    "dropout-choice": Variant(dropout_grid=(0.1, 0.2)),
    # Candidate: a long-term path (the running mean of the history's item vectors) beside
    # the attention, for the preferred-topic half of the synthetic law.
    "profile": Variant(history_profile=True),
    **{f"full-L{budget}": Variant(budget=budget) for budget in (2, 4, 5)},
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown FlexCode variant {name!r}; choose from {list(VARIANTS)}")
    return VARIANTS[name]
