"""What a bundle is: the format version, its file names, the manifest, and the one type
of its contents (`BundleContents`), shared by the writer, the reader and the assembler.

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
                             plus imputation_ids (W,); and the items' categories
                             (category_names (K,), category_ptr (N + 2,), category_ids:
                             CSR, `models.item_attributes.encode_categories`), optional:
                             a bundle written before them reads as "no categories"
    prefix_index.npz         the PrefixIndex arrays over items 1..N (never rebuilt at load)
    imputation.faiss         IndexFlatIP over the L2-normalised aligned CF projections of
                             warm items: a new item's CF codes are copied from its nearest
                             neighbour there
    history_encoder.onnx     the generator as two ONNX graphs (models.onnx_generator),
    token_decoder.onnx       checked against torch at export

Layout on disk: `root/<version>/`, and `root/LATEST`, a text file holding the version
directory name of the newest bundle (models.bundle.write).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from models.decoding import DecodingConfig
from models.dual_tokenizer import DualTokenizer
from models.generator import Generator
from models.router import Router
from models.tokens import TokenLayout

if TYPE_CHECKING:
    import faiss

FORMAT_VERSION = 2  # 2: dense + generative heads, item vectors, monotone router
MANIFEST = "manifest.json"
LATEST = "LATEST"
TOKENIZER_FILE = "tokenizer.safetensors"
ROUTER_FILE = "router.safetensors"
GENERATOR_FILE = "generator.safetensors"
ITEMS_FILE = "items.npz"
PREFIX_INDEX_FILE = "prefix_index.npz"
IMPUTATION_FILE = "imputation.faiss"
ONNX_GRAPHS = ("history_encoder", "token_decoder")
# Every file a bundle must list besides the manifest.
BUNDLE_FILES = (
    TOKENIZER_FILE,
    ROUTER_FILE,
    GENERATOR_FILE,
    ITEMS_FILE,
    PREFIX_INDEX_FILE,
    IMPUTATION_FILE,
    *(f"{graph}.onnx" for graph in ONNX_GRAPHS),
)

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
# Optional in items.npz (older bundles lack them and read as items without categories),
# so adding them needed no new FORMAT_VERSION.
CATEGORY_ARRAYS = ("category_names", "category_ptr", "category_ids")
PREFIX_ARRAYS = (
    "row_ptr",
    "child_token",
    "child_node",
    "max_branch",
    "root_mask",
    "level_ptr",
)
MANIFEST_KEYS = ("format_version", "version", "created_at", "dataset", "config", "files")


def onnx_file(graph: str) -> str:
    """The file name of one of ONNX_GRAPHS."""
    return f"{graph}.onnx"


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


# --- contents ----------------------------------------------------------------------------


@dataclass(kw_only=True)
class BundleContents:
    """Everything a bundle holds, in memory: what `write_bundle` writes and, with the
    manifest and the derived indexes, what `load_bundle` returns (`models.bundle.read.Bundle`).
    N items, internal ids 1..N (0 = padding); arrays are NumPy on the CPU.

    budget: L, the layout's n_levels.
    external_ids: (N + 1,) str, row 0 = "". Internal id i <-> external_ids[i].
    sem_codes, cf_codes: (N + 1, L_max) int64; cold items' CF codes already imputed.
    item_tokens: (N + 1, L + 1) int64 served tokens, row 0 = zeros.
    n_cf: (N + 1,) int64 Lcol per item; alpha: (N + 1,) float32 the router's CF share.
    popularity: (N + 1,) int64 training interaction counts (fallback ranking).
    item_vectors: (N + 1, C) float32 the served item vectors (`Generator.item_vectors`
    with the hard masks of each item's split); row 0 zeros.
    decoding: the DecodingConfig stage D chose on validation (dense weight w).
    imputation_index: IndexFlatIP over the (W, P) L2-normalised aligned CF projections of
    warm items (`models.cold_start.build_imputation_index`); row r <-> imputation_ids[r],
    (W,) int64 internal ids.
    text_model_id: the sentence encoder new items' text must be embedded with.
    dataset: {"name", "fingerprint", "n_items"}; metrics: figures measured at export.
    category_names (K,) str, category_ptr (N + 2,) int64, category_ids (nnz,) int64: each
    item's categories, CSR over rows 0..N (`models.item_attributes.encode_categories`);
    None = no categories (every item has none).
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
    imputation_index: faiss.Index
    imputation_ids: np.ndarray
    text_model_id: str
    dataset: dict
    metrics: dict = field(default_factory=dict)
    category_names: np.ndarray | None = None
    category_ptr: np.ndarray | None = None
    category_ids: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """N, the number of real items (rows 1..N)."""
        return int(np.asarray(self.external_ids).shape[0] - 1)


def item_shape_mismatch(contents: BundleContents, n_rows: int) -> str | None:
    """'<array> has shape <got>, expected <want>' for the first per-item array that does
    not have n_rows rows or disagrees with the budget, the generator's width or the
    imputation index; None when every shape fits. The writer and the reader both ask."""
    c = contents
    budget = int(c.budget)
    expect = {
        "external_ids": (n_rows,),
        "item_tokens": (n_rows, budget + 1),
        "n_cf": (n_rows,),
        "alpha": (n_rows,),
        "popularity": (n_rows,),
        "item_vectors": (n_rows, c.generator.config.hidden),
        "imputation_ids": (c.imputation_index.ntotal,),
    }
    for name, want in expect.items():
        got = np.asarray(getattr(c, name)).shape
        if got != want:
            return f"{name} has shape {got}, expected {want}"
    if c.category_ptr is not None:
        ptr = np.asarray(c.category_ptr)
        n_ids, n_names = len(np.asarray(c.category_ids)), len(np.asarray(c.category_names))
        if ptr.shape != (n_rows + 1,):
            return f"category_ptr has shape {ptr.shape}, expected ({n_rows + 1},)"
        ids = np.asarray(c.category_ids)
        if ptr[0] != 0 or ptr[-1] != n_ids or np.any(np.diff(ptr) < 0):
            return f"category_ptr does not run from 0 to len(category_ids) = {n_ids}"
        if n_ids and (ids.min() < 0 or ids.max() >= n_names):
            return f"category_ids must lie in [0, {n_names}) (category_names)"
    for name in ("sem_codes", "cf_codes"):  # L_max >= L levels: the budget uses a prefix
        got = np.asarray(getattr(c, name)).shape
        if len(got) != 2 or got[0] != n_rows or got[1] < budget:
            return f"{name} has shape {got}, expected ({n_rows}, >= {budget})"
    return None
