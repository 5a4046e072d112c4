"""The export bundle: round trip, integrity checks, versions and LATEST."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleExistsError,
    BundleManifest,
    assemble_contents,
    load_bundle,
    resolve_bundle_path,
    verify_bundle,
    write_bundle,
)
from models.cold_start import ColdStart, aligned_cf_vectors, served_item_features
from models.decoding import DecodingConfig, recommend_top_k
from models.item_table import ItemTable
from models.onnx_generator import OnnxGenerator, export_checked, sample_history
from tests.bundle_factory import make_tiny_bundle, tiny_contents

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def contents():
    return tiny_contents(n_items=40, budget=3, seed=1)


@pytest.fixture(scope="module")
def onnx_files(contents):
    return export_checked(contents.generator)[0]


@pytest.fixture
def bundle_dir(tmp_path, contents, onnx_files) -> Path:
    return write_bundle(tmp_path / "bundles", contents, onnx_files, now=T0)


def test_round_trip_arrays_modules_and_outputs(bundle_dir, contents):
    b = load_bundle(bundle_dir)
    assert FORMAT_VERSION == 2
    assert b.n_items == 40 and b.budget == 3 and b.layout == contents.layout
    assert b.external_ids.dtype.kind == "U" and b.external_ids[0] == ""
    np.testing.assert_array_equal(b.external_ids, contents.external_ids)
    for name in ("sem_codes", "cf_codes", "item_tokens", "n_cf", "alpha", "popularity"):
        np.testing.assert_array_equal(getattr(b, name), getattr(contents, name), err_msg=name)
    assert b.item_vectors.shape == (41, b.generator.config.hidden)
    assert b.item_vectors.dtype == np.float32
    np.testing.assert_array_equal(b.item_vectors, contents.item_vectors)
    assert b.decoding == contents.decoding
    assert b.decoding == DecodingConfig(beam_width=20, dense_weight=0.5, dense_candidates=20)
    np.testing.assert_array_equal(b.imputation_ids, contents.imputation_ids)
    assert b.imputation_index.ntotal == len(contents.imputation_ids)

    # The prefix index holds exactly items 1..N with their served tokens.
    ids = b.prefix_index.lookup(contents.item_tokens[1:])
    np.testing.assert_array_equal(ids, np.arange(1, 41))
    assert b.prefix_index.n_items == 40

    # Modules: same weights, eval mode, same outputs.
    for name in ("tokenizer", "router", "generator"):
        loaded, original = getattr(b, name), getattr(contents, name)
        assert not loaded.training
        want = original.state_dict()
        assert loaded.state_dict().keys() == want.keys()
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)
    assert b.router.config == contents.router.config
    assert b.generator.config == contents.generator.config
    history, valid = sample_history(b.generator.config, batch=3, length=6)
    state = b.generator.user_state(history, valid)
    torch.testing.assert_close(state, contents.generator.eval().user_state(history, valid))
    prefix = torch.as_tensor(contents.item_tokens[[1, 2, 3]][:, None, :2])  # (3, 1, 2)
    torch.testing.assert_close(
        b.generator.next_token_log_probs(state, prefix),
        contents.generator.next_token_log_probs(state, prefix),
    )
    counts = torch.as_tensor(b.popularity)
    torch.testing.assert_close(b.router(counts), contents.router(counts), rtol=0, atol=0)
    with torch.no_grad():  # the stored alpha is the router's at the stored counts
        np.testing.assert_allclose(b.router(counts)[1:].numpy(), b.alpha[1:], atol=1e-7)

    m = b.manifest
    assert m.format_version == FORMAT_VERSION and m.version == bundle_dir.name
    assert m.version.startswith("tiny-20260102T030405Z-")
    assert m.created_at == "2026-01-02T03:04:05Z"
    assert m.dataset == {"name": "tiny", "fingerprint": "tiny-seed1", "n_items": 40}
    assert m.config["budget"] == 3 and m.config["text_model_id"] == contents.text_model_id
    assert m.config["decoding"] == {
        "beam_width": 20,
        "dense_weight": 0.5,
        "dense_candidates": 20,
        "new_item_share": None,
    }
    assert set(b.onnx_paths) == {"history_encoder", "token_decoder"}
    assert all(p.is_file() for p in b.onnx_paths.values())


def test_loaded_bundle_recommends_like_the_contents(bundle_dir, contents):
    """Served decoding from the loaded bundle (torch and its ONNX graphs) gives what the
    contents it was written from give."""
    b = load_bundle(bundle_dir)
    history = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])
    results = []
    onnx = OnnxGenerator.from_files(b.generator.config, b.onnx_paths)
    for model, vectors, tokens, index in (
        (contents.generator.eval(), contents.item_vectors, contents.item_tokens, b.prefix_index),
        (b.generator, b.item_vectors, b.item_tokens, b.prefix_index),
        (onnx, b.item_vectors, b.item_tokens, b.prefix_index),
    ):
        cat = ItemTable(vectors, tokens, index).catalogue()
        results.append(recommend_top_k(model, history, cat, 5, b.decoding, exclude=history))
    for rows, scores in results[1:]:
        torch.testing.assert_close(rows, results[0][0])
        torch.testing.assert_close(scores, results[0][1], atol=1e-4, rtol=0)
    assert (results[0][0] > 0).all()


def test_loaded_bundle_tokenizes_a_new_item(bundle_dir, contents):
    """Everything the cold-start path needs is in the bundle (models.cold_start)."""
    b = load_bundle(bundle_dir)
    cold = ColdStart.from_bundle(b)
    assert isinstance(cold, ColdStart) and cold.budget == b.budget and cold.layout == b.layout
    text = np.random.default_rng(0).standard_normal((2, b.tokenizer.config.sem.input_dim))
    codes = cold.tokenize(text)
    assert codes.prefixes.shape == (2, b.budget)
    assert np.isin(codes.neighbours, b.imputation_ids).all()
    np.testing.assert_array_equal(codes.cf_codes, b.cf_codes[codes.neighbours])
    np.testing.assert_array_equal(codes.n_cf, [0, 0])  # cold_alpha: all semantic at L = 3
    features = served_item_features(
        b.router,
        b.layout,
        b.budget,
        np.zeros(2),
        codes.cf_codes,
        codes.sem_codes,
        codes.alpha,
        text,
        "cpu",
    )
    with torch.no_grad():
        want = b.generator.item_vectors(features).numpy()
    assert codes.vectors.shape == (2, b.generator.config.hidden)
    np.testing.assert_allclose(codes.vectors, want, rtol=0, atol=1e-6)
    # The same as the cold-start path of the modules the bundle was written from.
    original = ColdStart.from_bundle(contents).tokenize(text)
    np.testing.assert_array_equal(original.prefixes, codes.prefixes)
    np.testing.assert_allclose(original.vectors, codes.vectors, rtol=0, atol=1e-6)


def test_manifest_lists_every_file_with_its_hash(bundle_dir):
    manifest = verify_bundle(bundle_dir)
    on_disk = {p.name for p in bundle_dir.iterdir()} - {"manifest.json"}
    assert set(manifest.files) == on_disk
    assert BundleManifest.from_dict(manifest.to_dict()) == manifest
    assert not list(bundle_dir.parent.glob(".tmp-*"))


@pytest.mark.parametrize(
    "name", ["items.npz", "generator.safetensors", "token_decoder.onnx", "imputation.faiss"]
)
def test_corrupted_byte_is_refused_naming_the_file(bundle_dir, name):
    path = bundle_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}.*sha256"):
        verify_bundle(bundle_dir)
    with pytest.raises(BundleError, match=name):
        load_bundle(bundle_dir)


def test_missing_file_is_refused(bundle_dir):
    (bundle_dir / "router.safetensors").unlink()
    with pytest.raises(BundleError, match=r"router\.safetensors.*missing"):
        verify_bundle(bundle_dir)


def test_extra_file_is_refused(bundle_dir):
    (bundle_dir / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"notes\.txt.*not listed"):
        verify_bundle(bundle_dir)


def test_wrong_format_version_is_refused(bundle_dir):
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    message = f"incompatible bundle format {FORMAT_VERSION + 1}, this build reads {FORMAT_VERSION}"
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle_dir)
    with pytest.raises(BundleError, match="incompatible"):
        load_bundle(bundle_dir, verify=False)


def test_bad_decoding_config_is_refused(bundle_dir):
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text())
    data["config"]["decoding"]["dense_weight"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: bad model config.*dense_weight"):
        load_bundle(bundle_dir)


def test_loaded_arrays_that_disagree_are_refused(bundle_dir):
    """items.npz rewritten with item vectors of the wrong width (and the manifest's hash
    updated, so only the shape check can catch it)."""
    path = bundle_dir / "items.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["item_vectors"] = arrays["item_vectors"][:, :-1]
    np.savez(path, **arrays)
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["items.npz"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    verify_bundle(bundle_dir)
    with pytest.raises(BundleError, match=r"items\.npz: item_vectors has shape"):
        load_bundle(bundle_dir)


def test_damaged_manifest_is_refused(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json"):
        verify_bundle(bundle_dir)


@pytest.mark.parametrize(
    "name", ["../outside.bin", "/etc/passwd", "sub/../../x", "C:\\x", "a\\..\\b", ""]
)
def test_manifest_naming_a_file_outside_the_bundle_is_refused(bundle_dir, name):
    """A bundle is input from outside the process: a file name in its manifest that
    escapes the bundle directory is refused before any file is opened."""
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text())
    data["files"][name] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="outside the bundle directory"):
        verify_bundle(bundle_dir)
    with pytest.raises(BundleError, match="outside the bundle directory"):
        load_bundle(bundle_dir, verify=False)


def test_latest_resolution(tmp_path, bundle_dir):
    root = bundle_dir.parent
    assert (root / "LATEST").read_text().strip() == bundle_dir.name
    assert resolve_bundle_path(root) == bundle_dir
    assert resolve_bundle_path(bundle_dir) == bundle_dir
    assert load_bundle(root).path == bundle_dir
    with pytest.raises(BundleError, match="no such bundle directory"):
        resolve_bundle_path(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="neither a bundle"):
        resolve_bundle_path(tmp_path / "empty")
    (root / "LATEST").write_text("gone-version\n")
    with pytest.raises(BundleError, match="gone-version"):
        resolve_bundle_path(root)


def test_second_write_never_overwrites(bundle_dir, contents, onnx_files):
    root = bundle_dir.parent
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    with pytest.raises(BundleExistsError, match="never overwritten"):
        write_bundle(root, contents, onnx_files, now=T0)
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before
    assert not list(root.glob(".tmp-*"))
    verify_bundle(bundle_dir)


def test_new_export_gets_a_new_version_and_moves_latest(bundle_dir, contents, onnx_files):
    root = bundle_dir.parent
    later = write_bundle(root, contents, onnx_files, now=T0 + timedelta(seconds=1))
    assert later != bundle_dir and later.name.endswith(bundle_dir.name[-8:])  # same content
    other = tiny_contents(n_items=40, budget=3, seed=2)
    third = write_bundle(root, other, export_checked(other.generator)[0], now=T0)
    assert third.name[-8:] != bundle_dir.name[-8:]  # different content, different hash
    assert resolve_bundle_path(root) == third
    for path in (bundle_dir, later, third):
        verify_bundle(path)  # older versions stay intact


def test_inconsistent_contents_are_refused(tmp_path, contents, onnx_files):
    from dataclasses import replace

    bad = replace(contents, n_cf=contents.n_cf[:-1])
    with pytest.raises(ValueError, match="n_cf"):
        write_bundle(tmp_path, bad, onnx_files)
    bad = replace(contents, item_vectors=contents.item_vectors[:, :-1])
    with pytest.raises(ValueError, match="item_vectors"):
        write_bundle(tmp_path, bad, onnx_files)
    with pytest.raises(ValueError, match="history_encoder"):
        write_bundle(tmp_path, contents, {"token_decoder": b""})
    assert not any(tmp_path.iterdir())


def assembler_inputs(contents) -> dict:
    """What `assemble_contents` took to make these contents (warm = popularity > 0)."""
    names = ("tokenizer", "router", "generator", "layout", "decoding", "external_ids")
    names += ("sem_codes", "cf_codes", "item_tokens", "n_cf", "alpha", "popularity")
    names += ("item_vectors", "text_model_id", "dataset", "metrics")
    return {name: getattr(contents, name) for name in names} | {"warm": contents.popularity > 0}


def test_assembler_indexes_the_warm_items(contents):
    """The imputation index holds the warm items' aligned CF projections, row r for
    imputation_ids[r]; the budget is the layout's."""
    np.testing.assert_array_equal(contents.imputation_ids, np.flatnonzero(contents.popularity))
    want = aligned_cf_vectors(contents.tokenizer, contents.cf_codes[contents.imputation_ids])
    index = contents.imputation_index
    np.testing.assert_allclose(index.reconstruct_n(0, index.ntotal), want, rtol=0, atol=1e-6)
    assert contents.budget == contents.layout.n_levels == 3


def test_assembler_refuses_what_cannot_be_written(contents):
    inputs = assembler_inputs(contents)
    with pytest.raises(ValueError, match="no warm item"):
        assemble_contents(**(inputs | {"warm": np.zeros_like(inputs["warm"])}))
    with pytest.raises(ValueError, match="n_cf has shape"):
        assemble_contents(**(inputs | {"n_cf": contents.n_cf[:-1]}))


def test_write_exports_and_records_the_onnx_check(tmp_path, contents):
    """Without ONNX files, write_bundle exports them, checks them against torch and
    records the difference; the caller's contents stay as they were."""
    manifest = verify_bundle(write_bundle(tmp_path, contents, now=T0))
    assert 0 <= manifest.metrics["onnx_max_abs_diff"] <= 1e-4
    assert "onnx_max_abs_diff" not in contents.metrics


def test_make_tiny_bundle(tmp_path):
    first = make_tiny_bundle(tmp_path, n_items=20, budget=2, seed=3)
    second = make_tiny_bundle(tmp_path, n_items=20, budget=2, seed=3)  # same content
    assert first != second
    b = load_bundle(tmp_path)
    assert b.path == second and b.n_items == 20 and b.budget == 2
    assert list(b.external_ids[1:4]) == ["item-1", "item-2", "item-3"]
    assert (b.popularity[1:] == 0).any() and (b.popularity[1:] > 0).any()
