import numpy as np
import pandas as pd
import pytest

from models.text_encoder import TextEncoder, TextEncoderConfig
from training.stages.semantic_embeddings import item_texts, semantic_embeddings


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(TextEncoderConfig())


class CountingEncoder:
    """Wraps the real encoder and counts encode calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.model_id, self.dim = inner.model_id, inner.dim

    def encode(self, texts, progress=False):
        self.calls += 1
        return self.inner.encode(texts, progress=progress)


def items_table(titles):
    n = len(titles)
    return pd.DataFrame(
        {
            "item_id": ["", *(str(i) for i in range(1, n + 1))],
            "title": ["", *titles],
            "categories": ["", *(["Comedy"] * n)],
            "brand": [""] * (n + 1),
            "year": ["", *(["1995"] * n)],
            "description": [""] * (n + 1),
        }
    )


def test_item_texts_one_per_row():
    items = items_table(["Toy Story", "Fargo"]).drop(columns=["brand", "description"])
    assert item_texts(items) == [
        "",
        "Toy Story. Categories: Comedy. Year: 1995.",
        "Fargo. Categories: Comedy. Year: 1995.",
    ]


def test_embeddings_cached_and_keyed_by_text(encoder, tmp_path):
    items = items_table(["Toy Story", "Fargo", "Heat"])
    enc = CountingEncoder(encoder)

    emb = semantic_embeddings(items, enc, tmp_path, progress=False)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    assert not emb[0].any()  # padding
    np.testing.assert_allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=1e-5)
    files = sorted(tmp_path.glob("text-emb-*.npy"))
    assert len(files) == 1 and enc.calls == 1
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file

    again = semantic_embeddings(items, enc, tmp_path, progress=False)
    assert enc.calls == 1  # served from the cache
    np.testing.assert_array_equal(again, emb)

    changed = items.copy()
    changed.loc[2, "title"] = "Fargo (1996)"
    emb2 = semantic_embeddings(changed, enc, tmp_path, progress=False)
    assert enc.calls == 2  # new key -> recomputed
    assert len(list(tmp_path.glob("text-emb-*.npy"))) == 2
    np.testing.assert_allclose(emb2[[0, 1, 3]], emb[[0, 1, 3]], atol=1e-5)
    assert not np.allclose(emb2[2], emb[2])


def test_model_change_recomputes(encoder, tmp_path):
    items = items_table(["Toy Story"])
    enc = CountingEncoder(encoder)
    semantic_embeddings(items, enc, tmp_path, progress=False)
    enc.model_id = enc.model_id + ";other"
    semantic_embeddings(items, enc, tmp_path, progress=False)
    assert enc.calls == 2
    assert len(list(tmp_path.glob("text-emb-*.npy"))) == 2


def test_corrupt_cache_is_recomputed(encoder, tmp_path):
    items = items_table(["Toy Story"])
    enc = CountingEncoder(encoder)
    emb = semantic_embeddings(items, enc, tmp_path, progress=False)
    (path,) = tmp_path.glob("text-emb-*.npy")
    path.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(semantic_embeddings(items, enc, tmp_path, progress=False), emb)
    assert enc.calls == 2
    np.testing.assert_array_equal(np.load(path), emb)  # rewritten


def test_no_cache_dir_and_padding_only(encoder, tmp_path):
    enc = CountingEncoder(encoder)
    emb = semantic_embeddings(items_table(["Toy Story"]), enc, None, progress=False)
    assert emb.shape == (2, 384) and enc.calls == 1
    only_padding = semantic_embeddings(items_table([]), enc, tmp_path, progress=False)
    assert only_padding.shape == (1, 384) and not only_padding.any()
    assert enc.calls == 1
