"""The torch device a run or the service uses, from a setting such as "auto" or "cuda:1".

Shared by training (`--device`) and the service (`FLEXCODE_DEVICE`), so both read the
setting the same way and fail the same way when CUDA is asked for but absent.
"""

from __future__ import annotations

import torch


def resolve_device(requested: str = "auto", name: str = "device") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is taken as given.

    A CUDA device on a host without CUDA is a ValueError up front, rather than a failure
    at the first tensor moved there; `name` is the setting the message blames
    ("FLEXCODE_DEVICE=cuda but CUDA is not available here; ...").
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={requested} but CUDA is not available here; use auto or cpu")
    return device
