"""The export bundle: the one contract between training and the service.

A bundle is a directory, immutable once written, that holds everything serving needs and
nothing of training:

    manifest.json            format version, bundle version, configs, dataset, metrics and
                             the sha256 of every other file (`BundleManifest`)
    tokenizer.safetensors    DualTokenizer state dict: both RQ-VAEs (the semantic encoder
                             turns a new item's text into codes), the CCA heads, and the
                             input standardisation buffers
    router.safetensors       Router state dict (feature scaler included)
    generator.safetensors    Generator state dict
    items.npz                per internal id (row 0 = padding): external_ids (fixed-width
                             unicode), sem_codes, cf_codes (cold ones imputed), item_tokens
                             (the served L + 1 tokens), n_cf (Lcol), alpha, popularity,
                             item_vectors (the dense head's table, (N + 1, C) float32);
                             plus imputation_ids (W,)
    prefix_index.npz         the PrefixIndex arrays over items 1..N (never rebuilt at load)
    imputation.faiss         IndexFlatIP over the L2-normalised aligned CF projections of
                             warm items: a new item's CF codes are copied from its nearest
                             neighbour there
    history_encoder.onnx     the generator as two ONNX graphs (models.onnx_generator),
    token_decoder.onnx       checked against torch at export

Layout on disk: `write_bundle(root, ...)` writes `root/<version>/` and then points
`root/LATEST` (a text file holding the version directory name) at it. Both steps are
atomic renames, so a reader sees either the old bundle or the complete new one, never a
half-written directory. Everything here is I/O and validation only: models come from
models/, so the service can load a bundle without importing training code.
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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from models.cold_start import ColdStart, build_imputation_index
from models.decoding import DecodingConfig
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig
from models.generator import Generator, GeneratorConfig
from models.prefix_index import PrefixIndex, build_prefix_index
from models.router import Router, RouterConfig
from models.tokens import TokenLayout

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: dense + generative heads, item vectors, monotone router
MANIFEST = "manifest.json"
LATEST = "LATEST"
ONNX_GRAPHS = ("history_encoder", "token_decoder")

ITEM_ARRAYS = (
    "external_ids",
    "sem_codes",
    "cf_codes",
    "item_tokens",
    "n_cf",
    "alpha",
    "popularity",
    "item_vectors",
    "imputation_ids",
)
PREFIX_ARRAYS = (
    "row_ptr",
    "child_token",
    "child_node",
    "max_branch",
    "root_mask",
    "level_ptr",
)
MANIFEST_KEYS = ("format_version", "version", "created_at", "dataset", "config", "files")


class BundleError(RuntimeError):
    """A bundle that cannot be written, found, verified or loaded; the message names the
    file, says what is wrong and what to do about it."""


class BundleExistsError(BundleError):
    """write_bundle found the version it would write already there (never overwritten)."""


# --- manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleManifest:
    format_version: int
    version: str  # "<dataset>-<UTC time>-<short content hash>", also the directory name
    created_at: str  # ISO 8601 UTC
    dataset: dict  # {"name", "fingerprint", "n_items"}
    # {"tokenizer", "router", "generator", "layout": their to_dict(), "budget": L,
    #  "decoding": DecodingConfig fields (beam width, dense weight, dense candidates),
    #  "text_model_id": the sentence encoder new items' text must be embedded with}
    config: dict
    files: dict[str, str]  # relative path -> sha256 hex; every file except manifest.json
    metrics: dict = field(default_factory=dict)  # validation/test figures at export time

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "created_at": self.created_at,
            "dataset": dict(self.dataset),
            "config": dict(self.config),
            "files": dict(sorted(self.files.items())),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: dict) -> BundleManifest:
        """BundleError when a required key is missing or has the wrong type."""
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in MANIFEST_KEYS if k not in data]
        if missing:
            raise BundleError(
                f"{MANIFEST}: missing keys {missing}; the bundle is damaged or was not "
                "written by write_bundle: export it again"
            )
        for key in ("dataset", "config", "files"):
            if not isinstance(data[key], dict):
                raise BundleError(f"{MANIFEST}: '{key}' must be an object")
        for name in data["files"]:
            _check_file_name(name)
        return cls(
            format_version=int(data["format_version"]),
            version=str(data["version"]),
            created_at=str(data["created_at"]),
            dataset=dict(data["dataset"]),
            config=dict(data["config"]),
            files={str(k): str(v) for k, v in data["files"].items()},
            metrics=dict(data.get("metrics") or {}),
        )


def _check_file_name(name: object) -> None:
    """A bundle is input from outside the process: a manifest may only name files inside
    its own directory (a relative POSIX path, no '..', no drive or backslash)."""
    path = PurePosixPath(str(name))
    if (
        not isinstance(name, str)
        or not name
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or ":" in name
    ):
        raise BundleError(
            f"{MANIFEST}: file name {name!r} points outside the bundle directory; refusing it"
        )


# --- in-memory contents and the loaded bundle --------------------------------------------


@dataclass
class BundleContents:
    """What an export hands to `write_bundle`; N items, internal ids 1..N (0 = padding).

    external_ids: (N + 1,) str, row 0 = "". Internal id i <-> external_ids[i].
    sem_codes, cf_codes: (N + 1, L_max) int64; cold items' CF codes already imputed.
    item_tokens: (N + 1, L + 1) int64 served tokens, row 0 = zeros.
    n_cf: (N + 1,) int64 Lcol per item; alpha: (N + 1,) float32 the router's CF share.
    popularity: (N + 1,) int64 training interaction counts (fallback ranking).
    item_vectors: (N + 1, C) float32 the served item vectors (`Generator.item_vectors`
    with the hard masks of each item's split); row 0 zeros.
    decoding: the DecodingConfig stage D chose on validation (dense weight w).
    imputation_vectors: (W, P) float32 L2-normalised aligned CF projections of warm items;
    imputation_ids: (W,) int64 their internal ids.
    """

    tokenizer: DualTokenizer
    router: Router
    generator: Generator
    layout: TokenLayout
    budget: int
    external_ids: np.ndarray
    sem_codes: np.ndarray
    cf_codes: np.ndarray
    item_tokens: np.ndarray
    n_cf: np.ndarray
    alpha: np.ndarray
    popularity: np.ndarray
    item_vectors: np.ndarray
    decoding: DecodingConfig
    imputation_vectors: np.ndarray
    imputation_ids: np.ndarray
    text_model_id: str
    dataset: dict
    metrics: dict = field(default_factory=dict)


@dataclass
class Bundle:
    """A loaded bundle; modules in eval mode on the load device, arrays as in
    `BundleContents` (NumPy, CPU)."""

    manifest: BundleManifest
    path: Path
    tokenizer: DualTokenizer
    router: Router
    generator: Generator
    layout: TokenLayout
    budget: int
    external_ids: np.ndarray
    sem_codes: np.ndarray
    cf_codes: np.ndarray
    item_tokens: np.ndarray
    n_cf: np.ndarray
    alpha: np.ndarray
    popularity: np.ndarray
    item_vectors: np.ndarray
    decoding: DecodingConfig
    prefix_index: PrefixIndex  # over items 1..N, built at export
    imputation_index: faiss.Index  # IndexFlatIP; row r <-> imputation_ids[r]
    imputation_ids: np.ndarray
    onnx_paths: dict[str, Path]  # {"history_encoder": ..., "token_decoder": ...}

    @property
    def n_items(self) -> int:
        """N, the number of real items (rows 1..N)."""
        return int(self.external_ids.shape[0] - 1)

    @property
    def version(self) -> str:
        return self.manifest.version

    def cold_start(self) -> ColdStart:
        """The cold-start path (text embedding -> codes, split, vector) of this bundle."""
        return ColdStart(
            tokenizer=self.tokenizer,
            router=self.router,
            generator=self.generator,
            layout=self.layout,
            budget=self.budget,
            imputation_index=self.imputation_index,
            imputation_ids=self.imputation_ids,
            cf_codes_table=self.cf_codes,
        )


# --- helpers -----------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _check_contents(c: BundleContents) -> None:
    """ValueError when the arrays disagree with each other or with the modules."""
    n_rows = int(np.asarray(c.external_ids).shape[0])
    budget = int(c.budget)
    expect = {
        "external_ids": (n_rows,),
        "item_tokens": (n_rows, budget + 1),
        "n_cf": (n_rows,),
        "alpha": (n_rows,),
        "popularity": (n_rows,),
        "item_vectors": (n_rows, c.generator.config.hidden),
    }
    for name, shape in expect.items():
        got = np.asarray(getattr(c, name)).shape
        if got != shape:
            raise ValueError(f"BundleContents.{name} must have shape {shape}, got {got}")
    for name in ("sem_codes", "cf_codes"):
        got = np.asarray(getattr(c, name)).shape
        if len(got) != 2 or got[0] != n_rows or got[1] < budget:
            raise ValueError(f"BundleContents.{name} must be ({n_rows}, >= {budget}), got {got}")
    if n_rows < 2:
        raise ValueError("a bundle needs at least one item (external_ids has only row 0)")
    ids = np.asarray(c.external_ids, dtype=str)
    if ids[0] != "":
        raise ValueError(f"external_ids[0] must be '' (padding), got {ids[0]!r}")
    if (ids[1:] == "").any() or np.unique(ids[1:]).size != n_rows - 1:
        raise ValueError("external_ids[1:] must be unique and non-empty")
    vectors = np.asarray(c.imputation_vectors)
    imp_ids = np.asarray(c.imputation_ids)
    if vectors.ndim != 2 or imp_ids.shape != (vectors.shape[0],) or vectors.shape[0] < 1:
        raise ValueError(
            "imputation_vectors must be (W, P) with W >= 1 and imputation_ids (W,), got "
            f"{vectors.shape} and {imp_ids.shape}"
        )
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
    prefix_arrays = {name: getattr(prefix, name) for name in PREFIX_ARRAYS}
    prefix_arrays["depth"] = np.asarray(prefix.depth, dtype=np.int64)
    prefix_arrays["vocab_size"] = np.asarray(prefix.vocab_size, dtype=np.int64)
    index = build_imputation_index(np.asarray(c.imputation_vectors))
    files = {
        "tokenizer.safetensors": _state_bytes(c.tokenizer),
        "router.safetensors": _state_bytes(c.router),
        "generator.safetensors": _state_bytes(c.generator),
        "items.npz": _npz_bytes(items),
        "prefix_index.npz": _npz_bytes(prefix_arrays),
        "imputation.faiss": faiss.serialize_index(index).tobytes(),
    }
    for name in ONNX_GRAPHS:
        files[f"{name}.onnx"] = onnx_files[name]
    return files


# --- writing -----------------------------------------------------------------------------


def write_bundle(
    bundle_root: Path,
    contents: BundleContents,
    onnx_files: dict[str, bytes] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write `contents` as a new bundle under `bundle_root`; returns the bundle directory.

    onnx_files: {"history_encoder": bytes, "token_decoder": bytes}; None exports (and
    checks) them here with `models.onnx_generator`.
    now: the creation time (default: the current UTC time); it and a hash of the files'
    content name the version, "<dataset>-<YYYYMMDDTHHMMSSZ>-<8 hex>".

    The files go to bundle_root/.tmp-<version>, are fsynced, and the directory is renamed
    to bundle_root/<version>; then bundle_root/LATEST is replaced atomically. An existing
    version is never overwritten (BundleError). ValueError when the contents disagree
    with each other.
    """
    _check_contents(contents)
    if onnx_files is None:
        from models.onnx_generator import export_checked

        onnx_files, _ = export_checked(contents.generator)
    missing = [g for g in ONNX_GRAPHS if g not in onnx_files]
    if missing:
        raise ValueError(f"onnx_files lacks {missing}; expected keys {list(ONNX_GRAPHS)}")
    files = _serialise(contents, onnx_files)
    hashes = {name: _sha256(data) for name, data in files.items()}

    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now = now.astimezone(timezone.utc)
    content_hash = _sha256(json.dumps(hashes, sort_keys=True).encode())[:8]
    name = contents.dataset.get("name", "dataset")
    version = f"{_slug(name)}-{now.strftime('%Y%m%dT%H%M%SZ')}-{content_hash}"
    n_items = int(np.asarray(contents.external_ids).shape[0] - 1)
    dataset = {"name": name, "fingerprint": "", **_json_safe(contents.dataset), "n_items": n_items}
    manifest = BundleManifest(
        format_version=FORMAT_VERSION,
        version=version,
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
    logger.info("wrote bundle %s (%d items) to %s", version, n_items, final)
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


# --- reading -----------------------------------------------------------------------------


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
    missing = [f"{g}.onnx" for g in ONNX_GRAPHS if f"{g}.onnx" not in manifest.files]
    core = (
        "tokenizer.safetensors",
        "router.safetensors",
        "generator.safetensors",
        "items.npz",
        "prefix_index.npz",
        "imputation.faiss",
    )
    missing = [f for f in core if f not in manifest.files] + missing
    if missing:
        raise BundleError(f"{bundle_dir / MANIFEST}: lists no {missing}; re-export the bundle")
    return manifest


def _load_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise BundleError(f"{path}: lacks arrays {missing}; re-export the bundle")
            return {n: data[n] for n in names}
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
            DecodingConfig(**cfg["decoding"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(
            f"{bundle_dir / MANIFEST}: bad model config ({err!r}); re-export the bundle"
        ) from err


def _check_loaded(b: Bundle) -> None:
    """BundleError when the arrays disagree with the manifest or each other."""
    items = b.path / "items.npz"
    n_rows = b.manifest.dataset.get("n_items", b.n_items) + 1
    shapes = {
        "external_ids": (b.external_ids.shape, (n_rows,)),
        "item_tokens": (b.item_tokens.shape, (n_rows, b.budget + 1)),
        "n_cf": (b.n_cf.shape, (n_rows,)),
        "alpha": (b.alpha.shape, (n_rows,)),
        "popularity": (b.popularity.shape, (n_rows,)),
        "item_vectors": (b.item_vectors.shape, (n_rows, b.generator.config.hidden)),
        "sem_codes": (b.sem_codes.shape[:1], (n_rows,)),
        "cf_codes": (b.cf_codes.shape[:1], (n_rows,)),
        "imputation_ids": (b.imputation_ids.shape, (b.imputation_index.ntotal,)),
    }
    for name, (got, want) in shapes.items():
        if got != want:
            raise BundleError(f"{items}: {name} has shape {got}, expected {want}; re-export")
    if b.prefix_index.n_items != b.n_items or b.prefix_index.vocab_size != b.layout.vocab_size:
        raise BundleError(
            f"{b.path / 'prefix_index.npz'}: indexes {b.prefix_index.n_items} items over "
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
    tokenizer = _load_module(DualTokenizer(tok_cfg), bundle_dir / "tokenizer.safetensors", device)
    router = _load_module(Router(router_cfg), bundle_dir / "router.safetensors", device)
    generator = _load_module(Generator(gen_cfg), bundle_dir / "generator.safetensors", device)
    items = _load_npz(bundle_dir / "items.npz", ITEM_ARRAYS)
    raw = _load_npz(bundle_dir / "prefix_index.npz", (*PREFIX_ARRAYS, "depth", "vocab_size"))
    prefix = PrefixIndex(
        depth=int(raw["depth"]),
        vocab_size=int(raw["vocab_size"]),
        **{name: raw[name] for name in PREFIX_ARRAYS},
    )
    faiss_path = bundle_dir / "imputation.faiss"
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
        onnx_paths={g: bundle_dir / f"{g}.onnx" for g in ONNX_GRAPHS},
        **items,
    )
    _check_loaded(bundle)
    logger.info("loaded bundle %s (%d items) from %s", manifest.version, bundle.n_items, bundle_dir)
    return bundle
