"""The one assembler: trained (or random) modules and the served item table -> the
contents of a bundle, ready for `write_bundle`.

The export of a trained run (training/export.py), the tests' tiny random bundles
(tests/bundle_factory.py) and the benchmarks' large random ones
(scripts/make_large_bundle.py) all come through here, so what a bundle derives from its
inputs (the cold-start imputation index over the warm items, the budget) is derived in
one place. The caller computes the item table itself: its served tokens and vectors are
the ones it measured (stage D's layout, or a factory's random catalogue).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.bundle.format import BundleContents
from models.bundle.write import check_contents
from models.cold_start import aligned_cf_vectors, build_imputation_index
from models.decoding import DecodingConfig
from models.dual_tokenizer import DualTokenizer
from models.generator import Generator
from models.item_attributes import encode_categories
from models.router import Router
from models.tokens import TokenLayout


def assemble_contents(
    *,
    tokenizer: DualTokenizer,
    router: Router,
    generator: Generator,
    layout: TokenLayout,
    decoding: DecodingConfig,
    external_ids: np.ndarray,
    sem_codes: np.ndarray,
    cf_codes: np.ndarray,
    item_tokens: np.ndarray,
    n_cf: np.ndarray,
    alpha: np.ndarray,
    popularity: np.ndarray,
    item_vectors: np.ndarray,
    warm: np.ndarray,
    text_model_id: str,
    dataset: dict,
    metrics: dict | None = None,
    categories: Sequence[object] | None = None,
) -> BundleContents:
    """BundleContents of N items (rows 1..N, row 0 padding) at the layout's budget.

    The per-item arrays are as `BundleContents` documents them (cold items' CF codes
    already imputed, item_tokens and item_vectors the served ones). warm: (N + 1,) bool,
    the items with training interactions; the imputation index is built over their
    aligned CF projections (a new item's CF codes are copied from its nearest one there).
    dataset: {"name", "fingerprint", "n_items"}. categories: optional (N + 1,) per-row
    categories, each a list of names or a comma-separated text (the readers' `categories`
    column; row 0 ignored); None = the items have none. Write the result with `write_bundle`,
    which also exports the generator's ONNX graphs and checks them against torch.
    ValueError when there is no warm item or the arrays disagree with each other.
    """
    warm = np.asarray(warm, dtype=bool)
    imputation_ids = np.flatnonzero(warm[1:]).astype(np.int64) + 1  # row 0 is padding
    if imputation_ids.size == 0:
        raise ValueError("no warm item: the cold-start imputation index would be empty")
    cf_codes = np.asarray(cf_codes, dtype=np.int64)
    category_arrays: dict[str, np.ndarray | None] = dict.fromkeys(
        ("category_names", "category_ptr", "category_ids")
    )
    if categories is not None:
        if len(categories) != len(external_ids):
            raise ValueError(
                f"categories has {len(categories)} rows, expected {len(external_ids)} "
                "(one per item row, row 0 padding)"
            )
        names, ptr, ids = encode_categories(["", *list(categories)[1:]])
        category_arrays = {"category_names": names, "category_ptr": ptr, "category_ids": ids}
    vectors = aligned_cf_vectors(tokenizer, cf_codes[imputation_ids])  # (W, P)
    contents = BundleContents(
        tokenizer=tokenizer,
        router=router,
        generator=generator,
        layout=layout,
        budget=layout.n_levels,
        external_ids=np.asarray(external_ids, dtype=str),
        sem_codes=np.asarray(sem_codes, dtype=np.int64),
        cf_codes=cf_codes,
        item_tokens=np.asarray(item_tokens, dtype=np.int64),
        n_cf=np.asarray(n_cf, dtype=np.int64),
        alpha=np.asarray(alpha, dtype=np.float32),
        popularity=np.asarray(popularity, dtype=np.int64),
        item_vectors=np.asarray(item_vectors, dtype=np.float32),
        decoding=decoding,
        imputation_index=build_imputation_index(vectors),
        imputation_ids=imputation_ids,
        text_model_id=str(text_model_id),
        dataset=dict(dataset),
        metrics=dict(metrics or {}),
        **category_arrays,
    )
    check_contents(contents)  # here, where the caller's mistake is, not at write time
    return contents
