"""Input checks shared by the NumPy builders (token layout, prefix index)."""

from __future__ import annotations

import numpy as np


def int_array(x: object, name: str) -> np.ndarray:
    """`x` as an int64 array; ValueError for non-integer input (floats are not rounded)."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
