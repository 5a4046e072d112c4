"""The export bundle: the one contract between training and the service.

    format.py    what a bundle is: format version, file names, manifest, `BundleContents`
    assemble.py  modules + the served item table -> BundleContents (`assemble_contents`)
    write.py     BundleContents -> a new immutable bundle directory (`write_bundle`)
    read.py      a bundle directory -> verified `Bundle` (`verify_bundle`, `load_bundle`)

Everything here is I/O and validation: models come from models/, so the service can load
a bundle without importing training code.
"""

from models.bundle.assemble import assemble_contents
from models.bundle.format import (
    BUNDLE_FILES,
    FORMAT_VERSION,
    ITEM_ARRAYS,
    LATEST,
    MANIFEST,
    MANIFEST_KEYS,
    ONNX_GRAPHS,
    PREFIX_ARRAYS,
    BundleContents,
    BundleError,
    BundleExistsError,
    BundleManifest,
)
from models.bundle.read import Bundle, load_bundle, resolve_bundle_path, verify_bundle
from models.bundle.write import write_bundle

__all__ = [
    "BUNDLE_FILES",
    "FORMAT_VERSION",
    "ITEM_ARRAYS",
    "LATEST",
    "MANIFEST",
    "MANIFEST_KEYS",
    "ONNX_GRAPHS",
    "PREFIX_ARRAYS",
    "Bundle",
    "BundleContents",
    "BundleError",
    "BundleExistsError",
    "BundleManifest",
    "assemble_contents",
    "load_bundle",
    "resolve_bundle_path",
    "verify_bundle",
    "write_bundle",
]
