"""The ONNX generator against torch: user states, log-probs, and decoding results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.beam_search import constrained_beam_search
from models.decoding import Catalogue, DecodingConfig, exact_scores, recommend_top_k
from models.generator import Generator, GeneratorConfig
from models.onnx_generator import (
    ONNX_TOLERANCE,
    OnnxExportError,
    OnnxGenerator,
    check_onnx_against_torch,
    export_checked,
    export_generator_onnx,
    sample_history,
)
from models.prefix_index import build_prefix_index

BUDGET = 3
CONFIG = GeneratorConfig(
    vocab_size=60, budget=BUDGET, n_ids=81, code_levels=BUDGET, max_len=10, hidden=16, n_heads=2
)


def peaked(config: GeneratorConfig, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    gen = Generator(config).eval()
    for p in gen.parameters():  # peaked distributions, so rankings are not near-ties
        torch.nn.init.normal_(p, std=0.3)
    return gen


@pytest.fixture(scope="module")
def generator() -> Generator:
    return peaked(CONFIG)


@pytest.fixture(scope="module")
def onnx_files(generator):
    return export_generator_onnx(generator)


@pytest.fixture(scope="module")
def onnx_gen(onnx_files) -> OnnxGenerator:
    return OnnxGenerator.from_files(CONFIG, onnx_files)


def test_sample_history():
    history, valid = sample_history(CONFIG, batch=3, length=5, seed=1)
    assert history.shape == (3, 5, 16) and valid.shape == (3, 5) and valid.dtype == torch.bool
    assert valid.sum(1).tolist() == [5, 4, 3]
    assert not valid[:, -1].logical_not().any()  # left padding: the last position is real
    assert (history[~valid] == 0).all() and (history[valid] != 0).all()
    _, short = sample_history(CONFIG, batch=3, length=1)
    assert short.tolist() == [[True]] * 3  # every row keeps one valid position
    assert sample_history(CONFIG, length=50)[0].shape[1] == CONFIG.max_len


@pytest.mark.parametrize("batch", [1, 3])
def test_user_state_matches_torch(generator, onnx_gen, batch):
    for length in (1, 4, CONFIG.max_len):
        history, valid = sample_history(CONFIG, batch=batch, length=length, seed=length)
        got = onnx_gen.user_state(history, valid)
        assert got.shape == (batch, CONFIG.hidden) and got.dtype == torch.float32
        assert (got - generator.user_state(history, valid)).abs().max() <= ONNX_TOLERANCE
    # The valid mask is an input of the graph: it changes the state as in torch.
    history, valid = sample_history(CONFIG, batch=batch, length=6, seed=9)
    history = history + 0.1  # padding positions now hold vectors too
    fewer = valid.clone()
    fewer[:, :2] = False
    got = onnx_gen.user_state(history, fewer)
    want = generator.user_state(history, fewer)
    assert (got - want).abs().max() <= ONNX_TOLERANCE
    assert (want - generator.user_state(history, valid)).abs().max() > 1e-3


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("t", range(BUDGET + 1))
def test_next_token_log_probs_match_torch(generator, onnx_gen, batch, t):
    """t = 0 is the first decoding step: an empty prefix (beam search's tokens[:, :, 1:])."""
    g = torch.Generator().manual_seed(10 * t + batch)
    state = torch.randn(batch, CONFIG.hidden, generator=g)
    prefix = torch.randint(3, CONFIG.vocab_size, (batch, 4, t), generator=g)
    got = onnx_gen.next_token_log_probs(state, prefix)
    want = generator.next_token_log_probs(state, prefix)
    assert got.shape == (batch, 4, CONFIG.vocab_size)
    assert (got - want).abs().max() <= ONNX_TOLERANCE


@pytest.mark.parametrize("batch", [1, 3])
def test_token_log_probs_match_torch(generator, onnx_gen, batch):
    g = torch.Generator().manual_seed(batch)
    state = torch.randn(batch, CONFIG.hidden, generator=g)
    tokens = torch.randint(3, CONFIG.vocab_size, (batch, 5, BUDGET + 1), generator=g)
    got = onnx_gen.token_log_probs(state, tokens)
    want = generator.token_log_probs(state, tokens)
    assert got.shape == (batch, 5, BUDGET + 1, CONFIG.vocab_size)
    assert (got - want).abs().max() <= ONNX_TOLERANCE
    # Position t is the next-token step after the first t tokens.
    for t in range(BUDGET + 1):
        step = onnx_gen.next_token_log_probs(state, tokens[:, :, :t])
        assert (got[:, :, t] - step).abs().max() <= ONNX_TOLERANCE


@pytest.mark.parametrize("override", [{}, {"ffn": "gelu"}, {"history_profile": True}])
def test_check_and_export_checked(generator, onnx_files, override):
    diff = check_onnx_against_torch(generator, onnx_files)
    assert 0 <= diff <= ONNX_TOLERANCE
    gen = generator if not override else peaked(GeneratorConfig(**{**CONFIG.to_dict(), **override}))
    files, diff2 = export_checked(gen)
    assert set(files) == {"history_encoder", "token_decoder"} and diff2 <= ONNX_TOLERANCE
    assert all(isinstance(b, bytes) and len(b) > 1000 for b in files.values())


def test_export_refuses_a_mismatch(generator, onnx_files):
    other = Generator(CONFIG).eval()
    torch.nn.init.normal_(other.token_emb.weight, std=1.0)
    assert check_onnx_against_torch(other, onnx_files) > ONNX_TOLERANCE
    with pytest.raises(OnnxExportError, match="refused"):
        export_checked(generator, tolerance=-1.0)


def test_eval_and_config(onnx_gen):
    assert onnx_gen.eval() is onnx_gen and onnx_gen.config == CONFIG
    long = GeneratorConfig(**{**CONFIG.to_dict(), "max_len": CONFIG.max_len + 1})
    with pytest.raises(ValueError, match="max_len"):
        onnx_gen.user_state(*sample_history(long, length=CONFIG.max_len + 1))


def _random_catalogue(n_items: int, seed: int) -> Catalogue:
    """Unique (N, L + 1) rows over the generator's vocabulary, ids 1..N, random vectors."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(3, CONFIG.vocab_size, size=(n_items * 2, BUDGET + 1))
    rows = np.unique(rows, axis=0)[:n_items]
    rng.shuffle(rows)
    tokens = np.zeros((n_items + 1, BUDGET + 1), dtype=np.int64)
    tokens[1:] = rows
    vectors = rng.standard_normal((n_items + 1, CONFIG.hidden)).astype(np.float32)
    vectors[0] = 0.0
    index = build_prefix_index(rows, np.arange(1, n_items + 1), CONFIG.vocab_size)
    return Catalogue(torch.as_tensor(vectors), torch.as_tensor(tokens), index.to_tensors())


@pytest.mark.parametrize("batch", [1, 3])
def test_drops_into_decoding_with_the_same_top_k(generator, onnx_gen, batch):
    cat = _random_catalogue(80, seed=batch)
    g = torch.Generator().manual_seed(batch)
    history = torch.randint(1, 81, (batch, 6), generator=g)
    history[0, :2] = 0
    results = []
    for model in (generator, onnx_gen):
        state = model.user_state(cat.item_vectors[history], history != 0)

        def step(tokens, s, model=model, state=state):
            return model.next_token_log_probs(state, tokens[:, :, 1:]), s

        beam = constrained_beam_search(step, cat.index, batch_size=batch, beam_width=10, top_k=5)
        served = [
            recommend_top_k(model, history, cat, 5, DecodingConfig(10, w, 10), exclude=history)
            for w in (0.0, 0.5)
        ]
        exact = exact_scores(model, history, cat, 0.5)
        results.append((beam[:2], served, exact))
    (t_beam, t_served, t_exact), (o_beam, o_served, o_exact) = results
    assert (t_beam[0] >= 1).all()
    torch.testing.assert_close(o_beam[0], t_beam[0])
    torch.testing.assert_close(o_beam[1], t_beam[1], atol=1e-4, rtol=0)
    for (t_rows, t_scores), (o_rows, o_scores) in zip(t_served, o_served, strict=True):
        assert (t_rows >= 1).all()
        torch.testing.assert_close(o_rows, t_rows)
        torch.testing.assert_close(o_scores, t_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(o_exact, t_exact, atol=1e-4, rtol=0)
