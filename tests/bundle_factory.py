"""A small, complete, valid bundle from RANDOM (untrained, seeded) modules, for tests.

`tiny_contents` hands random modules and a random item table to the real assembler
(`models.bundle.assemble_contents`), as an export does; `make_tiny_bundle`, the service
tests' fixture, writes them through `models.bundle.write_bundle` (ONNX graphs included)
in a few seconds on one CPU core. For benchmark-sized bundles with the shipped model
shape, see scripts/make_large_bundle.py.
External ids are "item-1" .. "item-N"; item i's categories are "cat-<i mod 4>", plus
"Comedy" when i is a multiple of 5 (`tiny_categories`); about a fifth of the items are
cold (popularity 0) and get CF codes imputed from their nearest warm item, as a real
export does.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch

from models.alignment import AlignmentConfig
from models.bundle import BundleContents, BundleExistsError, assemble_contents, write_bundle
from models.cold_start import (
    aligned_cf_vectors,
    build_imputation_index,
    nearest_warm,
    served_item_features,
)
from models.decoding import DecodingConfig
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig
from models.generator import Generator, GeneratorConfig
from models.router import Router, RouterConfig
from models.rqvae import RQVAEConfig
from models.tokens import TokenLayout, code_sequences, item_tokens, max_dedup_needed

TEXT_DIM, CF_DIM = 24, 16  # small stand-ins for MiniLM (384) and SASRec (64)
N_LEVELS, CODEBOOK = 4, 8
TEXT_MODEL_ID = "tiny-random-text-encoder;max_seq_length=128"


def tiny_categories(n_items: int) -> list[list[str]]:
    """(N + 1,) the tiny bundle's categories per row (row 0 none)."""
    return [[]] + [
        [f"cat-{i % 4}"] + (["Comedy"] if i % 5 == 0 else []) for i in range(1, n_items + 1)
    ]


def tiny_contents(
    n_items: int = 60, budget: int = 3, seed: int = 0, dedup_slack: int = 2
) -> BundleContents:
    """Random but consistent BundleContents over n_items items at token budget L, with
    `dedup_slack` spare dedup ids per code prefix for items added later."""
    if not 1 <= budget <= N_LEVELS:
        raise ValueError(f"budget must lie in [1, {N_LEVELS}], got {budget}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = n_items + 1
    tok_cfg = DualTokenizerConfig(
        sem=RQVAEConfig(TEXT_DIM, 8, (16,), N_LEVELS, CODEBOOK),
        cf=RQVAEConfig(CF_DIM, 8, (16,), N_LEVELS, CODEBOOK),
        alignment=AlignmentConfig(TEXT_DIM, CF_DIM, proj_dim=8, hidden_dim=16),
    )
    tokenizer = DualTokenizer(tok_cfg).eval()
    sem_x = torch.randn(rows, TEXT_DIM)
    cf_x = torch.randn(rows, CF_DIM)
    tokenizer.fit_standardisation(sem_x[1:], cf_x[1:])
    tokenizer.init_codebooks(sem_x[1:], cf_x[1:], generator=torch.Generator().manual_seed(seed))
    sem_codes = tokenizer.encode_sem(sem_x).numpy().astype(np.int64)
    cf_codes = tokenizer.encode_cf(cf_x).numpy().astype(np.int64)
    sem_codes[0] = cf_codes[0] = 0

    popularity = rng.integers(1, 40, size=rows).astype(np.int64)
    popularity[rng.random(rows) < 0.2] = 0
    popularity[0] = 0
    popularity[1:3] = (5, 7)  # at least two warm items: the scaler and the index need them
    warm = popularity > 0

    # Cold items: CF codes of the nearest warm item in the aligned space, as export does.
    warm_ids = np.flatnonzero(warm)
    cold_ids = np.flatnonzero(~warm)[1:]
    if cold_ids.size:
        index = build_imputation_index(aligned_cf_vectors(tokenizer, cf_codes[warm_ids]))
        cf_codes[cold_ids] = cf_codes[nearest_warm(tokenizer, sem_codes[cold_ids], index, warm_ids)]

    router = Router(RouterConfig(budget=budget)).init_slope(popularity).eval()
    with torch.no_grad():
        alpha = router(torch.as_tensor(popularity)).numpy().astype(np.float32)
        n_cf = router.hard_split(torch.as_tensor(alpha)).numpy()
    n_cf[0] = 0

    probe = TokenLayout(CODEBOOK, budget, 1)
    needed = max(
        max_dedup_needed(code_sequences(cf_codes[1:], sem_codes[1:], k, budget, probe))
        for k in range(budget + 1)
    )
    layout = TokenLayout(CODEBOOK, budget, needed + dedup_slack)
    tokens = np.zeros((rows, budget + 1), dtype=np.int64)
    tokens[1:] = item_tokens(cf_codes[1:], sem_codes[1:], n_cf[1:], budget, layout)

    generator = Generator(
        GeneratorConfig(
            vocab_size=layout.vocab_size,
            budget=budget,
            n_ids=rows,
            code_levels=budget,
            text_dim=TEXT_DIM,
            max_len=12,
            hidden=16,
            n_heads=2,
        )
    ).eval()
    for p in generator.parameters():  # larger weights than the init: peaked, distinct scores
        torch.nn.init.normal_(p, std=0.3)
    ids = np.where(warm, np.arange(rows), 0)
    text = sem_x.numpy()
    text[0] = 0.0
    features = served_item_features(
        router, layout, budget, ids, cf_codes, sem_codes, alpha, text, "cpu", padding_row=True
    )
    with torch.no_grad():
        item_vectors = generator.item_vectors(features).numpy()
    item_vectors[0] = 0.0  # padding (the random re-init above also hit padding rows)

    return assemble_contents(
        tokenizer=tokenizer,
        router=router,
        generator=generator,
        layout=layout,
        decoding=DecodingConfig(beam_width=20, dense_weight=0.5, dense_candidates=20),
        external_ids=np.array([""] + [f"item-{i}" for i in range(1, rows)]),
        sem_codes=sem_codes,
        cf_codes=cf_codes,
        item_tokens=tokens,
        n_cf=n_cf,
        alpha=alpha,
        popularity=popularity,
        item_vectors=item_vectors,
        warm=warm,
        text_model_id=TEXT_MODEL_ID,
        dataset={"name": "tiny", "fingerprint": f"tiny-seed{seed}", "n_items": n_items},
        categories=tiny_categories(n_items),
    )


def make_tiny_bundle(bundle_root: Path, n_items: int = 60, budget: int = 3, seed: int = 0) -> Path:
    """Write a tiny random bundle under bundle_root (LATEST points at it); returns its dir.

    Deterministic content for a given (n_items, budget, seed). The version carries the
    time to the second; a second call with the same content within that second would
    collide, so it is dated a second later instead (a bundle is never overwritten).
    """
    contents = tiny_contents(n_items, budget, seed)
    now = datetime.now(timezone.utc)
    for _ in range(100):
        try:
            return write_bundle(Path(bundle_root), contents, now=now)
        except BundleExistsError:
            now += timedelta(seconds=1)
    raise BundleExistsError(f"{bundle_root}: no free version for the tiny bundle")
