"""The onnx backend against the torch backend (sentence-transformers) on real item texts:
equal to float rounding, so both share a model id (stage B cache keys, text_model_id)."""

import numpy as np
import pytest

from models.onnx_text_encoder import ONNX_TOLERANCE, OnnxTextExportError, onnx_encoder_from
from models.text_encoder import TextEncoder, TextEncoderConfig
from training.data import load_dataset
from training.data.synthetic import SyntheticConfig
from training.stages.semantic_embeddings import item_texts


@pytest.fixture(scope="module")
def torch_encoder():
    return TextEncoder(TextEncoderConfig(backend="torch"))


@pytest.fixture(scope="module")
def onnx_encoder():
    return TextEncoder(TextEncoderConfig(backend="onnx"))


@pytest.fixture(scope="module")
def real_texts():
    """300 ML-100K titles, 150 synthetic item descriptions (with brand and description,
    ~60 word pieces), long and empty texts."""
    ml = item_texts(load_dataset("ml-100k", cache_dir=None).items)[1:301]
    synthetic = SyntheticConfig(n_items=1000, n_interactions=20_000)
    syn = item_texts(load_dataset("synthetic", synthetic=synthetic, cache_dir=None).items)
    return [*ml, *syn[1:151], "", " ", "word " * 400, "Amélie (2001) — 北京"]


def test_onnx_equals_torch_on_real_texts(torch_encoder, onnx_encoder, real_texts):
    a = onnx_encoder.encode(real_texts)
    b = torch_encoder.encode(real_texts)
    assert a.shape == b.shape == (len(real_texts), 384) and a.dtype == np.float32
    assert np.abs(a - b).max() < ONNX_TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_backends_share_the_model_id_and_cache_key(torch_encoder, onnx_encoder):
    # Intentionally unchanged: the onnx vectors equal torch's to < 1e-5 (measured 2e-7),
    # so stage B caches written with torch stay valid and bundles keep their text_model_id.
    assert onnx_encoder.model_id == torch_encoder.model_id
    assert onnx_encoder.model_id == TextEncoder(TextEncoderConfig(), lazy=True).model_id


def test_onnx_order_batching_empty_text_and_empty_list(onnx_encoder, real_texts):
    texts = real_texts[:40]
    whole = onnx_encoder.encode(texts)
    one_by_one = np.concatenate([onnx_encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)  # padding does not leak
    np.testing.assert_allclose(onnx_encoder.encode(texts[::-1]), whole[::-1], atol=1e-5)
    empty = onnx_encoder.encode([""])
    assert empty.shape == (1, 384) and abs(np.linalg.norm(empty) - 1.0) < 1e-5
    assert onnx_encoder.encode([]).shape == (0, 384)


def test_onnx_tokens_match_sentence_transformers(torch_encoder, onnx_encoder, real_texts):
    """The graph sees the ids sentence-transformers would feed torch (truncation included)."""
    texts = real_texts[-6:]
    features = torch_encoder._model.preprocess(texts)
    for row, ids in enumerate(onnx_encoder._onnx.token_ids(texts)):
        n = int(features["attention_mask"][row].sum())
        assert ids == features["input_ids"][row, :n].tolist()
    assert max(len(ids) for ids in onnx_encoder._onnx.token_ids(texts)) == 128


def test_export_refuses_another_pooling(torch_encoder, monkeypatch):
    model = torch_encoder._model
    monkeypatch.setattr(model[1], "pooling_mode", "cls")
    with pytest.raises(OnnxTextExportError, match='backend="torch"'):
        onnx_encoder_from(model, max_seq_length=128)


def test_lazy_onnx_encoder_loads_nothing_until_encode():
    lazy = TextEncoder(TextEncoderConfig(backend="onnx"), lazy=True)
    assert not lazy.loaded
    assert lazy.encode([]).shape == (0, 384)  # an empty list needs no weights either
    assert not lazy.loaded
