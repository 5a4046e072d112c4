"""Reading a bundle: find it (a bundle directory, or a root whose LATEST names one),
verify every file against the manifest's hashes, and load it as a `Bundle`.

A bundle is input from outside the process: everything read is checked, and every
problem is a BundleError naming the file and saying what to do. Models come from models/,
so the service loads a bundle without importing training code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from models.bundle.format import (
    BUNDLE_FILES,
    CATEGORY_ARRAYS,
    FORMAT_VERSION,
    GENERATOR_FILE,
    IMPUTATION_FILE,
    ITEM_ARRAYS,
    ITEMS_FILE,
    LATEST,
    MANIFEST,
    ONNX_GRAPHS,
    PREFIX_ARRAYS,
    PREFIX_INDEX_FILE,
    ROUTER_FILE,
    TOKENIZER_FILE,
    BundleContents,
    BundleError,
    BundleManifest,
    item_shape_mismatch,
    onnx_file,
)
from models.decoding import DecodingConfig
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig
from models.generator import Generator, GeneratorConfig
from models.prefix_index import PrefixIndex
from models.router import Router, RouterConfig
from models.tokens import TokenLayout

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Bundle(BundleContents):
    """A loaded bundle: its contents (modules in eval mode on the load device; text model,
    dataset and metrics as the manifest records them) and what loading adds."""

    manifest: BundleManifest
    path: Path
    prefix_index: PrefixIndex  # over items 1..N, built at export
    onnx_paths: dict[str, Path]  # {"history_encoder": ..., "token_decoder": ...}

    @property
    def version(self) -> str:
        return self.manifest.version


def resolve_bundle_path(path: Path) -> Path:
    """A bundle directory (holds manifest.json) as is, or a bundle root holding LATEST ->
    the directory LATEST names. BundleError otherwise."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    latest = path / LATEST
    if latest.is_file():
        version = latest.read_text().strip()
        if not version or "/" in version or version.startswith("."):
            raise BundleError(f"{latest}: holds {version!r}, not a bundle version name")
        target = path / version
        if not (target / MANIFEST).is_file():
            raise BundleError(
                f"{latest}: names {version}, but {target / MANIFEST} does not exist; "
                "re-export, or point LATEST at an existing version"
            )
        return target
    if not path.exists():
        raise BundleError(f"{path}: no such bundle directory; run `flexcode export` first")
    raise BundleError(
        f"{path}: neither a bundle (no {MANIFEST}) nor a bundle root (no {LATEST}); "
        "pass the directory `flexcode export` wrote"
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(bundle_dir: Path) -> BundleManifest:
    path = bundle_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: cannot read the manifest ({err}); re-export") from err
    manifest = BundleManifest.from_dict(data)
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: incompatible bundle format {manifest.format_version}, this build reads "
            f"{FORMAT_VERSION}; export the run again with this version of flexcode"
        )
    return manifest


def verify_bundle(path: Path) -> BundleManifest:
    """Check a bundle (or the one a root's LATEST names) against its manifest: format
    version, every listed file present with its sha256, no unlisted file. Returns the
    manifest; BundleError naming the file on any problem."""
    bundle_dir = resolve_bundle_path(path)
    manifest = _read_manifest(bundle_dir)
    for rel, digest in sorted(manifest.files.items()):
        file = bundle_dir / rel
        if not file.is_file():
            raise BundleError(
                f"{file}: listed in {MANIFEST} but missing; the bundle is incomplete, re-export it"
            )
        actual = _file_sha256(file)
        if actual != digest:
            raise BundleError(
                f"{file}: sha256 {actual[:12]}... does not match the manifest's "
                f"{digest[:12]}...; the file was modified or corrupted, re-export the bundle"
            )
    present = {
        p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if not p.is_dir()
    }
    extra = sorted(present - set(manifest.files) - {MANIFEST})
    if extra:
        raise BundleError(
            f"{bundle_dir / extra[0]}: not listed in {MANIFEST} (unlisted: {extra}); a "
            "bundle is immutable, remove the file or re-export"
        )
    missing = [f for f in BUNDLE_FILES if f not in manifest.files]
    if missing:
        raise BundleError(f"{bundle_dir / MANIFEST}: lists no {missing}; re-export the bundle")
    return manifest


def _load_npz(
    path: Path, names: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The named arrays (BundleError when one is missing) and those of `optional` the
    file has."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise BundleError(f"{path}: lacks arrays {missing}; re-export the bundle")
            return {n: data[n] for n in (*names, *optional) if n in data.files}
    except BundleError:
        raise
    except Exception as err:  # zip, pickle or format errors of a damaged file
        raise BundleError(f"{path}: cannot read ({err}); re-export the bundle") from err


def _load_module(module: torch.nn.Module, path: Path, device: torch.device) -> Any:
    try:
        state = load_file(path, device=str(device))
        module.load_state_dict(state)
    except Exception as err:
        raise BundleError(
            f"{path}: weights do not fit the manifest's config ({err}); re-export the bundle"
        ) from err
    return module.to(device).eval()


def _config(manifest: BundleManifest, bundle_dir: Path):
    cfg = manifest.config
    try:
        return (
            DualTokenizerConfig.from_dict(cfg["tokenizer"]),
            RouterConfig.from_dict(cfg["router"]),
            GeneratorConfig.from_dict(cfg["generator"]),
            TokenLayout.from_dict(cfg["layout"]),
            int(cfg["budget"]),
            DecodingConfig.from_dict(cfg["decoding"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(
            f"{bundle_dir / MANIFEST}: bad model config ({err!r}); re-export the bundle"
        ) from err


def _check_loaded(b: Bundle) -> None:
    """BundleError when the arrays disagree with the manifest or each other."""
    mismatch = item_shape_mismatch(b, b.manifest.dataset.get("n_items", b.n_items) + 1)
    if mismatch:
        raise BundleError(f"{b.path / ITEMS_FILE}: {mismatch}; re-export")
    if b.prefix_index.n_items != b.n_items or b.prefix_index.vocab_size != b.layout.vocab_size:
        raise BundleError(
            f"{b.path / PREFIX_INDEX_FILE}: indexes {b.prefix_index.n_items} items over "
            f"{b.prefix_index.vocab_size} tokens, expected {b.n_items} over "
            f"{b.layout.vocab_size}; re-export"
        )


def load_bundle(path: Path, device: torch.device | str = "cpu", verify: bool = True) -> Bundle:
    """Load a bundle (or the one a root's LATEST names) with its modules in eval mode on
    `device`. verify=True checks every file's sha256 first (`verify_bundle`). BundleError
    on any problem."""
    import faiss

    device = torch.device(device)
    bundle_dir = resolve_bundle_path(path)
    manifest = verify_bundle(bundle_dir) if verify else _read_manifest(bundle_dir)
    tok_cfg, router_cfg, gen_cfg, layout, budget, decoding = _config(manifest, bundle_dir)
    tokenizer = _load_module(DualTokenizer(tok_cfg), bundle_dir / TOKENIZER_FILE, device)
    router = _load_module(Router(router_cfg), bundle_dir / ROUTER_FILE, device)
    generator = _load_module(Generator(gen_cfg), bundle_dir / GENERATOR_FILE, device)
    items = _load_npz(bundle_dir / ITEMS_FILE, ITEM_ARRAYS, CATEGORY_ARRAYS)
    if any(n not in items for n in CATEGORY_ARRAYS):  # older bundle: no categories
        items = {k: v for k, v in items.items() if k not in CATEGORY_ARRAYS}
    raw = _load_npz(bundle_dir / PREFIX_INDEX_FILE, (*PREFIX_ARRAYS, "depth", "vocab_size"))
    prefix = PrefixIndex(
        depth=int(raw["depth"]),
        vocab_size=int(raw["vocab_size"]),
        **{name: raw[name] for name in PREFIX_ARRAYS},
    )
    faiss_path = bundle_dir / IMPUTATION_FILE
    try:
        imputation_index = faiss.read_index(str(faiss_path))
    except Exception as err:
        raise BundleError(f"{faiss_path}: cannot read the FAISS index ({err}); re-export") from err
    bundle = Bundle(
        manifest=manifest,
        path=bundle_dir,
        tokenizer=tokenizer,
        router=router,
        generator=generator,
        layout=layout,
        budget=budget,
        decoding=decoding,
        prefix_index=prefix,
        imputation_index=imputation_index,
        onnx_paths={g: bundle_dir / onnx_file(g) for g in ONNX_GRAPHS},
        text_model_id=str(manifest.config.get("text_model_id", "")),
        dataset=manifest.dataset,
        metrics=manifest.metrics,
        **items,
    )
    _check_loaded(bundle)
    logger.info("loaded bundle %s (%d items) from %s", manifest.version, bundle.n_items, bundle_dir)
    return bundle
