"""Stand-ins for the service's heavy dependencies in tests and benchmarks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from tests.bundle_factory import TEXT_DIM, TEXT_MODEL_ID


class FakeTextEncoder:
    """Deterministic unit vectors from a hash of the text, in the tiny bundle's text space
    (MiniLM's 384-d vectors would not fit its 24-d semantic RQ-VAE)."""

    def __init__(self, dim: int = TEXT_DIM, model_id: str = TEXT_MODEL_ID) -> None:
        self.dim = dim
        self.model_id = model_id

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(str(text).encode()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = vec / np.linalg.norm(vec)
        return out
