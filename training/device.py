"""Device choice and mixed precision, decided once per run and passed down."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

# The resolver is the service's too, so it lives in models/; training imports it from here.
from models.device import resolve_device

logger = logging.getLogger(__name__)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU, where
    bf16 matmuls are slower than fp32 on most hosts."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["autocast", "resolve_device", "seed_everything"]
