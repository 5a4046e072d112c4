"""Writing a bundle: `write_bundle(root, contents)` writes `root/<version>/` and then points
`root/LATEST` at it.

Both steps are atomic renames, so a reader sees either the old bundle or the complete new
one, never a half-written directory; a version is never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from models.bundle.format import (
    FORMAT_VERSION,
    GENERATOR_FILE,
    IMPUTATION_FILE,
    ITEMS_FILE,
    LATEST,
    MANIFEST,
    ONNX_GRAPHS,
    PREFIX_ARRAYS,
    PREFIX_INDEX_FILE,
    ROUTER_FILE,
    TOKENIZER_FILE,
    BundleContents,
    BundleExistsError,
    BundleManifest,
    item_shape_mismatch,
    onnx_file,
)
from models.prefix_index import build_prefix_index

logger = logging.getLogger(__name__)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _state_bytes(module: torch.nn.Module) -> bytes:
    weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    return save_safetensors(weights)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", str(name)).strip("-.") or "dataset"


def _json_safe(value: Any) -> Any:
    """Metrics as strict JSON: NaN/inf (e.g. NDCG of an empty group) become null, NumPy
    scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def check_contents(c: BundleContents) -> None:
    """ValueError when the arrays disagree with each other or with the modules."""
    n_rows = int(np.asarray(c.external_ids).shape[0])
    budget = int(c.budget)
    mismatch = item_shape_mismatch(c, n_rows)
    if mismatch:
        raise ValueError(f"BundleContents.{mismatch}")
    if n_rows < 2:
        raise ValueError("a bundle needs at least one item (external_ids has only row 0)")
    ids = np.asarray(c.external_ids, dtype=str)
    if ids[0] != "":
        raise ValueError(f"external_ids[0] must be '' (padding), got {ids[0]!r}")
    if (ids[1:] == "").any() or np.unique(ids[1:]).size != n_rows - 1:
        raise ValueError("external_ids[1:] must be unique and non-empty")
    imp_ids = np.asarray(c.imputation_ids)
    if imp_ids.size < 1:
        raise ValueError("the imputation index is empty: a bundle needs at least one warm item")
    if imp_ids.min() < 1 or imp_ids.max() >= n_rows:
        raise ValueError(f"imputation_ids must be internal item ids in [1, {n_rows})")
    gen = c.generator.config
    if gen.budget != budget or c.router.config.budget != budget:
        raise ValueError(
            f"budget {budget} disagrees with the generator ({gen.budget}) or router "
            f"({c.router.config.budget})"
        )
    if gen.vocab_size != c.layout.vocab_size:
        raise ValueError(
            f"generator vocab_size {gen.vocab_size} != layout.vocab_size {c.layout.vocab_size}"
        )
    try:
        json.dumps(_json_safe(c.metrics), allow_nan=False)
        json.dumps(_json_safe(c.dataset), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"dataset and metrics must be JSON-serialisable: {err}") from err


def _serialise(contents: BundleContents, onnx_files: dict[str, bytes]) -> dict[str, bytes]:
    """Every bundle file except the manifest, as bytes."""
    import faiss

    c = contents
    n_rows = int(np.asarray(c.external_ids).shape[0])
    tokens = np.asarray(c.item_tokens, dtype=np.int64)
    prefix = build_prefix_index(tokens[1:], np.arange(1, n_rows), c.layout.vocab_size)
    items = {
        "external_ids": np.asarray(c.external_ids, dtype=str),  # fixed-width <U, no pickle
        "sem_codes": np.asarray(c.sem_codes, dtype=np.int64),
        "cf_codes": np.asarray(c.cf_codes, dtype=np.int64),
        "item_tokens": tokens,
        "n_cf": np.asarray(c.n_cf, dtype=np.int64),
        "alpha": np.asarray(c.alpha, dtype=np.float32),
        "popularity": np.asarray(c.popularity, dtype=np.int64),
        "item_vectors": np.asarray(c.item_vectors, dtype=np.float32),
        "imputation_ids": np.asarray(c.imputation_ids, dtype=np.int64),
    }
    if c.category_ptr is not None:
        items["category_names"] = np.asarray(c.category_names, dtype=str)
        items["category_ptr"] = np.asarray(c.category_ptr, dtype=np.int64)
        items["category_ids"] = np.asarray(c.category_ids, dtype=np.int64)
    prefix_arrays = {name: getattr(prefix, name) for name in PREFIX_ARRAYS}
    prefix_arrays["depth"] = np.asarray(prefix.depth, dtype=np.int64)
    prefix_arrays["vocab_size"] = np.asarray(prefix.vocab_size, dtype=np.int64)
    files = {
        TOKENIZER_FILE: _state_bytes(c.tokenizer),
        ROUTER_FILE: _state_bytes(c.router),
        GENERATOR_FILE: _state_bytes(c.generator),
        ITEMS_FILE: _npz_bytes(items),
        PREFIX_INDEX_FILE: _npz_bytes(prefix_arrays),
        IMPUTATION_FILE: faiss.serialize_index(c.imputation_index).tobytes(),
    }
    for graph in ONNX_GRAPHS:
        files[onnx_file(graph)] = onnx_files[graph]
    return files


def _manifest(
    contents: BundleContents, hashes: dict[str, str], now: datetime | None
) -> BundleManifest:
    """The manifest of contents whose files have these hashes, created at `now`."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now = now.astimezone(timezone.utc)
    content_hash = _sha256(json.dumps(hashes, sort_keys=True).encode())[:8]
    name = contents.dataset.get("name", "dataset")
    dataset = {
        "name": name,
        "fingerprint": "",
        **_json_safe(contents.dataset),
        "n_items": contents.n_items,
    }
    return BundleManifest(
        format_version=FORMAT_VERSION,
        version=f"{_slug(name)}-{now.strftime('%Y%m%dT%H%M%SZ')}-{content_hash}",
        created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        dataset=dataset,
        config={
            "tokenizer": contents.tokenizer.config.to_dict(),
            "router": contents.router.config.to_dict(),
            "generator": contents.generator.config.to_dict(),
            "layout": contents.layout.to_dict(),
            "budget": int(contents.budget),
            "decoding": asdict(contents.decoding),
            "text_model_id": str(contents.text_model_id),
        },
        files=hashes,
        metrics=_json_safe(dict(contents.metrics)),
    )


def write_bundle(
    bundle_root: Path,
    contents: BundleContents,
    onnx_files: dict[str, bytes] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write `contents` as a new bundle under `bundle_root`; returns the bundle directory.

    onnx_files: {"history_encoder": bytes, "token_decoder": bytes}; None exports them
    here with `models.onnx_generator.export_checked` (OnnxExportError when they differ
    from torch by more than its tolerance) and records that difference in the manifest's
    metrics as "onnx_max_abs_diff".
    now: the creation time (default: the current UTC time); it and a hash of the files'
    content name the version, "<dataset>-<YYYYMMDDTHHMMSSZ>-<8 hex>".

    The files go to bundle_root/.tmp-<version>, are fsynced, and the directory is renamed
    to bundle_root/<version>; then bundle_root/LATEST is replaced atomically. An existing
    version is never overwritten (BundleExistsError). ValueError when the contents
    disagree with each other.
    """
    check_contents(contents)
    if onnx_files is None:
        from models.onnx_generator import export_checked

        onnx_files, diff = export_checked(contents.generator)
        contents = replace(contents, metrics={**contents.metrics, "onnx_max_abs_diff": diff})
    missing = [g for g in ONNX_GRAPHS if g not in onnx_files]
    if missing:
        raise ValueError(f"onnx_files lacks {missing}; expected keys {list(ONNX_GRAPHS)}")
    files = _serialise(contents, onnx_files)
    manifest = _manifest(contents, {name: _sha256(data) for name, data in files.items()}, now)
    version = manifest.version

    root = Path(bundle_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise BundleExistsError(
            f"{final}: version {version} already exists and a bundle is never overwritten; "
            "export again (a later time gives a new version) or remove it by hand"
        )
    tmp = root / f".tmp-{version}"
    if tmp.exists():  # left by a crashed export of the very same content and second
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for fname, data in files.items():
            _write_synced(tmp / fname, data)
        manifest_json = json.dumps(manifest.to_dict(), indent=2, allow_nan=False)
        _write_synced(tmp / MANIFEST, manifest_json.encode())
        _fsync_dir(tmp)
        try:
            # rename(2) onto an existing non-empty directory fails: no silent overwrite
            # even if another export created the same version since the check above.
            os.rename(tmp, final)
        except OSError as err:
            raise BundleExistsError(
                f"{final}: cannot move the new bundle into place ({err}); a bundle with "
                "this version may have been written concurrently"
            ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    _point_latest(root, version)
    logger.info("wrote bundle %s (%d items) to %s", version, contents.n_items, final)
    return final


def _point_latest(root: Path, version: str) -> None:
    """Atomically make root/LATEST name `version`."""
    fd, tmp_name = tempfile.mkstemp(prefix=".LATEST-", dir=root)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(f"{version}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, root / LATEST)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(root)
