"""The ONNX generator against torch: log-probs, user states, and decoding results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.beam_search import constrained_beam_search
from models.decoding import recommend_top_k
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
CONFIG = GeneratorConfig(vocab_size=60, budget=BUDGET, max_len=10, hidden=16, n_heads=2)


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    gen = Generator(CONFIG).eval()
    for p in gen.parameters():  # peaked distributions, so rankings are not near-ties
        torch.nn.init.normal_(p, std=0.3)
    return gen


@pytest.fixture(scope="module")
def onnx_files(generator):
    return export_generator_onnx(generator)


@pytest.fixture(scope="module")
def onnx_gen(onnx_files) -> OnnxGenerator:
    return OnnxGenerator.from_files(CONFIG, onnx_files)


@pytest.mark.parametrize("batch", [1, 3])
def test_user_state_matches_torch(generator, onnx_gen, batch):
    for length in (1, 4, CONFIG.max_len):
        history = sample_history(CONFIG, batch=batch, length=length, seed=length)
        got = onnx_gen.user_state(history)
        assert got.shape == (batch, CONFIG.hidden) and got.dtype == torch.float32
        assert (got - generator.user_state(history)).abs().max() <= ONNX_TOLERANCE


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


def test_check_and_export_checked(generator, onnx_files):
    diff = check_onnx_against_torch(generator, onnx_files)
    assert 0 <= diff <= ONNX_TOLERANCE
    files, diff2 = export_checked(generator)
    assert set(files) == {"history_encoder", "token_decoder"} and diff2 <= ONNX_TOLERANCE


def test_export_refuses_a_mismatch(generator, onnx_files):
    other = Generator(CONFIG).eval()
    torch.nn.init.normal_(other.token_emb.weight, std=1.0)
    assert check_onnx_against_torch(other, onnx_files) > ONNX_TOLERANCE
    with pytest.raises(OnnxExportError, match="refused"):
        export_checked(generator, tolerance=-1.0)


def test_eval_and_config(onnx_gen):
    assert onnx_gen.eval() is onnx_gen and onnx_gen.config == CONFIG
    with pytest.raises(ValueError, match="max_len"):
        long = GeneratorConfig(vocab_size=60, budget=BUDGET, max_len=CONFIG.max_len + 1)
        onnx_gen.user_state(sample_history(long, length=CONFIG.max_len + 1))


def _random_index(n_items: int, seed: int):
    """Unique (N, L + 1) rows over the generator's vocabulary, ids 1..N."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(3, CONFIG.vocab_size, size=(n_items * 2, BUDGET + 1))
    rows = np.unique(rows, axis=0)[:n_items]
    rng.shuffle(rows)
    return build_prefix_index(rows, np.arange(1, len(rows) + 1), CONFIG.vocab_size)


@pytest.mark.parametrize("batch", [1, 3])
def test_drops_into_beam_search_with_the_same_top_k(generator, onnx_gen, batch):
    index = _random_index(80, seed=batch).to_tensors()
    history = sample_history(CONFIG, batch=batch, length=6, seed=batch)
    results = []
    for model in (generator, onnx_gen):
        state = model.user_state(history)

        def step(tokens, s, model=model, state=state):
            return model.next_token_log_probs(state, tokens[:, :, 1:]), s

        items, scores, _ = constrained_beam_search(
            step, index, batch_size=batch, beam_width=10, top_k=5
        )
        results.append((items, scores))
        # The shared decoding entry point gives the same as the kernel called directly.
        items2, scores2 = recommend_top_k(model, history, index, beam_width=10, top_k=5)
        torch.testing.assert_close(items2, items)
        torch.testing.assert_close(scores2, scores)
    (torch_items, torch_scores), (onnx_items, onnx_scores) = results
    assert (torch_items >= 1).all()
    torch.testing.assert_close(onnx_items, torch_items)
    torch.testing.assert_close(onnx_scores, torch_scores, atol=1e-4, rtol=0)
