import numpy as np
import pytest
import torch

from models import cold_start
from models.alignment import AlignmentConfig
from models.cold_start import (
    ColdStart,
    aligned_cf_vectors,
    aligned_sem_vectors,
    build_imputation_index,
    nearest_warm,
    served_item_features,
)
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig
from models.generator import Generator, GeneratorConfig
from models.router import Router, RouterConfig
from models.rqvae import RQVAEConfig
from models.tokens import CF, SEM, TokenLayout, code_sequences

LEVELS, K, SEM_DIM, CF_DIM = 3, 8, 12, 6
LAYOUT = TokenLayout(codebook_size=K, n_levels=LEVELS, dedup_size=4)


def random_tokenizer(levels=LEVELS, k=K, sem_dim=SEM_DIM, cf_dim=CF_DIM) -> DualTokenizer:
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


def brute_force_nearest(tok, sem_codes, cf_codes, ids) -> np.ndarray:
    with torch.no_grad():
        unit = torch.nn.functional.normalize
        s = unit(tok.project_sem_codes(torch.as_tensor(sem_codes)), dim=1)
        c = unit(tok.project_cf_codes(torch.as_tensor(cf_codes)), dim=1)
    return ids[(s @ c.T).argmax(dim=1).numpy()]


def test_nearest_warm_matches_brute_force_cosine():
    tok = random_tokenizer()
    rng = np.random.default_rng(0)
    cf_codes = rng.integers(0, 8, size=(40, 3))
    sem_codes = rng.integers(0, 8, size=(9, 3))
    ids = np.arange(100, 140)
    got = nearest_warm(
        tok, sem_codes, build_imputation_index(aligned_cf_vectors(tok, cf_codes)), ids
    )
    np.testing.assert_array_equal(got, brute_force_nearest(tok, sem_codes, cf_codes, ids))
    assert nearest_warm(tok, sem_codes[:0], build_imputation_index(np.eye(3)), ids).shape == (0,)
    with pytest.raises(ValueError):
        build_imputation_index(np.zeros((0, 5)))


def test_aligned_vectors_are_the_same_in_batches(monkeypatch):
    """Large catalogues are projected PROJECTION_BATCH rows at a time; the vectors do not
    depend on the batching, and an empty input still gives (0, P)."""
    tok = random_tokenizer()
    rng = np.random.default_rng(3)
    codes = rng.integers(0, K, size=(23, LEVELS))
    whole_cf, whole_sem = aligned_cf_vectors(tok, codes), aligned_sem_vectors(tok, codes)
    monkeypatch.setattr(cold_start, "PROJECTION_BATCH", 5)
    np.testing.assert_allclose(aligned_cf_vectors(tok, codes), whole_cf, rtol=0, atol=1e-6)
    np.testing.assert_allclose(aligned_sem_vectors(tok, codes), whole_sem, rtol=0, atol=1e-6)
    assert aligned_cf_vectors(tok, codes[:0]).shape == (0, whole_cf.shape[1])


def make_cold_start(router: Router, text_dim: int = SEM_DIM, seed: int = 1):
    """A ColdStart over a random catalogue of 30 warm items (rows 1..30 of the CF table)."""
    tok = random_tokenizer()
    rng = np.random.default_rng(seed)
    table_cf = rng.integers(0, K, size=(31, LEVELS))
    table_cf[0] = 0
    warm_ids = np.arange(1, 31)
    index = build_imputation_index(aligned_cf_vectors(tok, table_cf[warm_ids]))
    torch.manual_seed(seed)
    generator = Generator(
        GeneratorConfig(
            vocab_size=LAYOUT.vocab_size,
            budget=LEVELS,
            n_ids=31,
            code_levels=LEVELS,
            text_dim=text_dim,
            hidden=16,
            n_heads=2,
        )
    ).eval()
    return ColdStart(
        tokenizer=tok,
        router=router.eval(),
        generator=generator,
        layout=LAYOUT,
        budget=LEVELS,
        imputation_index=index,
        imputation_ids=warm_ids,
        cf_codes_table=table_cf,
    )


def manual_vectors(gen: Generator, cf_codes, sem_codes, alpha, text) -> torch.Tensor:
    """Item vectors without an id: every CF level's input embedding weighted 2 * alpha,
    every SEM level's 2 * (1 - alpha), plus the projected text."""
    rows = []
    with torch.no_grad():
        for i in range(len(alpha)):
            v = torch.zeros(gen.config.hidden)
            for level in range(LEVELS):
                cf_tok = int(LAYOUT.code_token(CF, level, cf_codes[i, level]))
                sem_tok = int(LAYOUT.code_token(SEM, level, sem_codes[i, level]))
                v += 2 * float(alpha[i]) * gen.token_emb.weight[cf_tok]
                v += 2 * (1 - float(alpha[i])) * gen.token_emb.weight[sem_tok]
            if text is not None:
                v += gen.text_proj(torch.as_tensor(text[i], dtype=torch.float32))
            rows.append(v)
    return torch.stack(rows)


def test_tokenize_a_cold_item():
    counts = np.r_[0, np.arange(1, 31)]
    cold = make_cold_start(Router(RouterConfig(budget=LEVELS)).init_slope(counts))
    emb = np.random.default_rng(2).normal(size=(5, SEM_DIM)).astype(np.float32)
    out = cold.tokenize(emb)
    # SEM codes: the tokenizer's encoding of the text embedding.
    with torch.no_grad():
        expect_sem = cold.tokenizer.encode_sem(torch.as_tensor(emb)).numpy()
    np.testing.assert_array_equal(out.sem_codes, expect_sem)
    assert out.sem_codes.dtype == np.int64 and out.sem_codes.shape == (5, LEVELS)
    # The split: the router at zero interactions, cold_alpha, so no CF token at L = 3.
    np.testing.assert_allclose(out.alpha, np.full(5, RouterConfig().cold_alpha), atol=1e-7)
    np.testing.assert_array_equal(out.n_cf, np.zeros(5))
    # CF codes: copied from the nearest warm item in the aligned space.
    want_neighbours = brute_force_nearest(
        cold.tokenizer, out.sem_codes, cold.cf_codes_table[1:], np.arange(1, 31)
    )
    np.testing.assert_array_equal(out.neighbours, want_neighbours)
    np.testing.assert_array_equal(out.cf_codes, cold.cf_codes_table[out.neighbours])
    # Prefixes: every token semantic, written as the catalogue writes items.
    np.testing.assert_array_equal(
        out.prefixes, code_sequences(out.cf_codes, out.sem_codes, out.n_cf, LEVELS, LAYOUT)
    )
    assert (LAYOUT.describe(out.prefixes)["codebook"] == SEM).all()
    # Vectors: the generator's item vectors of the served features, without an id.
    features = served_item_features(
        cold.router,
        LAYOUT,
        LEVELS,
        np.zeros(5, np.int64),
        out.cf_codes,
        out.sem_codes,
        out.alpha,
        emb,
        torch.device("cpu"),
    )
    with torch.no_grad():
        want = cold.generator.item_vectors(features).numpy()
    assert out.vectors.shape == (5, 16) and out.vectors.dtype == np.float32
    np.testing.assert_allclose(out.vectors, want, rtol=0, atol=1e-6)
    manual = manual_vectors(cold.generator, out.cf_codes, out.sem_codes, out.alpha, emb)
    np.testing.assert_allclose(out.vectors, manual.numpy(), rtol=0, atol=1e-5)


def test_tokenize_with_a_fixed_split_and_no_text():
    cold = make_cold_start(Router(RouterConfig(budget=LEVELS, fixed_alpha=0.5)), text_dim=0)
    emb = np.random.default_rng(3).normal(size=(4, SEM_DIM)).astype(np.float32)
    out = cold.tokenize(emb)
    np.testing.assert_array_equal(out.n_cf, np.full(4, 2))  # round(0.5 * 3) half up
    info = LAYOUT.describe(out.prefixes)
    assert info["codebook"].tolist() == [[CF, CF, SEM]] * 4  # CF dominates: written first
    np.testing.assert_array_equal(info["code"][:, :2], out.cf_codes[:, :2])
    np.testing.assert_array_equal(info["code"][:, 2], out.sem_codes[:, 0])
    manual = manual_vectors(cold.generator, out.cf_codes, out.sem_codes, out.alpha, None)
    np.testing.assert_allclose(out.vectors, manual.numpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="sem_embeddings"):
        cold.tokenize(emb[0])
    empty = cold.tokenize(emb[:0])
    assert empty.prefixes.shape == (0, LEVELS) and empty.vectors.shape == (0, 16)


def test_served_item_features_use_the_router_gate():
    rng = np.random.default_rng(4)
    cf, sem = rng.integers(0, K, size=(4, 4)), rng.integers(0, K, size=(4, 4))  # L_max = 4
    alpha = np.array([0.0, 0.25, 0.5, 1.0])
    router = Router(RouterConfig(budget=3))
    f = served_item_features(router, LAYOUT, 3, np.array([0, 5, 0, 7]), cf, sem, alpha, None, "cpu")
    assert f.ids.tolist() == [0, 5, 0, 7] and f.text is None
    assert f.cf_tokens.shape == f.sem_tokens.shape == (4, 3)  # the first L levels only
    levels = np.arange(3)[None]
    np.testing.assert_array_equal(f.cf_tokens.numpy(), LAYOUT.code_token(CF, levels, cf[:, :3]))
    np.testing.assert_array_equal(f.sem_tokens.numpy(), LAYOUT.code_token(SEM, levels, sem[:, :3]))
    # Router.code_weights: 2 * alpha on every CF level, 2 * (1 - alpha) on every SEM level.
    assert f.cf_weight.tolist() == [[0.0] * 3, [0.5] * 3, [1.0] * 3, [2.0] * 3]
    assert f.sem_weight.tolist() == [[2.0] * 3, [1.5] * 3, [1.0] * 3, [0.0] * 3]
    want_cf, want_sem = router.code_weights(torch.as_tensor(alpha, dtype=torch.float32))
    torch.testing.assert_close(f.cf_weight, want_cf)
    torch.testing.assert_close(f.sem_weight, want_sem)
    text = rng.normal(size=(4, 5))
    f = served_item_features(router, LAYOUT, 3, np.zeros(4), cf, sem, alpha, text, "cpu")
    assert f.text.dtype == torch.float32 and f.ids.dtype == torch.int64


def brute_force_ranking(codebooks: np.ndarray, start: np.ndarray, codes: np.ndarray):
    """Per item and level: own code first, then the others by distance to the residual of
    the greedy path, ties to the lower code (plain loops)."""
    out = np.zeros((len(codes), codebooks.shape[0], codebooks.shape[1]), dtype=np.int64)
    for m in range(len(codes)):
        residual = start[m].astype(np.float64)
        for level in range(codebooks.shape[0]):
            dist = ((residual - codebooks[level]) ** 2).sum(axis=1)
            others = sorted(
                (c for c in range(len(dist)) if c != codes[m, level]), key=dist.__getitem__
            )
            out[m, level] = [codes[m, level], *others]
            residual = residual - codebooks[level][codes[m, level]]
    return out


def test_ranked_codes_put_the_own_code_first_then_the_nearest():
    tok = random_tokenizer()
    emb = torch.as_tensor(np.random.default_rng(5).normal(size=(6, SEM_DIM)), dtype=torch.float32)
    codes = tok.encode_sem(emb).numpy()
    with torch.no_grad():
        latent = tok.sem.encoder(tok.standardise_sem(emb))
    books = tok.sem.quantizer.codebooks.detach()
    got = cold_start.ranked_codes(books, latent, codes)
    assert got.shape == (6, LEVELS, K) and got.dtype == np.int64
    np.testing.assert_array_equal(got[:, :, 0], codes)  # the greedy code is the nearest
    want = brute_force_ranking(books.numpy(), latent.numpy(), codes)
    np.testing.assert_array_equal(got, want)
    # Every level's ranking is a permutation of the codebook.
    assert (np.sort(got, axis=2) == np.arange(K)).all()


def test_ranked_codes_keep_an_own_code_that_is_not_the_nearest_first():
    """Borrowed CF codes need not be the nearest to their reconstruction's residual."""
    books = torch.tensor([[[0.0], [1.0], [2.0]]])  # one level, K = 3, d = 1
    got = cold_start.ranked_codes(books, torch.tensor([[0.9]]), np.array([[2]]))
    assert got.tolist() == [[[2, 1, 0]]]


def test_tokenize_gives_each_item_its_placement_order():
    counts = np.r_[0, np.arange(1, 31)]
    for router in (
        Router(RouterConfig(budget=LEVELS)).init_slope(counts),  # cold: SEM only
        Router(RouterConfig(budget=LEVELS, fixed_alpha=0.5)),  # CF, CF, SEM
    ):
        cold = make_cold_start(router)
        emb = np.random.default_rng(6).normal(size=(4, SEM_DIM)).astype(np.float32)
        out = cold.tokenize(emb)
        order = out.placement_order
        assert order.shape == (4, LEVELS, K)
        np.testing.assert_array_equal(order[:, :, 0], out.prefixes)  # step 0: own codes
        info = LAYOUT.describe(order)
        own = LAYOUT.describe(out.prefixes)
        # Every position ranks the codes of its own (codebook, level) block.
        np.testing.assert_array_equal(info["codebook"], own["codebook"][..., None].repeat(K, 2))
        np.testing.assert_array_equal(info["level"], own["level"][..., None].repeat(K, 2))
        assert (np.sort(info["code"], axis=2) == np.arange(K)).all()
        # The semantic positions follow the text latent's distances.
        with torch.no_grad():
            latent = cold.tokenizer.sem.encoder(
                cold.tokenizer.standardise_sem(torch.as_tensor(emb))
            )
        sem_rank = brute_force_ranking(
            cold.tokenizer.sem.quantizer.codebooks.detach().numpy(), latent.numpy(), out.sem_codes
        )
        is_sem = own["codebook"] == SEM
        for m, pos in zip(*np.nonzero(is_sem), strict=True):
            np.testing.assert_array_equal(info["code"][m, pos], sem_rank[m, own["level"][m, pos]])
    assert cold.tokenize(emb[:0]).placement_order.shape == (0, LEVELS, K)
