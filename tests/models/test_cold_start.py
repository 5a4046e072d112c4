import numpy as np
import torch

from models.alignment import AlignmentConfig
from models.cold_start import (
    aligned_cf_vectors,
    build_imputation_index,
    nearest_warm,
    tokenize_new_items,
)
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig
from models.item_table import ItemTable
from models.router import Router, RouterConfig
from models.rqvae import RQVAEConfig
from models.tokens import TokenLayout, code_sequences


def random_tokenizer(levels=3, k=8, sem_dim=12, cf_dim=6) -> DualTokenizer:
    torch.manual_seed(0)
    config = DualTokenizerConfig(
        sem=RQVAEConfig(
            input_dim=sem_dim, latent_dim=4, hidden_dims=(8,), n_levels=levels, codebook_size=k
        ),
        cf=RQVAEConfig(
            input_dim=cf_dim, latent_dim=4, hidden_dims=(8,), n_levels=levels, codebook_size=k
        ),
        alignment=AlignmentConfig(sem_dim=sem_dim, cf_dim=cf_dim, proj_dim=5, hidden_dim=8),
    )
    return DualTokenizer(config).eval()


def test_nearest_warm_matches_brute_force_cosine():
    tok = random_tokenizer()
    rng = np.random.default_rng(0)
    cf_codes = rng.integers(0, 8, size=(40, 3))
    sem_codes = rng.integers(0, 8, size=(9, 3))
    ids = np.arange(100, 140)
    got = nearest_warm(
        tok, sem_codes, build_imputation_index(aligned_cf_vectors(tok, cf_codes)), ids
    )
    with torch.no_grad():
        unit = torch.nn.functional.normalize
        s = unit(tok.project_sem_codes(torch.as_tensor(sem_codes)), dim=1)
        c = unit(tok.project_cf_codes(torch.as_tensor(cf_codes)), dim=1)
    np.testing.assert_array_equal(got, ids[(s @ c.T).argmax(dim=1).numpy()])


def test_tokenize_new_items_uses_router_and_neighbour_codes():
    tok = random_tokenizer()
    rng = np.random.default_rng(1)
    table_cf = rng.integers(0, 8, size=(31, 3))
    warm_ids = np.arange(1, 31)
    index = build_imputation_index(aligned_cf_vectors(tok, table_cf[warm_ids]))
    layout = TokenLayout(codebook_size=8, n_levels=3, dedup_size=4)
    router = Router(RouterConfig(budget=3, fixed_alpha=0.5))
    emb = rng.normal(size=(5, 12)).astype(np.float32)
    out = tokenize_new_items(
        tok, router, emb, np.zeros(4, np.float32), index, warm_ids, table_cf, 3, layout
    )
    assert out.prefixes.shape == (5, 3)
    np.testing.assert_array_equal(out.n_cf, np.full(5, 2))  # round(0.5 * 3) half up
    np.testing.assert_array_equal(out.cf_codes, table_cf[out.neighbours])
    with torch.no_grad():
        expect_sem = tok.encode_sem(torch.as_tensor(emb)).numpy()
    np.testing.assert_array_equal(out.sem_codes, expect_sem)
    np.testing.assert_array_equal(
        out.prefixes, code_sequences(out.cf_codes, out.sem_codes, out.n_cf, 3, layout)
    )


def test_item_table_extend_appends_rows():
    layout = TokenLayout(codebook_size=8, n_levels=3, dedup_size=4)
    rng = np.random.default_rng(2)
    cf, sem = rng.integers(0, 8, size=(6, 3)), rng.integers(0, 8, size=(6, 3))
    table = ItemTable(cf, sem, 2, layout)
    grown = ItemTable(cf[:4], sem[:4], 2, layout)
    ids = grown.extend(cf[4:], sem[4:])
    np.testing.assert_array_equal(ids, [4, 5])
    assert torch.equal(grown.cf_tokens, table.cf_tokens)
    assert torch.equal(grown.sem_tokens, table.sem_tokens)
    assert (table.cf_tokens[0] == 0).all() and (table.sem_tokens[0] == 0).all()
